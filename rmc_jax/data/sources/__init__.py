"""Real-dataset sources, one module per official on-disk format, found by name.

Every source is a random-access sequence of ``Example`` (``len(src)``, ``src[i]``) built from a
local copy of the dataset; it parses the official files by column name, converts boxes to
normalised xyxy once, and fails at construction with the path and expected layout when
something required is missing. Bad data (``base``): ``SourceError`` for a copy that cannot be
read, ``ExampleError`` for one example that cannot, ``EmptySplitError`` for a split without
examples, ``SourceWarning`` for every repair made while reading (counted, with file:line).

``tfds:NAME`` names a copy prepared by ``tools/prepare_data.py`` (``tfds_format``): the TFDS
dataset NAME, with the TFDS ``data_dir`` as its root.
"""

from __future__ import annotations

import ast
import functools
import importlib
import inspect
import warnings
from typing import Callable

from rmc_jax.data.sources.base import (  # noqa: F401  (re-exported)
    EmptySplitError, ExampleError, Source, SourceError, SourceWarning)

# name -> "module:factory"; modules are imported only when their source is asked for.
_REGISTRY: dict[str, str] = {
    "synthetic": "rmc_jax.data.synthetic:SyntheticSource",
    "mimic_cxr": "rmc_jax.data.sources.mimic_cxr:MimicCXR",
    "chexpert": "rmc_jax.data.sources.chexpert:CheXpert",
    "chexpert_5x200": "rmc_jax.data.sources.chexpert:CheXpert5x200",
    "ms_cxr": "rmc_jax.data.sources.ms_cxr:MSCXR",
    "rsna_pneumonia": "rmc_jax.data.sources.rsna:RSNAPneumonia",
    "vindr_cxr": "rmc_jax.data.sources.vindr:VinDrCXR",
    "chest_imagenome": "rmc_jax.data.sources.imagenome:ChestImaGenome",
    "iu_xray": "rmc_jax.data.sources.iu_xray:IUXray",
    "nih_cxr14": "rmc_jax.data.sources.nih:NIHChestXray14",
}
TFDS_PREFIX = "tfds:"


def register(name: str, target: str) -> None:
    """Make ``get_source(name, ...)`` build ``target`` ('rmc_jax.data.sources.x:Factory')."""
    _REGISTRY[name] = target


def available() -> tuple[str, ...]:
    """The registered names (a prepared copy is named ``tfds:NAME`` besides these)."""
    return tuple(sorted(_REGISTRY))


def _known(name: str) -> bool:
    return name in _REGISTRY or (name.startswith(TFDS_PREFIX) and len(name) > len(TFDS_PREFIX))


def _unknown(name: str) -> ValueError:
    return ValueError(f"unknown dataset {name!r}; available: {', '.join(available())}, or "
                      f"'{TFDS_PREFIX}NAME' for a copy prepared by tools/prepare_data.py")


def _factory(name: str) -> Callable[..., Source]:
    """The constructor of source ``name``, taking ``root``, ``split`` and its options."""
    if not _known(name):
        raise _unknown(name)
    if name.startswith(TFDS_PREFIX):
        from rmc_jax.data.sources.tfds_format import TfdsSource

        return functools.partial(TfdsSource, name[len(TFDS_PREFIX):])
    module, factory = _REGISTRY[name].split(":")
    return getattr(importlib.import_module(module), factory)


def get_source(name: str, root: str, split: str = "train", **options) -> Source:
    """Build the source called ``name`` reading the dataset copy under ``root``."""
    return _factory(name)(root=root, split=split, **options)


class Prefix:
    """The first ``size`` examples of a source; every other attribute (name, label_names, ...)
    is the source's own."""

    def __init__(self, source, size: int):
        self.source, self.size = source, min(size, len(source))

    def __len__(self):
        return self.size

    def _position(self, index: int) -> int:
        if not -self.size <= index < self.size:
            raise IndexError(f"index {index} out of range for {self.size} examples")
        return index % self.size

    def __getitem__(self, index):
        return self.source[self._position(index)]

    def texts(self, index):
        return self.source.texts(self._position(index))

    def __getattr__(self, name):
        if name == "source":  # not set yet (unpickling in an input worker): no recursion
            raise AttributeError(name)
        return getattr(self.source, name)


def parse_options(spec: str) -> dict[str, dict]:
    """``"images_root=/x,ms_cxr.reports_root=/y,uncertain=ones"`` -> ``{"": {images_root: "/x",
    uncertain: "ones"}, "ms_cxr": {reports_root: "/y"}}``: options for every dataset (key
    without a prefix) or for one (``name.key``). Values that read as Python literals (numbers,
    True/False) become them; anything else stays a string."""
    options: dict[str, dict] = {}
    for item in filter(None, (part.strip() for part in (spec or "").split(","))):
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"bad data.source_options entry {item!r}: expected KEY=VALUE or "
                             "DATASET.KEY=VALUE, e.g. 'images_root=/data/mimic-cxr-jpg'")
        target, _, key = key.strip().rpartition(".")
        try:
            value = ast.literal_eval(value.strip())
        except (ValueError, SyntaxError):
            value = value.strip()
        options.setdefault(target, {})[key] = value
    return options


def _accepted(name: str, options: dict) -> dict:
    """The options the constructor of source ``name`` takes (unprefixed options are offered to
    every dataset of a mixture; each takes those it knows)."""
    parameters = inspect.signature(_factory(name)).parameters
    return {k: v for k, v in options.items() if k in parameters}


def open_source(name: str, root: str, split: str, size: int = 0, seed: int = 0,
                image_size: int = 128, options: str = "", *, strict: bool = True):
    """A split of dataset ``name`` limited to ``size`` examples (0 = all). The synthetic source
    renders exactly ``size`` examples from ``seed`` at ``image_size`` (at least 128 px).

    ``name`` may be a weighted mixture, ``"ms_cxr:1,mimic_cxr:3"``, with ``root`` either one
    path for all or ``"ms_cxr=/path,mimic_cxr=/path"``; ``size`` then limits each dataset.
    A split without examples is an EmptySplitError naming the splits the copy holds.
    ``options`` are constructor arguments (``parse_options``), e.g. MS-CXR's ``images_root``;
    an option meant for every dataset that this one does not take is an error when ``strict``
    (a typo would otherwise pass unnoticed), and skipped otherwise.
    """
    if "," in name or ":" in name.removeprefix(TFDS_PREFIX):
        from rmc_jax.data.sources.mixture import Mixture, parse_mixture, roots_for

        entries = parse_mixture(name)
        roots = roots_for([n for n, _ in entries], root)
        shared = parse_options(options).get("", {})
        unused = [k for k in shared if not any(_accepted(n, {k: 0}) for n, _ in entries
                                               if _known(n))]
        if unused:
            raise ValueError(f"data.source_options {unused}: no dataset in {name!r} takes them")
        parts = [open_source(n, roots[n], split, size, seed, image_size, options,
                             strict=False) for n, _ in entries]
        return parts[0] if len(parts) == 1 else Mixture(parts, [w for _, w in entries])
    if not _known(name):
        raise _unknown(name)
    parsed = parse_options(options)
    unknown = sorted(k for k in set(parsed) - {""} if not _known(k))
    if unknown:
        raise ValueError(f"data.source_options names unknown datasets {unknown}; available: "
                         f"{', '.join(available())}")
    given = {**parsed.get("", {}), **parsed.get(name, {})}
    chosen = _accepted(name, given)
    must_apply = set(parsed.get(name, {})) | (set(parsed.get("", {})) if strict
                                               else set())
    if must_apply - set(chosen):
        raise ValueError(f"data.source_options: {name} takes no option "
                         f"{sorted(must_apply - set(chosen))}")
    if name == "synthetic":
        source = get_source(name, root=None, split=split, seed=seed, size=size or None,
                            image_size=max(image_size, 128), **chosen)
    else:
        source = get_source(name, root=root or None, split=split, **chosen)
    prepared_at = int(getattr(source, "image_size", 0) or 0) if name.startswith(
        TFDS_PREFIX) else 0
    if prepared_at and prepared_at < image_size:
        warnings.warn(SourceWarning(
            f"{name}: the copy in {root} was prepared at {prepared_at} px (tools/prepare_data.py "
            f"--image_size) and is read for {image_size} px: every image is enlarged, with "
            f"less detail than the source has; prepare a copy at {image_size} px"), stacklevel=2)
    if len(source) == 0:
        raise EmptySplitError(f"{name}: split {split!r} of {root or 'the generator'} has no "
                              f"examples; {_splits_held(source)}")
    return Prefix(source, size) if size and len(source) > size else source


def _splits_held(source) -> str:
    """What the copy holds instead, for the empty-split message."""
    try:
        sizes = source.split_sizes()
    except (SourceError, OSError):
        sizes = None
    if not sizes:
        return "check the split name and the source's filters (views, options)"
    return "the copy holds " + ", ".join(f"{name!r}: {count}" for name, count in
                                          sorted(sizes.items()))

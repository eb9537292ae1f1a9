"""Real-dataset sources, one module per official on-disk format, found by name.

Every source is a random-access sequence of ``Example`` (``len(src)``, ``src[i]``) built from a
local copy of the dataset; it parses the official files by column name, converts boxes to
normalised xyxy once, and fails at construction with the path and expected layout when
something required is missing.
"""

from __future__ import annotations

import importlib
from typing import Callable

from rmc_jax.data.sources.base import Source, SourceError

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
    "array_record": "rmc_jax.data.sources.array_record:ArrayRecordSource",
}


def register(name: str, target: str) -> None:
    """Make ``get_source(name, ...)`` build ``target`` ('rmc_jax.data.sources.x:Factory')."""
    _REGISTRY[name] = target


def available() -> tuple[str, ...]:
    return tuple(sorted(_REGISTRY))


def get_source(name: str, root: str, split: str = "train", **options) -> Source:
    """Build the source called ``name`` reading the dataset copy under ``root``."""
    if name not in _REGISTRY:
        raise ValueError(f"unknown dataset {name!r}; available: {', '.join(available())}")
    module, factory = _REGISTRY[name].split(":")
    builder: Callable[..., Source] = getattr(importlib.import_module(module), factory)
    return builder(root=root, split=split, **options)


class Prefix:
    """The first ``size`` examples of a source; every other attribute (name, label_names, ...)
    is the source's own."""

    def __init__(self, source, size: int):
        self.source, self.size = source, min(size, len(source))

    def __len__(self):
        return self.size

    def __getitem__(self, index):
        if not -self.size <= index < self.size:
            raise IndexError(f"index {index} out of range for {self.size} examples")
        return self.source[index % self.size]

    def __getattr__(self, name):
        return getattr(self.source, name)


def open_source(name: str, root: str, split: str, size: int = 0, seed: int = 0,
                image_size: int = 128):
    """A split of dataset ``name`` limited to ``size`` examples (0 = all). The synthetic source
    renders exactly ``size`` examples from ``seed`` at ``image_size`` (at least 128 px).

    ``name`` may be a weighted mixture, ``"ms_cxr:1,mimic_cxr:3"``, with ``root`` either one
    path for all or ``"ms_cxr=/path,mimic_cxr=/path"``; ``size`` then limits each dataset.
    """
    if "," in name or ":" in name:
        from rmc_jax.data.sources.mixture import Mixture, parse_mixture, roots_for

        entries = parse_mixture(name)
        roots = roots_for([n for n, _ in entries], root)
        if len(entries) == 1:
            return open_source(entries[0][0], roots[entries[0][0]], split, size, seed,
                               image_size)
        return Mixture([open_source(n, roots[n], split, size, seed, image_size)
                        for n, _ in entries], [w for _, w in entries])
    if name == "synthetic":
        return get_source(name, root=None, split=split, seed=seed, size=size or None,
                          image_size=max(image_size, 128))
    source = get_source(name, root=root or None, split=split)
    return Prefix(source, size) if size and len(source) > size else source

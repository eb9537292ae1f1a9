"""Several sources as one, drawn in proportion to weights, with one shared label space.

``config.data.train = "ms_cxr:1,mimic_cxr:3"`` trains on MS-CXR and MIMIC-CXR examples in a
1:3 ratio. One epoch of the mixture is the shortest length in which every example of every
source appears at least once at the requested proportions: ``L = max_k(len_k / w_k)`` with the
weights normalised, source ``k`` filling ``round(w_k · L)`` positions by cycling through its
examples. The mixture is a plain random-access source, so the pipeline shuffles, repeats,
slices per process and checkpoints it like any other.

Labels: the mixture's ``label_names`` is the union of the sources' names (first source's order,
then new names in order of appearance); a class a source does not annotate is masked out
(``label_mask`` False) in its examples rather than read as absent.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Sequence

import numpy as np

from rmc_jax.data.schema import Example
from rmc_jax.data.sources import TFDS_PREFIX


def parse_mixture(spec: str) -> list[tuple[str, float]]:
    """``"a:1,b:3"`` -> ``[("a", 1.0), ("b", 3.0)]``; a missing weight is 1. A prepared copy
    keeps its prefix: ``"tfds:a:1"`` -> ``("tfds:a", 1.0)``."""
    parts = []
    for item in spec.split(","):
        item = item.strip()
        prefix = TFDS_PREFIX if item.startswith(TFDS_PREFIX) else ""
        name, _, weight = item[len(prefix):].partition(":")
        name = prefix + name if name else ""
        try:
            value = float(weight) if weight else 1.0
        except ValueError:
            value = float("nan")
        if not name or not value > 0 or not math.isfinite(value):
            raise ValueError(f"bad data mixture entry {item!r} in {spec!r}: expected "
                             "'name' or 'name:weight' with a positive weight, e.g. "
                             "'ms_cxr:1,mimic_cxr:3'")
        parts.append((name, value))
    names = [n for n, _ in parts]
    if len(set(names)) != len(names):
        raise ValueError(f"data mixture {spec!r} names a dataset twice")
    return parts


def roots_for(names: Sequence[str], root: str) -> dict[str, str]:
    """Each dataset's root: ``root`` is one path shared by all, or ``"a=/path,b=/path"``."""
    if "=" not in (root or ""):
        return {name: root for name in names}
    roots = {}
    for item in root.split(","):
        name, _, path = item.partition("=")
        roots[name.strip()] = path.strip()
    missing = [n for n in names if n not in roots and n != "synthetic"]
    if missing:
        raise ValueError(f"data.root {root!r} gives no path for {', '.join(missing)}; expected "
                         "'name=/path' for every dataset in the mixture")
    return {name: roots.get(name, "") for name in names}


class Mixture:
    """Weighted mixture of random-access sources (see the module docstring)."""

    name = "mixture"

    def __init__(self, sources: Sequence, weights: Sequence[float]):
        if not sources or len(sources) != len(weights):
            raise ValueError("a mixture needs one weight per source")
        empty = [getattr(s, "name", str(i)) for i, s in enumerate(sources) if len(s) == 0]
        if empty:
            raise ValueError(f"cannot mix empty sources: {', '.join(empty)}")
        self.sources = list(sources)
        total = float(sum(weights))
        self.weights = [w / total for w in weights]
        epoch = max(len(s) / w for s, w in zip(self.sources, self.weights))
        self.counts = [max(len(s), round(w * epoch)) for s, w in zip(self.sources, self.weights)]
        self._starts = np.cumsum([0] + self.counts)
        names: list[str] = []
        for source in self.sources:
            names += [n for n in source.label_names if n not in names]
        self.label_names = tuple(names)
        self._label_index = [np.array([names.index(n) for n in s.label_names], np.int64)
                             for s in self.sources]

    def __len__(self) -> int:
        return int(self._starts[-1])

    def locate(self, index: int) -> tuple[int, int]:
        """Mixture position -> (source number, index in that source)."""
        if not -len(self) <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} examples")
        index %= len(self)
        k = int(np.searchsorted(self._starts, index, side="right")) - 1
        return k, (index - int(self._starts[k])) % len(self.sources[k])

    def texts(self, index: int) -> tuple[str, tuple]:
        """(report, captions) at ``index``, without decoding the image (``Source.texts``)."""
        k, position = self.locate(index)
        return self.sources[k].texts(position)

    def __getitem__(self, index: int) -> Example:
        k, position = self.locate(index)
        example = self.sources[k][position]
        labels = np.zeros(len(self.label_names), np.float32)
        mask = np.zeros(len(self.label_names), bool)
        labels[self._label_index[k]] = example.labels
        mask[self._label_index[k]] = example.label_mask
        return dataclasses.replace(example, labels=labels, label_mask=mask)

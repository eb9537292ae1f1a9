"""The synthetic source: examples as functions of (seed, split, index), needing no files.

Every example is derived from ``(seed, split, index)`` alone, so example ``i`` of a split is
identical on every call and every machine, and the train / validation / test index spaces are
disjoint by construction (the split is part of the ``SeedSequence`` spawn key): one stream
samples the case, another writes its text.
"""

from __future__ import annotations

import numpy as np

from rmc_jax.data import schema
from rmc_jax.data.sources.base import Source
from rmc_jax.data.synthetic.findings import NORMAL_FRACTION, Case, case_regions, sample_case
from rmc_jax.data.synthetic.render import render_case
from rmc_jax.data.synthetic.text import generate_text
from rmc_jax.data.synthetic.vocabulary import LABEL_NAMES

SPLIT_SIZES = {"train": 20000, "validation": 1000, "test": 1000}
SPLIT_ALIASES = {"train": "train", "training": "train", "validation": "validation",
                 "valid": "validation", "val": "validation", "test": "test"}
SPLIT_STREAMS = {"train": 0, "validation": 1, "test": 2}   # first SeedSequence spawn key


def split_name(split: str) -> str:
    """The canonical name of a split ('val' -> 'validation'); ValueError for an unknown one."""
    key = str(split).lower()
    if key not in SPLIT_ALIASES:
        raise ValueError(f"synthetic: unknown split {split!r}; expected one of "
                         f"{sorted(set(SPLIT_ALIASES))}")
    return SPLIT_ALIASES[key]


def example_rngs(seed: int, split: str, index: int):
    """(case rng, text rng) for one example: a function of (seed, split, index) only.

    The split is part of the SeedSequence spawn key, so splits never share a random stream.
    """
    split = split_name(split)
    root = np.random.SeedSequence(entropy=int(seed), spawn_key=(SPLIT_STREAMS[split], int(index)))
    case_seq, text_seq = root.spawn(2)
    return np.random.default_rng(case_seq), np.random.default_rng(text_seq)


def make_example(case: Case, text_rng: np.random.Generator, image_size: int = 256,
                 example_id: str = "", source: str = "synthetic") -> schema.Example:
    """Render a case and write its text: a complete, validated ``Example``."""
    image, boxes = render_case(case, image_size)
    report, captions = generate_text(case, text_rng)
    regions = case_regions(case)
    labels = np.zeros(len(LABEL_NAMES), np.float32)
    for f in case.findings:
        labels[LABEL_NAMES.index(f.name)] = 1.0
    if not case.findings:
        labels[LABEL_NAMES.index("no_finding")] = 1.0

    def ids(fn, values):  # schema ids of region attributes, -1 where there is none
        return np.array([fn(x) if x is not None else -1 for x in values], np.int32)

    return schema.Example(
        example_id=example_id, image=image, report=report, labels=labels,
        label_mask=np.ones(len(LABEL_NAMES), bool), boxes=boxes.reshape(-1, 4),
        captions=captions,
        finding_ids=ids(schema.finding_id, [r.finding for r in regions]),
        side_ids=ids(schema.side_id, [r.side for r in regions]),
        zone_ids=ids(schema.zone_id, [r.zone for r in regions]),
        size_ids=ids(schema.size_id, [r.size for r in regions]),
        source=source, view="PA")


class SyntheticSource(Source):
    """Procedural chest radiographs with reports and region captions; needs no files.

    Args:
      root: ignored (accepted so that ``get_source('synthetic', root, ...)`` works).
      split: 'train', 'validation' ('val', 'valid') or 'test'.
      size: number of examples (default ``SPLIT_SIZES[split]``).
      seed: dataset seed; example ``i`` depends on (seed, split, i) only.
      image_size: H = W of the rendered images.
      normal_fraction: share of normal studies.
    """

    name = "synthetic"
    label_names = LABEL_NAMES

    def __init__(self, root=None, split: str = "train", size: int | None = None, seed: int = 0,
                 image_size: int = 256, normal_fraction: float = NORMAL_FRACTION):
        del root
        self.split = split_name(split)
        self.size = SPLIT_SIZES[self.split] if size is None else int(size)
        if self.size < 0:
            raise ValueError(f"synthetic: size must be >= 0, got {size}")
        if int(seed) < 0:
            raise ValueError(f"synthetic: seed must be >= 0, got {seed}")
        self.seed = int(seed)
        self.image_size = int(image_size)
        self.normal_fraction = float(normal_fraction)

    def __len__(self) -> int:
        return self.size

    def case(self, index: int) -> Case:
        """The sampled case behind example ``index`` (findings with their attributes)."""
        return sample_case(self._rngs(index)[0], self.normal_fraction)

    def _rngs(self, index: int):
        """(case rng, text rng) of example ``index`` (negative indices count from the end)."""
        index = int(index)
        if index < 0:
            index += self.size
        if not 0 <= index < self.size:
            raise IndexError(f"synthetic {self.split}: index {index} out of range [0, {self.size})")
        return example_rngs(self.seed, self.split, index)

    def texts(self, index: int) -> tuple[str, tuple]:
        """(report, captions) of example ``index`` without rendering its image (fast corpus)."""
        case_rng, text_rng = self._rngs(index)
        return generate_text(sample_case(case_rng, self.normal_fraction), text_rng)

    def __getitem__(self, index: int) -> schema.Example:
        """Example ``index``: the sampled case rendered at ``image_size``, with its text."""
        index = int(index)
        if index < 0:
            index += self.size
        case_rng, text_rng = self._rngs(index)
        case = sample_case(case_rng, self.normal_fraction)
        return make_example(case, text_rng, self.image_size,
                            example_id=f"{self.split}-{self.seed}-{index:06d}", source=self.name)

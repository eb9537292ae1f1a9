"""Grain input pipeline: source -> Example -> transforms -> tokens -> padded batches.

    MapDataset.source(robust source) -> shuffle(seed) -> repeat -> [process::process_count]
      -> random_map(prepare: [flip + mirrored text], crop, letterbox, intensity, tokenize,
                    hard negatives, pad)
      -> to_iter_dataset -> batch(drop_remainder) -> mp_prefetch(workers)

Everything random comes from Grain's per-element seeded RNG, so a pipeline is a pure function
of (source, config, seed) and its iterator state can be checkpointed and restored to yield
exactly the batches the uninterrupted iterator would have.

A batch is a dict of NumPy arrays (B = per-process batch, R = max_regions, K = negatives,
L = max_text_len, C = labels, S = image size):
    image [B, S, S, 1] float32       text_ids, text_mask [B, L] int32
    boxes [B, R, 4] float32          box_mask [B, R] bool
    caption_ids, caption_mask [B, R, L] int32      caption_hash [B, R] int32
    neg_ids, neg_mask [B, R, K, L] int32           neg_valid [B, R, K] bool, neg_kind [B, R, K]
    labels [B, C] float32            label_mask [B, C] bool
    finding_ids, side_ids, zone_ids, size_ids [B, R] int32
    replaced [B] int32 (unreadable examples skipped to reach this one)
    regions_cut [B] int32 (regions beyond max_regions, left out; logged by the trainer)
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import signal
import warnings
from typing import Sequence

import grain
import numpy as np

from rmc_jax.data import transforms
from rmc_jax.data.captions import PERTURBATION_TYPES, hard_negatives
from rmc_jax.data.schema import Example
from rmc_jax.data.sources.images import ImageDecodeError
from rmc_jax.data.sources.reports import REPORT_SECTIONS, model_text
from rmc_jax.data.tokenizer import Tokenizer


@dataclasses.dataclass(frozen=True)
class PipelineConfig:
    """How examples become model inputs (mirrors ``config.data``)."""

    image_size: int = 128
    max_regions: int = 8
    num_negatives: int = 4
    max_text_len: int = 64
    max_caption_len: int = 24
    augment: bool = True
    min_crop_scale: float = 0.8
    pixel_mean: float = 0.5
    pixel_std: float = 0.25
    negative_kinds: Sequence[str] = PERTURBATION_TYPES
    # Training only: mirror image and boxes with this probability, swapping left/right in the
    # captions, the report and side_ids with them (independent of ``augment``).
    flip_probability: float = 0.0
    # Which report sections the text tower reads, in order (``reports.REPORT_SECTIONS``).
    report_sections: str = "impression_findings"

    @classmethod
    def from_data_config(cls, data, **overrides) -> "PipelineConfig":
        """The pipeline settings of a run's ``config.data`` section (``overrides`` win)."""
        fields = dict(
            image_size=data.image_size, max_regions=data.max_regions,
            num_negatives=data.num_negatives, max_text_len=data.max_text_len,
            max_caption_len=data.max_caption_len, augment=data.augment,
            flip_probability=data.get("flip_probability", 0.0),
            report_sections=data.get("report_sections", cls.report_sections))
        fields.update(overrides)
        return cls(**fields)

    def __post_init__(self):
        if self.report_sections not in REPORT_SECTIONS:
            raise ValueError(f"PipelineConfig.report_sections = {self.report_sections!r}; "
                             f"expected one of {REPORT_SECTIONS}")
        if not 0.0 <= self.flip_probability <= 1.0:
            raise ValueError(f"PipelineConfig.flip_probability = {self.flip_probability} must "
                             "be in [0, 1]")


class RobustSource:
    """Wraps a source so an unreadable image is skipped (warning naming it) and replaced by the
    next readable example; each returned item says how many were skipped to reach it."""

    def __init__(self, source, max_consecutive: int = 16):
        self.source = source
        self.max_consecutive = max_consecutive

    def __len__(self):
        return len(self.source)

    def __getitem__(self, index):
        n = len(self.source)
        for skipped in range(self.max_consecutive + 1):
            position = (index + skipped) % n
            try:
                return self.source[position], skipped
            except (ImageDecodeError, FileNotFoundError) as error:
                warnings.warn(f"skipping unreadable example {position} of "
                              f"{getattr(self.source, 'name', type(self.source).__name__)}: "
                              f"{error}", stacklevel=2)
        raise RuntimeError(f"{self.max_consecutive + 1} unreadable examples in a row starting at "
                           f"index {index}: check the dataset copy")


def caption_hash(text: str) -> int:
    """Stable 31-bit id of a caption's normalised text: equal sentences share an id."""
    normalised = " ".join(text.lower().split()).rstrip(".")
    return int.from_bytes(hashlib.blake2b(normalised.encode(), digest_size=4).digest(),
                          "little") & 0x7FFFFFFF


class Prepare(grain.transforms.RandomMap):
    """(Example, skipped) -> fixed-shape dict of arrays for one example."""

    def __init__(self, config: PipelineConfig, tokenizer: Tokenizer, caption_tokenizer: Tokenizer,
                 train: bool):
        self.config = config
        self.tokenizer = tokenizer
        self.caption_tokenizer = caption_tokenizer
        self.train = train

    def random_map(self, item, rng: np.random.Generator):
        example, skipped = item
        return prepare_example(example, self.config, self.tokenizer, self.caption_tokenizer,
                               rng if self.train else None, skipped)


def prepare_example(example: Example, config: PipelineConfig, tokenizer: Tokenizer,
                    caption_tokenizer: Tokenizer, rng: np.random.Generator | None,
                    skipped: int = 0) -> dict:
    """One Example -> padded arrays. ``rng=None`` means evaluation: no augmentation, and the
    hard negatives are drawn from a generator seeded by the example id (stable across runs).

    A training flip (``config.flip_probability``) mirrors image and boxes and swaps the
    patient's sides in the captions, the report and ``side_ids`` before anything else uses
    them, so hard negatives, caption hashes and tokens all come from the mirrored text.
    """
    r_max, k = config.max_regions, config.num_negatives
    where = f"{example.source}:{example.example_id}"
    boxes, keep = transforms.sanitize_boxes(example.boxes, where)
    keep_index = np.flatnonzero(keep)[:r_max]
    boxes = boxes[keep_index]
    captions = [example.captions[i] for i in keep_index]
    report = model_text(example.report, config.report_sections)
    attributes = {name: getattr(example, name)[keep_index]
                  for name in ("finding_ids", "side_ids", "zone_ids", "size_ids")}

    image = example.image
    if rng is not None and config.flip_probability > 0 and rng.random() < config.flip_probability:
        image, boxes = transforms.hflip(image, boxes)
        captions = [transforms.mirror_laterality(c) for c in captions]
        report = transforms.mirror_laterality(report)
        attributes["side_ids"] = transforms.mirror_side_ids(attributes["side_ids"])
    if rng is not None and config.augment:
        image, boxes = transforms.crop_keeping_regions(image, boxes, rng, config.min_crop_scale)
    image, boxes = transforms.letterbox(image, boxes, config.image_size)
    if rng is not None and config.augment:
        image = transforms.adjust_intensity(image, rng)
    image = (image - config.pixel_mean) / config.pixel_std

    negative_rng = rng if rng is not None else np.random.default_rng(
        caption_hash(f"{example.source}:{example.example_id}"))
    r = len(captions)
    negatives = [hard_negatives(c, k, negative_rng, kinds=config.negative_kinds)
                 for c in captions]
    neg_texts = [n.text for per_region in negatives for n in per_region]
    text_ids, text_mask = tokenizer([report])
    cap_ids, cap_mask = caption_tokenizer(captions + neg_texts) if (captions or neg_texts) else (
        np.zeros((0, config.max_caption_len), np.int32),) * 2

    def padded(shape, dtype, fill=0):
        return np.full(shape, fill, dtype)

    out = {
        "image": image[..., None].astype(np.float32),
        "text_ids": text_ids[0], "text_mask": text_mask[0],
        "boxes": padded((r_max, 4), np.float32), "box_mask": padded((r_max,), bool, False),
        "caption_ids": padded((r_max, config.max_caption_len), np.int32),
        "caption_mask": padded((r_max, config.max_caption_len), np.int32),
        "caption_hash": padded((r_max,), np.int32, -1),
        "neg_ids": padded((r_max, k, config.max_caption_len), np.int32),
        "neg_mask": padded((r_max, k, config.max_caption_len), np.int32),
        "neg_valid": padded((r_max, k), bool, False),
        "neg_kind": padded((r_max, k), np.int32, -1),
        "labels": example.labels.astype(np.float32),
        "label_mask": example.label_mask.astype(bool),
        "replaced": np.int32(skipped),
        "regions_cut": np.int32(max(0, int(keep.sum()) - r_max)),
    }
    for name, values in attributes.items():
        out[name] = padded((r_max,), np.int32, -1)
        out[name][:r] = values
    out["boxes"][:r] = boxes
    out["box_mask"][:r] = True
    out["caption_ids"][:r], out["caption_mask"][:r] = cap_ids[:r], cap_mask[:r]
    out["caption_hash"][:r] = [caption_hash(c) for c in captions]
    position = r
    for i, per_region in enumerate(negatives):
        n = len(per_region)
        out["neg_ids"][i, :n] = cap_ids[position:position + n]
        out["neg_mask"][i, :n] = cap_mask[position:position + n]
        out["neg_valid"][i, :n] = True
        out["neg_kind"][i, :n] = [PERTURBATION_TYPES.index(x.kind) for x in per_region]
        position += n
    return out


def make_dataset(source, config: PipelineConfig, tokenizer: Tokenizer, *, batch_size: int,
                 seed: int, train: bool, process_index: int = 0, process_count: int = 1,
                 caption_tokenizer: Tokenizer | None = None,
                 num_epochs: int | None = None) -> grain.IterDataset:
    """The batched dataset for one process.

    Training shuffles with ``seed`` and repeats forever (or ``num_epochs``); evaluation keeps the
    source order and covers it once. Each process reads only its slice of the global order;
    ``batch_size`` is per process. Batches drop the remainder.
    """
    if caption_tokenizer is None:
        caption_tokenizer = tokenizer.with_max_len(config.max_caption_len)
    dataset = grain.MapDataset.source(RobustSource(source))
    if train:
        dataset = dataset.shuffle(seed=seed).repeat(num_epochs)
    dataset = dataset[process_index::process_count]
    dataset = dataset.random_map(Prepare(config, tokenizer, caption_tokenizer, train), seed=seed)
    return dataset.to_iter_dataset().batch(batch_size, drop_remainder=True)


def prefetch(dataset: grain.IterDataset, workers: int) -> grain.IterDataset:
    """Decode and transform in ``workers`` processes (0 = in the main process)."""
    if workers <= 0:
        return dataset
    from absl import flags

    if not flags.FLAGS.is_parsed():  # called from a notebook or test, not from an absl app:
        flags.FLAGS.mark_as_parsed()  # Grain's worker options read absl flags (defaults)
    return dataset.mp_prefetch(grain.MultiprocessingOptions(num_workers=workers),
                               worker_init_fn=_leave_sigterm_to_the_trainer)


def _leave_sigterm_to_the_trainer(worker_index: int, worker_count: int) -> None:
    """Input workers ignore SIGTERM. A preemption signals the whole process group; the trainer
    then saves a checkpoint and closes the iterator, which stops the workers in order and
    frees the shared memory of their ready batches (a worker killed by the signal would leave
    it behind)."""
    del worker_index, worker_count
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


@contextlib.contextmanager
def closing(iterator):
    """Close a batch iterator on exit (end of run, preemption, error): stops its worker
    processes and frees the shared memory of the batches in flight, which a process that
    exits without closing leaves to Python's resource tracker ("leaked shared_memory
    objects")."""
    try:
        yield iterator
    finally:
        iterator.close()

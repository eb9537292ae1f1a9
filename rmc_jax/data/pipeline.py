"""Grain input pipeline: source -> Example -> transforms -> tokens -> padded batches.

    MapDataset.source(robust source) -> shuffle(seed) -> repeat -> [process::process_count]
      -> random_map(prepare: [flip + mirrored text], crop, letterbox, intensity, tokenize,
                    hard negatives, pad)
      -> to_iter_dataset -> skip bad examples -> batch(drop_remainder) -> mp_prefetch(workers)

Bad data: an example whose ``source[i]`` or preparation raises (an unreadable or truncated
image, a corrupt record, a malformed annotation) becomes a ``Skipped`` marker naming the source,
the index and the error (whose message names the file or shard). Markers are not batched: the
skip stage drops them and attaches their descriptions to the next readable example, so a
batch holds only readable examples (none is repeated to fill a gap) and says what was skipped
before each. The skip stage's state is its parent's and its counts, so the iterator stays
checkpointable.
Over ``max_bad_fraction`` of the examples read, the iterator raises ``BadDataError`` listing
the bad examples (its counts are part of its checkpointed state, so a resumed run judges the
fraction as the uninterrupted one would); ``EvaluationBatches`` does the same for an
evaluation split.

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
    has_report [B] bool (the example has report text; retrieval leaves out those without)
    content [B, 4] float32 (normalised xyxy of the image inside the letterbox padding)
    regions_cut [B] int32 (regions beyond max_regions, left out; logged by the trainer)
    regions_without_caption [B] int32 (boxes whose caption is empty, left out)
    sentence_ids, sentence_mask [B, S', L'] int32, sentence_hash [B, S'] int32 (S' report
        sentences for the sentence-image loss, -1: none), report_sentence_hash [B, M] int32
        (the hashes of the report's sentences, -1: none; ``sentence_fields``)
    skipped [B] int32, skipped_examples [B] str: bad examples skipped just before this one and
        their descriptions, one per line (``make_dataset`` batches only)

One module of over 500 lines on purpose: it is the one chain drawn above, read top to bottom,
and its bad-data parts (``Skipped``, ``SkipLog``, ``RobustSource``, the skip stage) are stages
of that chain whose counts live in its checkpointed iterator state.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import hashlib
import os
import signal
import threading
import time
import warnings
from typing import Sequence

import grain
import numpy as np

from rmc_jax.data import transforms
from rmc_jax.data.captions import PERTURBATION_TYPES, hard_negatives
from rmc_jax.data.schema import Example
from rmc_jax.data.sources.reports import REPORT_SECTIONS, model_text, report_sentences
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
    # The largest fraction of the examples read that may be bad (unreadable, unpreparable)
    # and skipped before iterating raises BadDataError.
    max_bad_fraction: float = 0.01
    # Report sentences for the sentence-image loss: this many drawn per training example
    # (evaluation: the first ones), tokenized at max_sentence_len, and the hashes of up to
    # max_report_sentences of the report's sentences (which images state a sentence).
    sentences_per_report: int = 0
    max_sentence_len: int = 20
    max_report_sentences: int = 16

    @classmethod
    def from_data_config(cls, data, **overrides) -> "PipelineConfig":
        """The pipeline settings of a run's ``config.data`` section (``overrides`` win)."""
        fields = dict(
            image_size=data.image_size, max_regions=data.max_regions,
            num_negatives=data.num_negatives, max_text_len=data.max_text_len,
            max_caption_len=data.max_caption_len, augment=data.augment,
            flip_probability=data.get("flip_probability", 0.0),
            report_sections=data.get("report_sections", cls.report_sections),
            max_bad_fraction=data.get("max_bad_fraction", cls.max_bad_fraction),
            sentences_per_report=data.get("sentences_per_report", cls.sentences_per_report),
            max_sentence_len=data.get("max_sentence_len", cls.max_sentence_len),
            max_report_sentences=data.get("max_report_sentences", cls.max_report_sentences))
        fields.update(overrides)
        return cls(**fields)

    def __post_init__(self):
        if self.report_sections not in REPORT_SECTIONS:
            raise ValueError(f"PipelineConfig.report_sections = {self.report_sections!r}; "
                             f"expected one of {REPORT_SECTIONS}")
        if not 0.0 <= self.flip_probability <= 1.0:
            raise ValueError(f"PipelineConfig.flip_probability = {self.flip_probability} must "
                             "be in [0, 1]")


class BadDataError(RuntimeError):
    """Too many examples could not be read or prepared (more than ``data.max_bad_fraction``)."""


@dataclasses.dataclass(frozen=True)
class Skipped:
    """An example that could not be read or prepared: which one and why."""

    source: str
    index: int
    reason: str

    def __str__(self) -> str:
        """'source[index]: reason' on one line."""
        return f"{self.source}[{self.index}]: " + " ".join(self.reason.splitlines())


def _reason(error: BaseException, stage: str = "") -> str:
    """'ImageDecodeError: cannot decode /x.png: ...' (the error's message names the file)."""
    return f"{stage}{type(error).__name__}: {error}"


def _source_name(source) -> str:
    return getattr(source, "name", "") or type(source).__name__


class SkipLog:
    """Counts of the examples read and skipped, with the distinct bad ones, and the
    ``max_bad_fraction`` budget over them (one log per iterator, trainer or evaluation).

    The fraction is judged once enough examples were read for it to mean something (at least
    ``1 / limit``), or at the end of a split (``complete``); the error lists the bad examples.
    """

    MAX_LISTED = 1000  # distinct bad examples remembered (and printed) at most

    def __init__(self, limit: float = 1.0, what: str = "examples"):
        self.limit, self.what = limit, what
        self.read = self.skipped = 0
        self.distinct: dict[str, None] = {}

    def add(self, readable: int = 0, skipped=()) -> None:
        """``readable`` examples read fine and the descriptions of those ``skipped``."""
        skipped = [str(s) for s in skipped]
        self.read += readable + len(skipped)
        self.skipped += len(skipped)
        for description in skipped:
            if len(self.distinct) < self.MAX_LISTED:
                self.distinct.setdefault(description)

    def state(self) -> dict:
        """The counts and names, as JSON (checkpointed with the iterator)."""
        return {"read": self.read, "skipped": self.skipped, "distinct": list(self.distinct)}

    def restore(self, state: dict) -> None:
        self.read, self.skipped = int(state["read"]), int(state["skipped"])
        self.distinct = dict.fromkeys(state["distinct"])

    def listing(self, limit: int = 20) -> str:
        """The first ``limit`` distinct bad examples, one per line."""
        names = list(self.distinct)
        more = len(names) - limit
        return "\n".join(f"  {n}" for n in names[:limit]) + (
            f"\n  ... and {more} more" if more > 0 else "")

    def check(self, complete: bool = False) -> None:
        """Raise ``BadDataError`` (with the list) when over the budget."""
        limit = max(self.limit, 0.0)
        enough = complete or self.read >= 1.0 / max(limit, 1e-9)
        if self.skipped and enough and self.skipped / self.read > limit:
            raise BadDataError(
                f"{self.skipped} of {self.read} {self.what} read could not be read or "
                f"prepared and were skipped ({self.skipped / self.read:.1%} > "
                f"data.max_bad_fraction = {limit:.1%}); check the dataset copy. "
                f"The bad examples ({len(self.distinct)} distinct):\n{self.listing()}")


class RobustSource:
    """A source whose per-example errors become ``Skipped`` markers: item ``i`` is
    ``(i, example)`` or ``Skipped(dataset, position, reason)``, with a warning naming it.

    Any ``Exception`` counts (an undecodable image, a truncated record, a malformed
    annotation, a missing file); KeyboardInterrupt and SystemExit are not caught.
    """

    def __init__(self, source):
        self.source = source
        self.name = _source_name(source)

    def __len__(self):
        return len(self.source)

    def where(self, index: int) -> tuple[str, int]:
        """(dataset name, position in it) of item ``index``: in a mixture, the dataset and
        the position there, so that an example met at several mixture positions (the smaller
        datasets are cycled) has one name."""
        locate = getattr(self.source, "locate", None)
        if locate is None:
            return self.name, int(index)
        k, position = locate(index)
        return _source_name(self.source.sources[k]), int(position)

    def __getitem__(self, index):
        item = attempt(lambda: self.source[index], *self.where(index))
        return item if isinstance(item, Skipped) else (index, item)


def attempt(read, source: str, index: int, what: str = "unreadable example",
            stage: str = ""):
    """``read()``, or a ``Skipped(source, index, stage + the error)`` marker, with a warning
    naming it, when that raises any ``Exception`` (KeyboardInterrupt and SystemExit are not
    caught). ``source[index]`` names the example read."""
    try:
        return read()
    except Exception as error:  # noqa: BLE001 -- any bad example is skipped and named
        skipped = Skipped(source, int(index), _reason(error, stage))
        warnings.warn(f"skipping {what} {index} of {source}: {skipped.reason}", stacklevel=3)
        return skipped


def spread_texts(source, count: int, max_bad_fraction: float = 1.0):
    """(report, captions) of ``count`` examples spread evenly over ``source`` (every part of a
    mixture contributes), read with ``source.texts``: no image is decoded, so an unreadable
    one cannot stop a corpus. An example whose text cannot be read (a corrupt record, a
    truncated scene graph) is left out with a warning naming it, within ``max_bad_fraction``
    of those read (``BadDataError`` beyond)."""
    if not hasattr(source, "texts"):
        raise TypeError(f"data source {_source_name(source)!r} has no texts(index) -> (report, "
                        "captions): every source gives an example's text without decoding its "
                        "image (rmc_jax.data.sources.base.Source)")
    log, where = SkipLog(max_bad_fraction, "examples' texts read"), RobustSource(source).where
    count = min(count, len(source))
    for index in np.linspace(0, len(source) - 1, count).round().astype(int).tolist():
        item = attempt(lambda: source.texts(index), *where(index), "unreadable text of example")
        log.add(*((0, [item]) if isinstance(item, Skipped) else (1,)))
        log.check()
        if not isinstance(item, Skipped):
            yield item
    log.check(complete=True)


def caption_hash(text: str) -> int:
    """Stable 31-bit id of a caption's normalised text: equal sentences share an id."""
    normalised = " ".join(text.lower().split()).rstrip(".")
    return int.from_bytes(hashlib.blake2b(normalised.encode(), digest_size=4).digest(),
                          "little") & 0x7FFFFFFF


class Prepare(grain.transforms.RandomMap):
    """(index, Example) -> fixed-shape dict of arrays for one example; a ``Skipped`` marker
    passes through. An example whose preparation raises becomes a ``Skipped`` marker too:
    what fails there (an image of an impossible shape, boxes or text a transform cannot take)
    comes from that example's data, and a bug that fails every example still stops the run
    at the bad-example budget, with the errors listed."""

    def __init__(self, config: PipelineConfig, tokenizer: Tokenizer, caption_tokenizer: Tokenizer,
                 train: bool, where=lambda index: ("source", index)):
        self.config = config
        self.tokenizer = tokenizer
        self.caption_tokenizer = caption_tokenizer
        self.sentence_tokenizer = (caption_tokenizer.with_max_len(config.max_sentence_len)
                                   if config.sentences_per_report else None)
        self.train = train
        self.where = where  # index -> (dataset name, position), as ``RobustSource.where``

    def random_map(self, item, rng: np.random.Generator):
        if isinstance(item, Skipped):
            return item
        index, example = item
        out = attempt(lambda: prepare_example(example, self.config, self.tokenizer,
                                              self.caption_tokenizer,
                                              rng if self.train else None,
                                              self.sentence_tokenizer),
                      *self.where(index), "example",
                      f"{example.source}:{example.example_id}: cannot prepare: ")
        if not isinstance(out, Skipped):
            out["index"] = np.int32(index)
        return out


def prepare_example(example: Example, config: PipelineConfig, tokenizer: Tokenizer,
                    caption_tokenizer: Tokenizer, rng: np.random.Generator | None,
                    sentence_tokenizer: Tokenizer | None = None) -> dict:
    """One Example -> padded arrays. ``rng=None`` means evaluation: no augmentation, and the
    hard negatives are drawn from a generator seeded by the example id (stable across runs).

    A box whose caption is empty has no text to learn from or to be scored against: it is
    left out (``box_mask`` False) and counted in ``regions_without_caption``. ``has_report``
    says whether the report has any text (for the model: after ``report_sections``).

    A training flip (``config.flip_probability``) mirrors image and boxes and swaps the
    patient's sides in the captions, the report and ``side_ids`` before anything else uses
    them, so hard negatives, caption hashes and tokens all come from the mirrored text.

    ``sentence_tokenizer`` tokenizes the report sentences (``sentence_fields``) at
    ``max_sentence_len``; ``Prepare`` makes it once, and without it one is made here.
    """
    r_max, k = config.max_regions, config.num_negatives
    where = f"{example.source}:{example.example_id}"
    shape = np.shape(example.image)
    if len(shape) != 2 or min(shape) < 1:
        raise ValueError(f"{where}: image of shape {shape}; expected a grayscale [H, W] array "
                         "with H, W >= 1")
    boxes, keep = transforms.sanitize_boxes(example.boxes, where)
    captioned = np.array([bool(str(c).strip()) for c in example.captions], bool)
    uncaptioned = int((keep & ~captioned).sum())
    keep &= captioned
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
    content = transforms.letterbox_content(image.shape[0], image.shape[1],
                                           config.image_size)
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
        "has_report": np.bool_(bool(report.strip())),
        "content": content,
        "regions_cut": np.int32(max(0, int(keep.sum()) - r_max)),
        "regions_without_caption": np.int32(uncaptioned),
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
    if config.sentences_per_report and (sentence_tokenizer is None or
                                        sentence_tokenizer.max_len != config.max_sentence_len):
        sentence_tokenizer = caption_tokenizer.with_max_len(config.max_sentence_len)
    out.update(sentence_fields(report, config, sentence_tokenizer, rng))
    return out


def sentence_fields(report: str, config: PipelineConfig, tokenizer: Tokenizer | None,
                    rng: np.random.Generator | None) -> dict:
    """The report's sentences for the sentence-image loss: S = sentences_per_report of them
    (drawn without replacement in training, the first ones in evaluation; fewer in a short
    report) as ``sentence_ids``, ``sentence_mask`` [S, max_sentence_len] (``tokenizer``, at that
    length; None when S = 0) and ``sentence_hash`` [S] (-1: none), and
    ``report_sentence_hash`` [max_report_sentences], the distinct hashes of all the report's
    sentences in order (-1: none). Hashes are ``caption_hash``es of the sentences."""
    s, length = config.sentences_per_report, config.max_sentence_len
    sentences = report_sentences(report)
    sentence_hashes = [caption_hash(x) for x in sentences]
    hashes = list(dict.fromkeys(sentence_hashes))[:config.max_report_sentences]
    if rng is not None and sentences and s:
        picked = list(rng.permutation(len(sentences))[:s])
    else:
        picked = list(range(min(s, len(sentences))))
    out = {"sentence_ids": np.zeros((s, length), np.int32),
           "sentence_mask": np.zeros((s, length), np.int32),
           "sentence_hash": np.full((s,), -1, np.int32),
           "report_sentence_hash": np.full((config.max_report_sentences,), -1, np.int32)}
    if picked:
        ids, mask = tokenizer([sentences[i] for i in picked])
        out["sentence_ids"][:len(picked)], out["sentence_mask"][:len(picked)] = ids, mask
        out["sentence_hash"][:len(picked)] = [sentence_hashes[i] for i in picked]
    out["report_sentence_hash"][:len(hashes)] = hashes
    return out


def prepared(source, config: PipelineConfig, tokenizer: Tokenizer, *, seed: int, train: bool,
             process_index: int = 0, process_count: int = 1,
             caption_tokenizer: Tokenizer | None = None,
             num_epochs: int | None = None) -> grain.MapDataset:
    """Per-example model inputs (dicts of arrays, see the module docstring) or ``Skipped``
    markers, in the order this process reads them.

    Training shuffles with ``seed`` and repeats forever (or ``num_epochs``); evaluation keeps the
    source order and covers it once. Each process reads only its slice of the global order.
    """
    if caption_tokenizer is None:
        caption_tokenizer = tokenizer.with_max_len(config.max_caption_len)
    robust = RobustSource(source)
    dataset = grain.MapDataset.source(robust)
    if train:
        dataset = dataset.shuffle(seed=seed).repeat(num_epochs)
    dataset = dataset[process_index::process_count]
    return dataset.random_map(Prepare(config, tokenizer, caption_tokenizer, train, robust.where),
                              seed=seed)


def make_dataset(source, config: PipelineConfig, tokenizer: Tokenizer, *, batch_size: int,
                 seed: int, train: bool, process_index: int = 0, process_count: int = 1,
                 caption_tokenizer: Tokenizer | None = None,
                 num_epochs: int | None = None) -> grain.IterDataset:
    """The batched dataset for one process (``prepared`` without its bad examples, batched;
    ``batch_size`` is per process, the remainder is dropped).

    Each example carries the bad examples skipped just before it (``skipped``,
    ``skipped_examples``); over ``config.max_bad_fraction`` of the examples read, iterating
    raises ``BadDataError``, and so it does (whatever the budget) after ``10 * len(source) +
    100`` bad examples in a row, where no readable example is left to wait for.
    """
    dataset = prepared(source, config, tokenizer, seed=seed, train=train,
                       process_index=process_index, process_count=process_count,
                       caption_tokenizer=caption_tokenizer, num_epochs=num_epochs)
    return _SkipBad(dataset.to_iter_dataset(read_options(batch_size)), config.max_bad_fraction,
                    10 * len(source) + 100).batch(batch_size, drop_remainder=True)


READ_AHEAD_BATCHES = 2  # examples prepared ahead of the consumer, in batches


def read_options(batch_size: int) -> grain.ReadOptions:
    """Grain's read threads for a pipeline of ``batch_size`` batches: Grain's thread count,
    and a read-ahead of ``READ_AHEAD_BATCHES`` batches (at most Grain's default buffer).

    Here a read is the whole preparation (decode, augment, tokenize), not a file fetch: Grain's
    default buffer of 500 examples, sized for remote file systems, would prepare hundreds of
    examples ahead while the first step compiles on the same cores, and a short run (an
    evaluation, a test) would prepare examples it never uses. Steady-state throughput is the
    threads', not the buffer's (``tools/bench_data.py``).
    """
    default = grain.ReadOptions()
    ahead = max(READ_AHEAD_BATCHES * batch_size, default.num_threads)
    return grain.ReadOptions(num_threads=default.num_threads,
                             prefetch_buffer_size=min(ahead, default.prefetch_buffer_size))


class _SkipBad(grain.IterDataset):
    """Drops ``Skipped`` markers, attaching their descriptions to the next readable example
    (``skipped`` int32, ``skipped_examples`` str, one per line), within the bad-data budget.
    Bad examples after the last readable one of a finite stream are not reported."""

    def __init__(self, parent: grain.IterDataset, max_bad_fraction: float, in_a_row: int):
        super().__init__(parent)
        self.max_bad_fraction, self.in_a_row = max_bad_fraction, max(int(in_a_row), 1)

    def __iter__(self):
        return _SkipBadIterator(self._parent.__iter__(), self.max_bad_fraction, self.in_a_row)


class _SkipBadIterator(grain.DatasetIterator):
    def __init__(self, parent, max_bad_fraction: float, in_a_row: int):
        super().__init__(parent)
        self.log, self.in_a_row = SkipLog(max_bad_fraction), in_a_row

    def __next__(self):
        skipped = []
        while isinstance(item := next(self._parent), Skipped):
            skipped.append(str(item))
            self.log.add(skipped=[item])
            self.log.check()
            if len(skipped) >= self.in_a_row:
                raise BadDataError(f"{len(skipped)} examples in a row could not be read or "
                                   "prepared: check the dataset copy. The bad examples:\n"
                                   f"{self.log.listing()}")
        self.log.add(readable=1)
        return dict(item, skipped=np.int32(len(skipped)),
                    skipped_examples="\n".join(skipped))

    def get_state(self):
        return {"parent": self._parent.get_state(), "bad_examples": self.log.state()}

    def set_state(self, state):
        if "bad_examples" in state:  # (a state saved before the budget was kept has none)
            self.log.restore(state["bad_examples"])
            state = state["parent"]
        self._parent.set_state(state)


class EvaluationBatches:
    """Every readable example of ``source`` once, in source order, as batches of
    ``batch_size`` for embedding: bad examples are skipped (never replaced by another) and
    recorded in ``log`` (a ``SkipLog`` under ``config.max_bad_fraction``, judged on the whole
    split at the end); the last batch is filled up by repeating its last example, and
    ``count`` (set once iterated) says how many rows are real: they come first."""

    def __init__(self, source, config: PipelineConfig, tokenizer: Tokenizer, *, batch_size: int,
                 caption_tokenizer: Tokenizer | None = None, what: str = "examples"):
        self.dataset = prepared(source, config, tokenizer, seed=0, train=False,
                                caption_tokenizer=caption_tokenizer)
        self.batch_size = batch_size
        self.log = SkipLog(config.max_bad_fraction, what)
        self.count = 0

    def __iter__(self):
        self.log, self.count = SkipLog(self.log.limit, self.log.what), 0
        pending = []
        read_ahead = read_options(self.batch_size)
        with closing(iter(self.dataset.to_iter_dataset(read_ahead))) as items:  # stops read-ahead
            for item in items:
                if isinstance(item, Skipped):
                    self.log.add(skipped=[item])
                    self.log.check()
                    continue
                self.log.add(readable=1)
                self.count += 1
                pending.append(item)
                if len(pending) == self.batch_size:
                    yield _stack(pending)
                    pending = []
        self.log.check(complete=True)
        if pending:
            yield _stack(pending + pending[-1:] * (self.batch_size - len(pending)))


def _stack(items: list[dict]) -> dict:
    return {name: np.stack([item[name] for item in items]) for name in items[0]}


AUTO_WORKERS = -1                  # data.workers: size the input processes from the host
WORKERS_PER_ACCELERATOR = 16       # at most, per local GPU/TPU chip (published: 12-16 per GPU)
MAIN_PROCESS_CORES = 2             # left to the trainer (Python loop, dispatch, host transfers)


def host_cores() -> int:
    """Cores this process may run on: its CPU affinity where the OS reports one (a scheduler
    that binds each process of a host to its share of the cores is respected), else all."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # macOS, Windows
        return os.cpu_count() or 1


def auto_workers(cores: int | None = None, platform: str | None = None,
                 local_devices: int | None = None) -> int:
    """Input worker processes for ``data.workers = -1`` (the default) on this host.

    On a GPU or TPU host the accelerator runs the step, so decoding and augmenting take the
    host's ``cores`` less ``MAIN_PROCESS_CORES`` for the trainer's own process, at most
    ``WORKERS_PER_ACCELERATOR`` per local accelerator and at least one. On the CPU backend
    the step itself runs on every core: one worker decodes ahead (none on a one-core host).
    Defaults: ``host_cores()``, JAX's default backend and its local device count.
    """
    if platform is None or local_devices is None:
        import jax

        platform = jax.default_backend() if platform is None else platform
        local_devices = jax.local_device_count() if local_devices is None else local_devices
    cores = host_cores() if cores is None else cores
    if platform == "cpu":
        return 1 if cores > 1 else 0
    return max(1, min(cores - MAIN_PROCESS_CORES, WORKERS_PER_ACCELERATOR * local_devices))


def prefetch(dataset: grain.IterDataset, workers: int) -> grain.IterDataset:
    """Decode and transform in ``workers`` processes (0 = in the main process)."""
    if workers <= 0:
        return dataset
    from absl import flags

    if not flags.FLAGS.is_parsed():  # called from a notebook or test, not from an absl app:
        flags.FLAGS.mark_as_parsed()  # Grain's worker options read absl flags (defaults)
    return dataset.mp_prefetch(grain.MultiprocessingOptions(num_workers=workers),
                               worker_init_fn=functools.partial(_start_input_worker,
                                                                parent=os.getpid()))


PARENT_POLL_S = 1.0   # how often an input worker checks that its trainer is still alive


def _start_input_worker(worker_index: int, worker_count: int, parent: int) -> None:
    """Set up an input worker process: SIGTERM is left to the trainer, and the worker exits
    when the trainer is gone.

    A preemption signals the whole process group; the trainer then saves a checkpoint and
    closes the iterator, which stops the workers in order and frees the shared memory of their
    ready batches (a worker killed by the signal would leave it behind), so workers ignore
    SIGTERM. A trainer that dies without closing the iterator (SIGKILL, the OOM killer, a
    script without the trainer's handler) cannot stop them, so each worker watches its parent
    and exits once it has been re-parented: orphaned workers would otherwise decode for nobody,
    holding cores and memory until killed by hand. ``parent`` is the trainer's pid, taken
    before the worker starts: a worker still starting when the trainer dies must not take its
    new parent for the trainer.
    """
    del worker_index, worker_count
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    exit_with_parent(parent)


def exit_with_parent(parent: int, poll_s: float = PARENT_POLL_S) -> threading.Thread:
    """Exit this process (status 1) once its parent process ``parent`` has died, checked every
    ``poll_s`` seconds in a daemon thread. Polling ``os.getppid()`` works on every POSIX
    system; Linux's PR_SET_PDEATHSIG would fire when the parent's *thread* that started this
    process ends, which for a pool started from a helper thread is not the parent's death."""
    def watch():
        while os.getppid() == parent:
            time.sleep(poll_s)
        os._exit(1)

    watcher = threading.Thread(target=watch, name="exit-with-parent", daemon=True)
    watcher.start()
    return watcher


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

"""Transforms and the Grain pipeline: shapes, box consistency, determinism, resumable iterators,
per-process slicing and bad input."""

import dataclasses
import os
import re
import signal
import subprocess
import sys
import threading
import time
import warnings

import numpy as np
import pytest

from rmc_jax.data import pipeline as pipe
from rmc_jax.data import transforms
from rmc_jax.data.captions import PERTURBATION_TYPES
from rmc_jax.data import schema
from rmc_jax.data.schema import Example
from rmc_jax.data.sources.images import ImageDecodeError
from rmc_jax.data.sources.reports import model_text, report_sentences
from rmc_jax.data.tokenizer import train_wordpiece

# Skipping a bad example warns, naming it: asserted with pytest.warns where it is the point,
# kept out of the summary elsewhere.
pytestmark = pytest.mark.filterwarnings("ignore:skipping (unreadable )?example")

CAPTIONS = ["small nodule in the right upper zone", "moderate left pleural effusion",
            "large right pneumothorax", "left lower lobe consolidation"]


class TinySource:
    """Example i: a constant image of value i (so batches reveal which examples they hold)."""

    name = "tiny"
    label_names = ("a", "b")

    def __init__(self, n=24, bad=()):
        self.n, self.bad = n, set(bad)

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        if i in self.bad:
            raise ImageDecodeError(f"cannot decode image /data/{i}.png: truncated")
        r = i % 3
        boxes = np.array([[0.1, 0.1, 0.4, 0.5], [0.55, 0.5, 0.9, 0.9], [0.2, 0.6, 0.45, 0.95]],
                         np.float32)[:r]
        return Example(
            example_id=str(i), image=np.full((40, 60), i, np.uint8),
            report=f"Findings: case {i}. " + " ".join(CAPTIONS[:r]),
            labels=np.array([i % 2, 1 - i % 2], np.float32), label_mask=np.ones(2, bool),
            boxes=boxes, captions=tuple(CAPTIONS[:r]),
            finding_ids=np.arange(r, dtype=np.int32), source="tiny")


@pytest.fixture(scope="module")
def tokenizer():
    return train_wordpiece(CAPTIONS * 5 + ["findings case"] * 5, vocab_size=200, max_len=16)


def config(**kw):
    base = dict(image_size=32, max_regions=2, num_negatives=3, max_text_len=16,
                max_caption_len=12)
    base.update(kw)
    return pipe.PipelineConfig(**base)


def batches(source, tokenizer, n, **kw):
    cfg = kw.pop("cfg", config())
    options = dict(batch_size=4, seed=0, train=True)
    options.update(kw)
    iterator = iter(pipe.make_dataset(source, cfg, tokenizer, **options))
    return [next(iterator) for _ in range(n)]


def test_batch_shapes_masks_and_negatives(tokenizer):
    (batch,) = batches(TinySource(), tokenizer, 1)
    assert batch["image"].shape == (4, 32, 32, 1) and batch["image"].dtype == np.float32
    assert batch["text_ids"].shape == batch["text_mask"].shape == (4, 16)
    assert batch["boxes"].shape == (4, 2, 4) and batch["box_mask"].dtype == bool
    assert batch["caption_ids"].shape == (4, 2, 12)
    assert batch["neg_ids"].shape == (4, 2, 3, 12) and batch["neg_valid"].shape == (4, 2, 3)
    assert batch["labels"].shape == batch["label_mask"].shape == (4, 2)
    # Padded regions carry nothing; real regions have a caption and hard negatives.
    mask = batch["box_mask"]
    assert np.all(batch["caption_mask"][~mask] == 0) and np.all(~batch["neg_valid"][~mask])
    assert np.all(batch["caption_mask"][mask][:, 0] == 1)
    assert np.all(batch["neg_valid"][mask].sum(-1) >= 1)
    kinds = batch["neg_kind"][batch["neg_valid"]]
    assert np.all((kinds >= 0) & (kinds < len(PERTURBATION_TYPES)))
    assert np.all(batch["caption_hash"][mask] >= 0) and np.all(batch["skipped"] == 0)
    assert batch["skipped_examples"].tolist() == [""] * 4


def test_regions_beyond_max_regions_are_cut_and_counted(tokenizer):
    (batch,) = batches(TinySource(), tokenizer, 1, cfg=config(max_regions=2, augment=False),
                       train=False)
    assert batch["box_mask"].sum(1).tolist() == [0, 1, 2, 0]
    assert batch["regions_cut"].tolist() == [0, 0, 0, 0]
    (batch,) = batches(TinySource(), tokenizer, 1, cfg=config(max_regions=1, augment=False),
                       train=False)
    assert batch["regions_cut"].tolist() == [0, 0, 1, 0]  # example 2 has 2 regions
    (batch,) = batches(TinySource(), tokenizer, 1, cfg=config(max_regions=2))
    assert batch["box_mask"].sum(1).max() <= 2
    boxes = batch["boxes"][batch["box_mask"]]
    assert np.all((boxes >= 0) & (boxes <= 1)) and np.all(boxes[:, 2:] > boxes[:, :2])


def test_same_seed_same_batches_other_seed_differs(tokenizer):
    a, b = batches(TinySource(), tokenizer, 3), batches(TinySource(), tokenizer, 3)
    for x, y in zip(a, b):
        for key in x:
            np.testing.assert_array_equal(x[key], y[key])
    c = batches(TinySource(), tokenizer, 1, seed=1)
    assert not np.array_equal(a[0]["image"], c[0]["image"])


def test_restored_iterator_yields_the_same_batches(tokenizer):
    dataset = pipe.make_dataset(TinySource(), config(), tokenizer, batch_size=4, seed=0,
                                train=True)
    iterator = iter(dataset)
    for _ in range(3):
        next(iterator)
    state = iterator.get_state()
    expected = [next(iterator) for _ in range(3)]
    restored = iter(dataset)
    restored.set_state(state)
    for x, y in zip(expected, (next(restored) for _ in range(3))):
        for key in x:
            np.testing.assert_array_equal(x[key], y[key])


def _example_values(batch_list, cfg):
    """Recover example indices from constant images (no augmentation)."""
    values = []
    for batch in batch_list:
        centre = batch["image"][:, 16, 16, 0] * cfg.pixel_std + cfg.pixel_mean
        values += list(np.round(centre * 255).astype(int))
    return values


def test_processes_read_disjoint_slices_covering_the_data(tokenizer):
    cfg = config(augment=False)
    seen = []
    for process in range(2):
        got = batches(TinySource(24), tokenizer, 3, cfg=cfg, process_index=process,
                      process_count=2)
        seen.append(_example_values(got, cfg))
    assert set(seen[0]).isdisjoint(seen[1])
    assert sorted(seen[0] + seen[1]) == list(range(24))  # one epoch of 24 split over 2 x 12


def test_evaluation_order_is_the_source_order_once(tokenizer):
    cfg = config(augment=False)
    got = list(pipe.make_dataset(TinySource(10), cfg, tokenizer, batch_size=4, seed=0,
                                 train=False))
    assert len(got) == 2  # 10 examples, batches of 4, remainder dropped
    assert _example_values(got, cfg) == list(range(8))


class CountingSource(TinySource):
    """TinySource that counts the examples read from it (by any thread)."""

    def __init__(self, n):
        super().__init__(n)
        self.reads = 0
        self.lock = threading.Lock()

    def __getitem__(self, i):
        with self.lock:
            self.reads += 1
        return super().__getitem__(i)


@pytest.mark.parametrize("train", [True, False])
def test_read_ahead_is_a_few_batches_not_the_whole_source(tokenizer, train):
    # Grain's default buffer (500 examples) would prepare the whole of this source while the
    # consumer holds the first batch (as a trainer does while its first step compiles).
    source = CountingSource(400)
    ahead = pipe.read_options(4).prefetch_buffer_size
    assert ahead < 100
    if train:
        batches_ = pipe.make_dataset(source, config(), tokenizer, batch_size=4, seed=0,
                                     train=True)
    else:
        batches_ = pipe.EvaluationBatches(source, config(), tokenizer, batch_size=4)
    iterator = iter(batches_)
    next(iterator)
    time.sleep(1.0)  # time enough to read all 400
    assert 4 <= source.reads <= 4 + 2 * ahead, source.reads  # Grain's bound is approximate


class FailingSource(TinySource):
    """TinySource whose examples in ``bad`` raise ``error(message naming the file)``."""

    def __init__(self, n=8, bad=(), error=ImageDecodeError):
        super().__init__(n, bad)
        self.error = error

    def __getitem__(self, i):
        if i in self.bad:
            raise self.error(f"/data/{i}.png: broken")
        return super().__getitem__(i)


def test_unreadable_image_is_skipped_not_replaced_and_named(tokenizer):
    cfg = config(augment=False)
    with pytest.warns(UserWarning, match=r"skipping unreadable example 2 .*2\.png"):
        got = list(pipe.make_dataset(TinySource(9, bad={2}), cfg, tokenizer, batch_size=4,
                                     seed=0, train=False))
    # Example 2 is left out, nothing stands in for it: 8 readable examples, each once.
    assert _example_values(got, cfg) == [0, 1, 3, 4, 5, 6, 7, 8]
    assert [b["skipped"].tolist() for b in got] == [[0, 0, 1, 0], [0, 0, 0, 0]]
    assert got[0]["skipped_examples"][2] == (
        "tiny[2]: ImageDecodeError: cannot decode image /data/2.png: truncated")


@pytest.mark.parametrize("error", [
    __import__("json").JSONDecodeError.__name__, "ValueError", "OSError", "KeyError",
    "RuntimeError"])
def test_any_per_example_error_is_skipped_and_named(tokenizer, error):
    """A truncated scene graph (JSONDecodeError), a non-numeric coordinate (ValueError), a
    corrupt record (RuntimeError from the reader), a missing key: each is one bad example."""
    import json

    kind = {"JSONDecodeError": lambda m: json.JSONDecodeError(m, "{", 1)}.get(
        error, getattr(__import__("builtins"), error, None))
    source = FailingSource(8, bad={5}, error=kind)
    cfg = config(augment=False)
    with pytest.warns(UserWarning, match="skipping unreadable example 5 of tiny"):
        got = list(pipe.make_dataset(source, cfg, tokenizer, batch_size=7, seed=0,
                                     train=False))
    assert _example_values(got, cfg) == [0, 1, 2, 3, 4, 6, 7]
    (description,) = [d for d in got[0]["skipped_examples"] if d]
    assert description.startswith(f"tiny[5]: {error}: ") and "/data/5.png" in description


def test_interrupts_are_not_swallowed(tokenizer):
    source = FailingSource(8, bad={1}, error=KeyboardInterrupt)
    with pytest.raises(KeyboardInterrupt):
        list(pipe.make_dataset(source, config(augment=False), tokenizer, batch_size=4, seed=0,
                               train=False))


class OddImageSource(TinySource):
    """Example 3's image is 3-D (a multi-frame DICOM read as a volume): no transform takes it."""

    def __getitem__(self, i):
        example = super().__getitem__(i)
        if i == 3:
            example = dataclasses.replace(example, image=np.zeros((2, 40, 60), np.uint8))
        return example


def test_an_example_that_cannot_be_prepared_is_skipped_and_named(tokenizer):
    cfg = config(augment=False)
    with pytest.warns(UserWarning, match="skipping example 3 of tiny"):
        got = list(pipe.make_dataset(OddImageSource(9), cfg, tokenizer, batch_size=4, seed=0,
                                     train=False))
    assert _example_values(got, cfg) == [0, 1, 2, 4, 5, 6, 7, 8]
    assert got[0]["skipped"].tolist() == [0, 0, 0, 1]
    assert got[0]["skipped_examples"][3] == (
        "tiny[3]: tiny:3: cannot prepare: ValueError: tiny:3: image of shape (2, 40, 60); "
        "expected a grayscale [H, W] array with H, W >= 1")


def test_training_epoch_holds_every_readable_example_once(tokenizer):
    cfg = config(augment=False)
    got = batches(TinySource(24, bad={5, 17}), tokenizer, 2, cfg=cfg, batch_size=11)
    values = _example_values(got, cfg)
    # Two passes' worth of batches: the first 22 readable examples of the shuffled epoch are
    # the 22 readable ones, none twice (a replacement would duplicate its neighbour).
    assert sorted(values) == sorted(set(range(24)) - {5, 17})
    assert sum(int(b["skipped"].sum()) for b in got) == 2
    assert {d for b in got for d in b["skipped_examples"] if d} == {
        "tiny[5]: ImageDecodeError: cannot decode image /data/5.png: truncated",
        "tiny[17]: ImageDecodeError: cannot decode image /data/17.png: truncated"}


def test_a_bad_example_met_at_several_mixture_positions_has_one_name(tokenizer):
    from rmc_jax.data.sources.mixture import Mixture

    small = TinySource(2, bad={1})
    small.name = "small"
    mixture = Mixture([small, TinySource(6)], [1, 1])  # 'small' cycled to 6 positions
    cfg = config(augment=False, max_bad_fraction=0.9)
    got = list(pipe.make_dataset(mixture, cfg, tokenizer, batch_size=9, seed=0, train=False))
    names = [n for b in got for lines in b["skipped_examples"] for n in lines.split("\n") if n]
    assert names == ["small[1]: ImageDecodeError: cannot decode image /data/1.png: truncated"] * 3


def test_restored_iterator_with_bad_examples_yields_the_same_batches(tokenizer):
    dataset = pipe.make_dataset(TinySource(24, bad={3, 10, 20}), config(), tokenizer,
                                batch_size=4, seed=0, train=True)
    iterator = iter(dataset)
    for _ in range(4):
        next(iterator)
    state = iterator.get_state()
    expected = [next(iterator) for _ in range(8)]
    restored = iter(dataset)
    restored.set_state(state)
    for x, y in zip(expected, (next(restored) for _ in range(8))):
        for key in x:
            np.testing.assert_array_equal(x[key], y[key])
    assert sum(int(b["skipped"].sum()) for b in expected) >= 3  # a full epoch's skips
    # The budget's counts resume too: the restored iterator judges as the first one does.
    assert state["bad_examples"]["read"] == 16 + state["bad_examples"]["skipped"]
    assert restored.get_state() == iterator.get_state()


def test_over_the_budget_the_iterator_stops_with_the_list(tokenizer):
    bad = set(range(0, 250, 10))  # 10% of the examples
    iterator = iter(pipe.make_dataset(TinySource(250, bad=bad), config(max_bad_fraction=0.05),
                                      tokenizer, batch_size=4, seed=0, train=True))
    with pytest.warns(UserWarning), pytest.raises(pipe.BadDataError) as error, \
            pipe.closing(iterator):  # closed: no reading ahead after the test
        for _ in range(60):
            next(iterator)
    message = str(error.value)
    assert "data.max_bad_fraction = 5.0%" in message
    named = re.findall(r"tiny\[(\d+)\]: ImageDecodeError: cannot decode image /data/(\d+)\.png",
                       message)
    # Judged after 1 / 5% = 20 examples: every bad one seen by then is listed.
    assert f"({len(named)} distinct)" in message and len(named) >= 2
    assert all(a == b and int(a) in bad for a, b in named)


def test_a_dataset_with_no_readable_example_stops_whatever_the_budget(tokenizer):
    dataset = pipe.make_dataset(TinySource(5, bad=set(range(5))), config(max_bad_fraction=1.0),
                                tokenizer, batch_size=2, seed=0, train=True)
    with pytest.raises(pipe.BadDataError, match=r"150 examples in a row.*\n  tiny\[\d\]"):
        next(iter(dataset))


def test_evaluation_batches_skip_bad_examples_and_pad_the_last_batch(tokenizer):
    cfg = config(augment=False, max_bad_fraction=0.5)
    batches_ = pipe.EvaluationBatches(TinySource(11, bad={2}), cfg, tokenizer, batch_size=4)
    got = list(batches_)
    assert _example_values(got, cfg) == [0, 1, 3, 4, 5, 6, 7, 8, 9, 10, 10, 10]
    assert batches_.count == 10 and batches_.log.skipped == 1
    assert [b["index"].tolist() for b in got][-1] == [9, 10, 10, 10]
    assert list(batches_.log.distinct) == [
        "tiny[2]: ImageDecodeError: cannot decode image /data/2.png: truncated"]
    over = pipe.EvaluationBatches(TinySource(10, bad={2, 7}), config(max_bad_fraction=0.1),
                                  tokenizer, batch_size=4)
    with pytest.raises(pipe.BadDataError,
                       match=r"2 of 10 examples .*\(20\.0% > data.max_bad_fraction = 10\.0%"
                             r".*\n  tiny\[2\]: .*\n  tiny\[7\]"):
        list(over)


def test_skip_log_judges_the_fraction_once_enough_was_read():
    log = pipe.SkipLog(0.01)
    log.add(readable=9_999)
    log.check()
    log = pipe.SkipLog(0.01)
    log.add(readable=45, skipped=["a[1]: x"] * 5)
    log.check()                      # 50 read: too few to judge 1%
    with pytest.raises(pipe.BadDataError, match=r"5 of 50 examples"):
        log.check(complete=True)     # the whole split: judged
    log = pipe.SkipLog(0.01)
    log.add(readable=199, skipped=["a[1]: x"])
    log.check()
    log.add(skipped=["a[2]: y", "a[1]: x"])
    with pytest.raises(pipe.BadDataError, match=r"3 of 202 examples .*\(2 distinct\)"):
        log.check()


def test_bad_examples_through_a_worker_process_are_named(tokenizer):
    dataset = pipe.make_dataset(TinySource(24, bad={7}), config(), tokenizer, batch_size=4,
                                seed=0, train=True)
    worker = iter(pipe.prefetch(dataset, workers=1))
    with pipe.closing(worker):
        got = [next(worker) for _ in range(6)]  # one epoch
    assert [d for b in got for d in b["skipped_examples"] if d] == [
        "tiny[7]: ImageDecodeError: cannot decode image /data/7.png: truncated"]


def test_report_presence_letterbox_content_and_uncaptioned_regions(tokenizer):
    source = TinySource(4)
    example = dataclasses.replace(source[2], report="  \n", captions=("", CAPTIONS[1]))
    out = pipe.prepare_example(example, config(augment=False), tokenizer,
                               tokenizer.with_max_len(12), None)
    assert not out["has_report"] and out["regions_without_caption"] == 1
    assert out["box_mask"].tolist() == [True, False]      # only the captioned box is kept
    np.testing.assert_allclose(out["boxes"][0], [0.55, 0.5 * 21 / 32 + 5 / 32, 0.9,
                                                 0.9 * 21 / 32 + 5 / 32], atol=1e-6)
    # 40 x 60 letterboxed into 32 x 32: 21 rows of image, 5 rows of padding above.
    np.testing.assert_allclose(out["content"], [0, 5 / 32, 1, 26 / 32])
    assert pipe.prepare_example(source[2], config(augment=False), tokenizer,
                                tokenizer.with_max_len(12), None)["has_report"]


def test_sanitize_boxes_clips_and_drops_with_warnings():
    boxes = np.array([[-0.1, 0.2, 0.5, 1.2], [0.3, 0.3, 0.3, 0.6], [0.6, 0.6, 0.2, 0.9],
                      [0.1, 0.1, 0.2, 0.2]], np.float32)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        clipped, keep = transforms.sanitize_boxes(boxes, "src:7")
    messages = " ".join(str(w.message) for w in caught)
    assert "clipped 1 box" in messages and "dropped 2" in messages and "src:7" in messages
    np.testing.assert_allclose(clipped[0], [0.0, 0.2, 0.5, 1.0])
    assert keep.tolist() == [True, False, False, True]


def test_letterbox_maps_boxes_onto_the_same_pixels():
    image = np.zeros((40, 80), np.uint8)
    image[10:20, 40:60] = 255  # a bright block; its box in the original image:
    box = np.array([[40 / 80, 10 / 40, 60 / 80, 20 / 40]], np.float32)
    out, mapped = transforms.letterbox(image, box, 64)
    assert out.shape == (64, 64)
    x0, y0, x1, y1 = (mapped[0] * 64).round().astype(int)
    assert (x0, y0, x1, y1) == (32, 24, 48, 32)  # 80x40 -> 64x32, padded by 16 rows on top
    assert out[y0 + 1:y1 - 1, x0 + 1:x1 - 1].min() > 0.9
    assert out[:16].max() == 0 and out[48:].max() == 0


def test_crop_keeping_regions_never_cuts_a_box():
    rng = np.random.default_rng(0)
    image = np.zeros((100, 120), np.uint8)
    boxes = np.array([[0.05, 0.1, 0.3, 0.35], [0.7, 0.6, 0.95, 0.9]], np.float32)
    for (bx0, by0, bx1, by1) in boxes:
        image[int(by0 * 100):int(by1 * 100), int(bx0 * 120):int(bx1 * 120)] = 200
    for _ in range(20):
        crop, mapped = transforms.crop_keeping_regions(image, boxes, rng, min_scale=0.5)
        h, w = crop.shape
        # The bright pixels of every box survive the crop in full.
        assert (crop == 200).sum() == (image == 200).sum()
        for (x0, y0, x1, y1) in mapped:
            assert 0 <= x0 < x1 <= 1 and 0 <= y0 < y1 <= 1
            inside = crop[int(np.ceil(y0 * h)):int(y1 * h), int(np.ceil(x0 * w)):int(x1 * w)]
            assert inside.size and inside.min() == 200


def test_crop_when_the_regions_reach_the_border_or_fill_the_crop():
    # Regions touching the bottom edge and spanning more than min_scale: the crop's range of
    # positions is a single point, which float rounding used to make an empty interval.
    image = np.zeros((250, 500), np.uint8)
    boxes = np.array([[0.1, 0.1, 0.3, 0.3], [0.7, 0.7, 0.95, 1.0]], np.float32)
    for seed in range(200):
        crop, mapped = transforms.crop_keeping_regions(image, boxes, np.random.default_rng(seed),
                                                       min_scale=0.8)
        assert crop.size and ((mapped >= 0) & (mapped <= 1)).all()
        assert (mapped[:, 2:] - mapped[:, :2] > 0).all()


def test_adjust_intensity_is_contrast_brightness_gamma_then_noise_in_float32():
    """Against a float64 replay of the same draws: contrast x brightness clipped to [0, 1], the
    gamma, Gaussian noise of the given scale, clipped again; the input is left as it was."""
    image = np.random.default_rng(1).random((37, 23)).astype(np.float32)
    before = image.copy()
    out = transforms.adjust_intensity(image, np.random.default_rng(7), noise=0.05)
    replay = np.random.default_rng(7)
    scale, shift = replay.uniform(0.8, 1.2), replay.uniform(-0.1, 0.1)
    exponent = replay.uniform(0.8, 1.2)
    grain = replay.standard_normal(image.shape, dtype=np.float32).astype(np.float64)
    expected = np.clip(np.clip(image.astype(np.float64) * np.float32(scale) + np.float32(shift),
                               0, 1) ** np.float32(exponent) + 0.05 * grain, 0, 1)
    assert out.dtype == np.float32 and out.shape == image.shape
    np.testing.assert_allclose(out, expected, rtol=0, atol=2e-6)
    np.testing.assert_array_equal(image, before)
    assert 0.045 < np.std(out - np.clip(np.clip(image * np.float32(scale) + np.float32(shift),
                                                0, 1) ** np.float32(exponent), 0, 1)) < 0.055


def test_worker_processes_give_the_same_batches(tokenizer):
    dataset = pipe.make_dataset(TinySource(), config(), tokenizer, batch_size=4, seed=0,
                                train=True)
    inline = iter(dataset)
    expected = [next(inline) for _ in range(2)]
    worker = iter(pipe.prefetch(dataset, workers=1))
    for x, y in zip(expected, (next(worker) for _ in range(2))):
        for key in x:
            np.testing.assert_array_equal(x[key], y[key])


def test_prefix_of_a_source_keeps_its_attributes():
    from rmc_jax.data.sources import Prefix

    prefix = Prefix(TinySource(10), 4)
    assert len(prefix) == 4 and prefix.label_names == ("a", "b") and prefix.name == "tiny"
    assert prefix[-1].example_id == "3"
    with pytest.raises(IndexError):
        prefix[4]


# ---------------------------------------------------------------------------------------------
# Horizontal flip with mirrored text
# ---------------------------------------------------------------------------------------------

def test_hflip_mirrors_image_and_boxes():
    image = np.zeros((4, 10), np.uint8)
    image[1:3, 1:3] = 255  # block at x in [0.1, 0.3)
    flipped, boxes = transforms.hflip(image, np.array([[0.1, 0.25, 0.3, 0.75]], np.float32))
    np.testing.assert_array_equal(flipped, image[:, ::-1])
    np.testing.assert_allclose(boxes, [[0.7, 0.25, 0.9, 0.75]], atol=1e-7)
    assert flipped[1:3, 7:9].min() == 255 and boxes.dtype == np.float32


@pytest.mark.parametrize("text, expected", [
    ("small nodule in the right upper zone", "small nodule in the left upper zone"),
    ("Left-sided pleural effusion.", "Right-sided pleural effusion."),
    ("RIGHT PNEUMOTHORAX", "LEFT PNEUMOTHORAX"),
    ("left greater than right effusions", "right greater than left effusions"),
    ("R lower lobe opacity; RLL and LUL nodules", "L lower lobe opacity; LLL and RUL nodules"),
    ("Opacity in the right middle lobe.", "Opacity in the left lingula."),
    ("Lingular atelectasis", "Right middle lobe atelectasis"),
    ("bilateral lower lobe atelectasis", "bilateral lower lobe atelectasis"),
    ("Bibasilar opacities, both lungs clear otherwise.", "Bibasilar opacities, both lungs "
                                                           "clear otherwise."),
    ("enlarged cardiac silhouette", "enlarged cardiac silhouette"),
    ("The catheter was left in place.\nNo effusion.", "The catheter was left in place.\n"
                                                       "No effusion."),
    ("R/L markers", "R/L markers"),  # no anatomy after them: not a side
])
def test_mirror_laterality_swaps_patient_sides_only(text, expected):
    assert transforms.mirror_laterality(text) == expected


FLIP_CAPTIONS = ("small nodule in the right upper zone", "moderate left pleural effusion",
                 "bilateral lower lobe atelectasis", "enlarged cardiac silhouette")


def _flip_example():
    image = np.zeros((40, 60), np.uint8)
    image[8:20, 6:24] = 250  # the right upper zone nodule (on the image's left)
    boxes = np.array([[0.1, 0.2, 0.4, 0.5], [0.6, 0.55, 0.9, 0.9], [0.1, 0.6, 0.9, 0.95],
                      [0.3, 0.4, 0.7, 0.8]], np.float32)
    sides = [schema.side_id(s) for s in ("right", "left", "bilateral")] + [-1]
    return Example(
        example_id="f", image=image, source="tiny",
        report="Findings: small right upper zone nodule. Left effusion. Bilateral atelectasis.",
        labels=np.ones(2, np.float32), label_mask=np.ones(2, bool), boxes=boxes,
        captions=FLIP_CAPTIONS, finding_ids=np.arange(4, dtype=np.int32),
        side_ids=np.array(sides, np.int32))


def _prepare(example, tokenizer, **kw):
    cfg = config(augment=False, max_regions=4, **kw)
    return pipe.prepare_example(example, cfg, tokenizer, tokenizer.with_max_len(12),
                                np.random.default_rng(0))


def test_flip_probability_one_mirrors_image_boxes_text_and_sides(tokenizer):
    example = _flip_example()
    plain = _prepare(example, tokenizer)
    flipped = _prepare(example, tokenizer, flip_probability=1.0)
    boxes = plain["boxes"]  # 40 x 60 letterboxed: padded above and below only
    np.testing.assert_allclose(flipped["boxes"], np.stack(
        [1 - boxes[:, 2], boxes[:, 1], 1 - boxes[:, 0], boxes[:, 3]], 1), atol=1e-6)
    np.testing.assert_allclose(flipped["image"], plain["image"][:, ::-1], atol=1e-5)
    mirrored = [transforms.mirror_laterality(c) for c in FLIP_CAPTIONS]
    assert mirrored[:2] == ["small nodule in the left upper zone",
                            "moderate right pleural effusion"]
    assert mirrored[2:] == list(FLIP_CAPTIONS[2:])  # bilateral and side-less: unchanged
    assert flipped["caption_hash"].tolist() == [pipe.caption_hash(c) for c in mirrored]
    np.testing.assert_array_equal(flipped["caption_hash"][2:], plain["caption_hash"][2:])
    ids, _ = tokenizer.with_max_len(12)(mirrored)
    np.testing.assert_array_equal(flipped["caption_ids"], ids)
    report, _ = tokenizer([model_text(transforms.mirror_laterality(example.report))])
    assert "left upper zone nodule. Right effusion. Bilateral" in \
        transforms.mirror_laterality(example.report)
    np.testing.assert_array_equal(flipped["text_ids"], report[0])
    assert flipped["side_ids"].tolist() == [schema.side_id("left"), schema.side_id("right"),
                                            schema.side_id("bilateral"), -1]
    for key in ("finding_ids", "zone_ids", "size_ids", "labels", "label_mask", "box_mask"):
        np.testing.assert_array_equal(flipped[key], plain[key])


def test_report_sentences_drop_numbers_headers_and_stops_but_keep_decimals():
    text = ("FINDINGS: The lungs are clear.\nIMPRESSION: 1. A 2.8 cm nodule in the left mid "
            "lung. 2. No pneumothorax. Cardiothoracic ratio of approximately 0.65.")
    assert report_sentences(text) == [
        "The lungs are clear", "A 2.8 cm nodule in the left mid lung", "No pneumothorax",
        "Cardiothoracic ratio of approximately 0.65"]
    assert report_sentences("  \n ") == []


def test_sentence_fields_draw_from_the_report_and_list_every_sentence(tokenizer):
    example = _flip_example()
    sentences = report_sentences(model_text(example.report))
    assert len(sentences) == 3
    hashes = [pipe.caption_hash(x) for x in sentences]
    evaluation = pipe.prepare_example(example, config(sentences_per_report=2), tokenizer,
                                      tokenizer.with_max_len(12), None)
    assert evaluation["sentence_hash"].tolist() == hashes[:2]   # the first ones, no draw
    assert evaluation["report_sentence_hash"].tolist() == hashes + [-1] * 13
    ids, mask = tokenizer.with_max_len(20)(sentences[:2])
    np.testing.assert_array_equal(evaluation["sentence_ids"], ids)
    np.testing.assert_array_equal(evaluation["sentence_mask"], mask)
    drawn = set()
    for seed in range(12):
        out = pipe.prepare_example(example, config(augment=False, sentences_per_report=2),
                                   tokenizer, tokenizer.with_max_len(12),
                                   np.random.default_rng(seed))
        pair = out["sentence_hash"].tolist()
        assert len(set(pair)) == 2 and set(pair) <= set(hashes)     # without replacement
        drawn |= set(pair)
    assert drawn == set(hashes)
    # More sentences asked for than the report has: all of them, then padding.
    out = _prepare(example, tokenizer, sentences_per_report=5, max_report_sentences=2)
    assert sorted(out["sentence_hash"][:3].tolist()) == sorted(hashes)
    assert out["sentence_hash"][3:].tolist() == [-1, -1] and not out["sentence_mask"][3:].any()
    assert out["report_sentence_hash"].tolist() == hashes[:2]
    # None asked for: empty fields of fixed shape. A flipped report gives mirrored sentences.
    assert _prepare(example, tokenizer)["sentence_ids"].shape == (0, 20)
    flipped = _prepare(example, tokenizer, sentences_per_report=1, flip_probability=1.0)
    mirrored = report_sentences(model_text(transforms.mirror_laterality(example.report)))
    assert flipped["report_sentence_hash"][:3].tolist() == [pipe.caption_hash(x)
                                                           for x in mirrored] != hashes


def test_hard_negatives_come_from_the_flipped_captions(tokenizer):
    example = _flip_example()
    plain = _prepare(example, tokenizer, negative_kinds=("laterality",), num_negatives=1)
    flipped = _prepare(example, tokenizer, negative_kinds=("laterality",), num_negatives=1,
                       flip_probability=1.0)
    # The laterality negative of a mirrored caption is the original caption, and vice versa.
    np.testing.assert_array_equal(flipped["neg_ids"][:2, 0], plain["caption_ids"][:2])
    np.testing.assert_array_equal(plain["neg_ids"][:2, 0], flipped["caption_ids"][:2])


def test_flip_probability_zero_changes_nothing(tokenizer):
    default = batches(TinySource(), tokenizer, 2)
    zero = batches(TinySource(), tokenizer, 2, cfg=config(flip_probability=0.0))
    for x, y in zip(default, zero):
        for key in x:
            np.testing.assert_array_equal(x[key], y[key])
    example = _flip_example()
    out = _prepare(example, tokenizer, flip_probability=0.0)
    assert out["caption_hash"].tolist() == [pipe.caption_hash(c) for c in FLIP_CAPTIONS]
    assert out["side_ids"].tolist() == example.side_ids.tolist()
    with pytest.raises(ValueError, match="flip_probability"):
        config(flip_probability=1.5)


def test_flip_is_deterministic_under_the_seed_and_eval_never_flips(tokenizer):
    cfg = config(flip_probability=0.5)
    a = batches(TinySource(), tokenizer, 3, cfg=cfg)
    b = batches(TinySource(), tokenizer, 3, cfg=cfg)
    for x, y in zip(a, b):
        for key in x:
            np.testing.assert_array_equal(x[key], y[key])
    right, left = (pipe.caption_hash(c) for c in (CAPTIONS[0], "small nodule in the left "
                                                                 "upper zone"))
    hashes = np.concatenate([x["caption_hash"][:, 0] for x in a])
    assert right in hashes and left in hashes  # some examples flipped, some not
    (evaluation,) = batches(TinySource(), tokenizer, 1, cfg=config(flip_probability=1.0),
                            train=False)
    assert left not in evaluation["caption_hash"]


@pytest.mark.parametrize("sections, expected", [
    ("impression_findings", "Right effusion. Small right nodule."),
    ("findings_impression", "Small right nodule. Right effusion."),
    ("impression", "Right effusion."),
    ("full", "INDICATION: cough. FINDINGS: Small right nodule. IMPRESSION: Right effusion."),
])
def test_report_sections_choose_the_text_the_tower_reads(tokenizer, sections, expected):
    example = dataclasses.replace(
        _flip_example(), report="INDICATION: cough.\nFINDINGS: Small right nodule.\n"
                                "IMPRESSION: Right effusion.")
    out = _prepare(example, tokenizer, report_sections=sections)
    ids, mask = tokenizer([expected])
    np.testing.assert_array_equal(out["text_ids"], ids[0])
    np.testing.assert_array_equal(out["text_mask"], mask[0])
    with pytest.raises(ValueError, match="report_sections"):
        config(report_sections="impression_first")


def test_pipeline_config_from_the_run_config():
    sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
    from configs.base import get_config
    data = get_config("smoke").data
    cfg = pipe.PipelineConfig.from_data_config(data, augment=False)
    assert (cfg.image_size, cfg.max_text_len, cfg.report_sections) == (
        data.image_size, data.max_text_len, data.report_sections)
    assert cfg.augment is False and cfg.num_negatives == data.num_negatives


_DYING_PARENT = """
import os, signal, sys
import grain
from rmc_jax.data import pipeline as pipe

if __name__ == "__main__":
    batches = iter(pipe.prefetch(grain.MapDataset.range(10**6).to_iter_dataset(), workers=2))
    next(batches)
    children = [int(name) for name in os.listdir("/proc") if name.isdigit()
                and open(f"/proc/{name}/stat").read().rsplit(")", 1)[1].split()[1]
                == str(os.getpid())]
    print(" ".join(map(str, children)), flush=True)
    os.kill(os.getpid(), signal.SIGKILL)   # dies without closing its iterator
"""


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


@pytest.mark.skipif(not os.path.isdir("/proc"), reason="reads process parents from /proc")
def test_input_workers_exit_when_the_trainer_dies_without_closing_them(tmp_path):
    """A trainer killed by SIGKILL or the OOM killer cannot close its iterator; its input
    workers (which ignore SIGTERM) must not live on, decoding for nobody."""
    script = tmp_path / "dying_parent.py"
    script.write_text(_DYING_PARENT)
    out, err = tmp_path / "stdout", tmp_path / "stderr"   # files: orphans would hold a pipe open
    with out.open("w") as stdout, err.open("w") as stderr:
        done = subprocess.run([sys.executable, str(script)], stdout=stdout, stderr=stderr,
                              timeout=120, cwd=tmp_path)
    assert done.returncode == -signal.SIGKILL, err.read_text()
    children = [int(pid) for pid in out.read_text().split()]
    assert len(children) >= 2, out.read_text()  # the two workers (and Python's resource tracker)
    deadline = time.monotonic() + 30
    while any(map(_alive, children)) and time.monotonic() < deadline:
        time.sleep(0.2)
    survivors = [pid for pid in children if _alive(pid)]
    for pid in survivors:
        os.kill(pid, signal.SIGKILL)
    assert not survivors, f"input workers outlived their parent: {survivors}"

"""Prepared TFDS copies (tools/prepare_data.py + the tfds_format source): exact round trips of
synthetic and real-format data, reading with tfds.data_source and no TensorFlow, layout errors,
skipped unreadable images, no silent overwrite, and the training pipeline giving the same
batches from a source and from its copy."""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import os
import pickle
import subprocess
import sys
import tempfile
import warnings

import numpy as np
import pytest

from fixtures import cxr_formats_a as fx_a
from fixtures import cxr_formats_b as fx_b
from fixtures import tfds_copies
from rmc_jax.data import pipeline as pipe
from rmc_jax.data import transforms
from rmc_jax.data.sources import SourceError, SourceWarning, get_source, open_source
from rmc_jax.data.sources import tfds_format
from rmc_jax.data.sources.base import ExampleError
from rmc_jax.data.sources.images import ImageDecodeError
from rmc_jax.data.tokenizer import train_wordpiece

_TOOL = os.path.join(os.path.dirname(__file__), os.pardir, "tools", "prepare_data.py")
_spec = importlib.util.spec_from_file_location("prepare_data", _TOOL)
prepare_data = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(prepare_data)


def prepare(source, root, data_dir, **kwargs):
    """Run the tool's ``prepare`` collecting its log and warning lines."""
    lines, warned = [], []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the sources' own box-clipping warnings
        summary = prepare_data.prepare(source, root, str(data_dir), log=lines.append,
                                       warn=warned.append, **kwargs)
    return summary, lines, warned


def assert_same_example(expected, got):
    for field in dataclasses.fields(expected):
        a, b = getattr(expected, field.name), getattr(got, field.name)
        if isinstance(a, np.ndarray):
            assert a.dtype == b.dtype and a.shape == b.shape, field.name
            np.testing.assert_array_equal(a, b, err_msg=field.name)
        else:
            assert a == b, field.name


def quiet(factory, *args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return factory(*args, **kwargs)


@pytest.fixture(scope="module")
def synthetic_copy(tmp_path_factory):
    data_dir = tmp_path_factory.mktemp("tfds")
    summary, lines, warned = prepare("synthetic", "", data_dir, splits=("train", "test"),
                                     shards=2, size=6)
    return data_dir, summary, lines, warned


def test_synthetic_round_trip_is_exact(synthetic_copy):
    data_dir, summary, lines, warned = synthetic_copy
    assert not warned and any("skipped 0 unreadable" in line for line in lines)
    path = data_dir / "rmc_synthetic" / tfds_format.VERSION
    assert summary["path"] == str(path)
    metadata = json.loads((path / "metadata.json").read_text())
    assert metadata["source"] == "synthetic" and metadata["skipped"] == {"train": 0, "test": 0}
    assert summary["shards"]["train"] == ["rmc_synthetic-train.array_record-00000-of-00002",
                                          "rmc_synthetic-train.array_record-00001-of-00002"]
    for split in ("train", "test"):
        expected = open_source("synthetic", "", split, size=6)
        copy = open_source("tfds:rmc_synthetic", str(data_dir), split)
        assert isinstance(copy, tfds_format.TfdsSource) and len(copy) == 6
        assert copy.name == "synthetic" and copy.label_names == tuple(expected.label_names)
        for i in range(6):
            assert_same_example(expected[i], copy[i])
        assert copy.texts(4) == expected.texts(4)
    # Readers are opened again after pickling (Grain worker processes get the source pickled).
    copy = pickle.loads(pickle.dumps(open_source("tfds:rmc_synthetic", str(data_dir), "train")))
    assert_same_example(open_source("synthetic", "", "train", size=6)[-1], copy[-1])
    # Split aliases and TFDS slices.
    assert len(get_source("tfds:rmc_synthetic", str(data_dir), "test[2:5]")) == 3
    assert_same_example(expected[3], get_source("tfds:rmc_synthetic", str(data_dir),
                                                "test[2:5]")[1])


def test_plain_tfds_reads_the_copy_without_tensorflow(synthetic_copy):
    """What a big_vision-style user does, in a process that never imports rmc_jax's writer."""
    data_dir, _, _, _ = synthetic_copy
    script = (
        "import json, sys, tensorflow_datasets as tfds\n"
        f"ds = tfds.data_source('rmc_synthetic', data_dir={str(data_dir)!r})\n"
        "ex = ds['train'][1]\n"
        "print(json.dumps({'splits': sorted(ds), 'train': len(ds['train']), "
        "'image': [list(ex['image'].shape), str(ex['image'].dtype)], "
        "'example_id': ex['example_id'].decode(), 'bbox': [list(map(float, b)) for b in "
        "ex['regions']['bbox']], 'tensorflow': 'tensorflow' in sys.modules}))\n")
    out = json.loads(subprocess.run([sys.executable, "-c", script], capture_output=True,
                                    text=True, check=True).stdout.splitlines()[-1])
    expected = open_source("synthetic", "", "train", size=6)[1]
    assert out == {"splits": ["test", "train"], "train": 6,
                   "image": [[*expected.image.shape, 1], "uint8"],
                   "example_id": expected.example_id,
                   "bbox": expected.boxes[:, [1, 0, 3, 2]].tolist(),  # TFDS's ymin, xmin, ...
                   "tensorflow": False}


def test_real_format_round_trip_is_exact_and_splits_follow_the_source(tmp_path):
    root = str(tmp_path / "nih")
    fx_b.write_nih(root, "2017")
    _, lines, warned = prepare("nih_cxr14", root, tmp_path / "tfds", name="nih", shards=2)
    assert not warned
    assert any(line.startswith("validation: not written") for line in lines)  # NIH has none
    for split in ("train", "test"):
        expected = quiet(get_source, "nih_cxr14", root, split)
        copy = get_source("tfds:nih", str(tmp_path / "tfds"), split)
        assert len(copy) == len(expected) == 2 and copy.label_names == expected.label_names
        for i in range(len(expected)):
            assert_same_example(expected[i], copy[i])
    with pytest.raises(SourceError, match=r"split 'val' \('validation'\) is not in .*nih.1\.0\.0.*"
                                          r"\['test', 'train'\]"):
        get_source("tfds:nih", str(tmp_path / "tfds"), "val")


def test_max_size_shrinks_images_and_keeps_boxes(tmp_path, capsys):
    root, images = str(tmp_path / "ms-cxr"), str(tmp_path / "mimic-cxr-jpg")
    fx_a.write_ms_cxr(root, images_root=images)  # 500 x 250 JPGs on disk
    assert prepare_data.main(["--source", "ms_cxr", "--root", root, "--data_dir",
                              str(tmp_path / "tfds"), "--splits", "train,test", "--max_size",
                              "100", "--option", f"images_root={images}"]) == 0
    assert "train: 1 examples" in capsys.readouterr().out
    expected = get_source("ms_cxr", root, "train", images_root=images)[0]
    got = get_source("tfds:rmc_ms_cxr", str(tmp_path / "tfds"), "train")[0]
    assert expected.image.shape == (250, 500) and got.image.shape == (50, 100)
    np.testing.assert_array_equal(got.boxes, expected.boxes)
    assert got.captions == expected.captions and got.example_id == expected.example_id


def test_names_and_layout_errors(tmp_path, synthetic_copy):
    with pytest.raises(ValueError, match="snake_case"):
        prepare("synthetic", "", tmp_path, name="Bad-Name", size=1)
    with pytest.raises(ValueError, match="TFDS catalog.*rmc_mnist"):
        prepare("synthetic", "", tmp_path, name="mnist", size=1)
    missing = tmp_path / "nowhere"
    with pytest.raises(SourceError, match=f"{missing}.rmc_synthetic.*expected a TFDS dataset"):
        open_source("tfds:rmc_synthetic", str(missing), "train")
    with pytest.raises(SourceError, match="no TFDS data_dir"):
        get_source("tfds:rmc_synthetic", "", "train")
    data_dir, _, _, _ = synthetic_copy
    broken = tmp_path / "broken" / "rmc_synthetic" / tfds_format.VERSION
    broken.mkdir(parents=True)
    source = data_dir / "rmc_synthetic" / tfds_format.VERSION
    for name in os.listdir(source):
        if name != "rmc_synthetic-train.array_record-00001-of-00002":
            (broken / name).write_bytes((source / name).read_bytes())
    get_source("tfds:rmc_synthetic", str(tmp_path / "broken"), "test")  # the test split is whole
    with pytest.raises(SourceError, match=r"shard file not found: .*broken.*train.array_record-"
                                          r"00001-of-00002"):
        get_source("tfds:rmc_synthetic", str(tmp_path / "broken"), "train")
    (broken / "metadata.json").write_text(json.dumps({"label_names": []}))
    with pytest.raises(SourceError, match="metadata.json has no 'source'"):
        get_source("tfds:rmc_synthetic", str(tmp_path / "broken"), "test")
    (broken / "dataset_info.json").write_text("{not json")
    with pytest.raises(SourceError, match="cannot read the TFDS dataset"):
        get_source("tfds:rmc_synthetic", str(tmp_path / "broken"), "test")


def test_corrupt_records_raise_errors_naming_shard_and_record(tmp_path):
    source = open_source("synthetic", "", "train", size=3)
    path = tfds_copies.write_copy(source, str(tmp_path), "rmc_cut")
    shard = tfds_copies.shards(path)[0]
    tfds_copies.cut_pngs(shard, 200, records={1})
    copy = get_source("tfds:rmc_cut", str(tmp_path), "train")
    assert_same_example(source[0], copy[0])
    assert_same_example(source[2], copy[2])
    assert copy.texts(1) == source.texts(1)  # the texts need no image
    with pytest.raises(ImageDecodeError, match=f"{shard} record 1: cannot decode"):
        copy[1]
    tfds_copies.flip_bytes(shard)
    with pytest.raises(ExampleError, match=f"{shard} record 0: cannot read the record"):
        get_source("tfds:rmc_cut", str(tmp_path), "train")[0]


def test_unreadable_image_is_skipped_with_a_warning_and_counted(tmp_path):
    root = tmp_path / "nih"
    fx_b.write_nih(str(root), "2017", image_layout="flat")
    (root / "images" / "00000001_001.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    summary, lines, warned = prepare("nih_cxr14", str(root), tmp_path / "tfds",
                                     splits=("train",))
    assert len(warned) == 1 and "00000001_001.png" in warned[0]
    assert any("skipped 1 unreadable" in line for line in lines)
    assert summary["skipped"] == {"train": 1}
    path = tmp_path / "tfds" / "rmc_nih_cxr14" / tfds_format.VERSION
    assert json.loads((path / "metadata.json").read_text())["skipped"] == {"train": 1}
    copy = get_source("tfds:rmc_nih_cxr14", str(tmp_path / "tfds"), "train")
    assert len(copy) == 1
    assert_same_example(quiet(get_source, "nih_cxr14", str(root), "train")[0], copy[0])


def test_an_invalid_example_is_skipped_with_a_warning(tmp_path):
    class Listed(list):
        name, label_names = "listed", ("a",)

    good = open_source("synthetic", "", "train", size=1)[0]
    good = dataclasses.replace(good, labels=good.labels[:1], label_mask=good.label_mask[:1])
    bad = dataclasses.replace(good, example_id="bad", boxes=good.boxes + 2.0)  # outside [0, 1]
    warned = []
    summary = tfds_format.write("rmc_listed", str(tmp_path), {"val": Listed([good, bad, good])},
                                log=lambda _: None, warn=warned.append)
    assert summary["skipped"] == {"validation": 1} and summary["num_examples"] == {
        "validation": 2}
    assert len(warned) == 1 and "invalid example 1 of validation" in warned[0]
    copy = get_source("tfds:rmc_listed", str(tmp_path), "validate")
    assert copy.name == "listed" and copy.label_names == ("a",)
    assert_same_example(good, copy[1])


def test_writing_a_copy_leaves_no_temporary_directory(tmp_path, monkeypatch):
    """TFDS looks a new builder's name up in its public bucket through a temporary directory
    it never removes; rmc_jax copies skip the lookup, so a write leaves the temp dir as it was."""
    temp = tmp_path / "temp"
    temp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(temp))
    summary = tfds_format.write("rmc_one", str(tmp_path / "tfds"),
                                {"train": open_source("synthetic", "", "train", size=1)},
                                log=lambda _: None)
    assert summary["num_examples"] == {"train": 1}
    assert sorted(os.listdir(temp)) == []


def test_refuses_to_overwrite_unless_asked(tmp_path, capsys):
    data_dir = tmp_path / "tfds"
    prepare("synthetic", "", data_dir, splits=("test",), size=2)
    with pytest.raises(FileExistsError, match="rmc_synthetic.1.0.0 exists.*--overwrite"):
        prepare("synthetic", "", data_dir, splits=("test",), size=3)
    assert prepare_data.main(["--source", "synthetic", "--data_dir", str(data_dir), "--splits",
                              "test", "--size", "3"]) == 1
    assert "--overwrite" in capsys.readouterr().err
    (data_dir / "notes.txt").write_text("kept")
    prepare("synthetic", "", data_dir, name="other", splits=("test",), size=1)
    prepare("synthetic", "", data_dir, splits=("train",), size=3, shards=2, overwrite=True)
    assert sorted(os.listdir(data_dir)) == ["notes.txt", "other", "rmc_synthetic"]
    assert len(get_source("tfds:rmc_synthetic", str(data_dir), "train")) == 3
    with pytest.raises(SourceError, match=r"split 'test' is not in .*\['train'\]"):
        get_source("tfds:rmc_synthetic", str(data_dir), "test")  # the old copy is gone
    assert len(get_source("tfds:other", str(data_dir), "test")) == 1


def test_config_names_reach_the_copy_alone_and_in_a_mixture(synthetic_copy):
    """data.train / data.eval = 'tfds:NAME' with data.root = the data_dir (open_source is what
    training and evaluation call)."""
    data_dir, _, _, _ = synthetic_copy
    expected = open_source("synthetic", "", "test", size=6)
    alone = open_source("tfds:rmc_synthetic", str(data_dir), "test", size=4)
    assert len(alone) == 4 and alone.texts(3) == expected.texts(3)
    mixed = open_source("tfds:rmc_synthetic:3,synthetic:1", f"tfds:rmc_synthetic={data_dir}",
                        "test", size=2)
    assert len(mixed) == 8 and {mixed[i].source for i in range(8)} == {"synthetic"}
    with pytest.raises(ValueError, match="tfds:rmc_synthetic takes no option"):
        open_source("tfds:rmc_synthetic", str(data_dir), "test",
                    options="tfds:rmc_synthetic.views=all")
    with pytest.raises(ValueError, match="unknown dataset 'nope'.*'tfds:NAME'"):
        open_source("nope", "", "test")


def test_pipeline_batches_from_the_copy_equal_the_source(synthetic_copy):
    data_dir, _, _, _ = synthetic_copy
    source = open_source("synthetic", "", "train", size=6)
    copy = open_source("tfds:rmc_synthetic", str(data_dir), "train")
    texts = [t for i in range(6) for t in (source[i].report, *source[i].captions)]
    tokenizer = train_wordpiece(texts, vocab_size=300, max_len=32)
    config = pipe.PipelineConfig(image_size=32, max_regions=3, num_negatives=2,
                                 max_text_len=32, max_caption_len=12)
    for train in (True, False):
        batches = []
        for data in (source, copy):
            iterator = iter(pipe.make_dataset(data, config, tokenizer, batch_size=3, seed=1,
                                              train=train))
            batches.append([next(iterator) for _ in range(2)])
        for a, b in zip(*batches):
            assert a.keys() == b.keys()
            for key in a:
                np.testing.assert_array_equal(a[key], b[key], err_msg=key)


def test_worker_processes_read_the_copy(synthetic_copy):
    data_dir, _, _, _ = synthetic_copy
    copy = open_source("tfds:rmc_synthetic", str(data_dir), "test")
    tokenizer = train_wordpiece([copy.texts(i)[0] for i in range(6)], vocab_size=200,
                                max_len=16)
    config = pipe.PipelineConfig(image_size=32, max_regions=2, num_negatives=1, max_text_len=16,
                                 max_caption_len=8)
    dataset = pipe.make_dataset(copy, config, tokenizer, batch_size=2, seed=0, train=True)
    inline = iter(dataset)
    copy[0]  # readers open in this process: they must not travel to the worker
    worker = iter(pipe.prefetch(dataset, workers=1))
    for _ in range(2):
        a, b = next(inline), next(worker)
        for key in a:
            np.testing.assert_array_equal(a[key], b[key], err_msg=key)


# ---------------------------------------------------------------------------------------------
# Codecs and the training resolution
# ---------------------------------------------------------------------------------------------

JPEG_TOLERANCE = dict(mean=2.0, psnr=40.0)  # quality 95: mean |error| <= 2 levels, >= 40 dB


@pytest.mark.parametrize("codec", tfds_format.CODECS)
def test_each_codec_round_trips(tmp_path, codec):
    """raw and png give the pixels back exactly, jpeg (quality 95) within JPEG_TOLERANCE; every
    other field exactly. The copy says how it was stored, and plain TFDS reads its images as
    uint8 [H, W, 1] (a raw image as TFDS's own Tensor feature)."""
    summary, _, warned = prepare("synthetic", "", tmp_path, splits=("train",), size=4,
                                 codec=codec)
    assert not warned and summary["codec"] == codec
    copy = get_source("tfds:rmc_synthetic", str(tmp_path), "train")
    assert copy.codec == codec and copy.image_size == 0
    metadata = json.loads(open(os.path.join(summary["path"], "metadata.json")).read())
    assert metadata["codec"] == codec and metadata["settings"]["codec"] == codec
    expected = open_source("synthetic", "", "train", size=4)
    for i in range(4):
        a, b = expected[i], copy[i]
        if codec == "jpeg":
            assert b.image.dtype == np.uint8 and b.image.shape == a.image.shape
            error = np.abs(a.image.astype(np.float64) - b.image)
            psnr = 10 * np.log10(255.0 ** 2 / max(np.mean(error ** 2), 1e-12))
            assert error.mean() <= JPEG_TOLERANCE["mean"] and psnr >= JPEG_TOLERANCE["psnr"], (
                error.mean(), psnr)
            b = dataclasses.replace(b, image=a.image)
        assert_same_example(a, b)
    import tensorflow_datasets as tfds

    plain = tfds.data_source("rmc_synthetic", data_dir=str(tmp_path))["train"][2]["image"]
    assert plain.dtype == np.uint8 and plain.shape == (*expected[2].image.shape, 1)
    if codec != "jpeg":
        np.testing.assert_array_equal(plain[..., 0], expected[2].image)


def test_preparing_at_the_training_resolution_leaves_the_pipeline_only_decoding(tmp_path):
    """--image_size resizes as the pipeline's letterbox would: the copy's images have the
    letterbox's size (no padding), and evaluation batches from the copy equal those from the
    source at that resolution, image, boxes and content box included."""
    root, images = str(tmp_path / "ms-cxr"), str(tmp_path / "mimic-cxr-jpg")
    fx_a.write_ms_cxr(root, images_root=images)  # 500 x 250 JPGs on disk
    assert prepare_data.main(["--source", "ms_cxr", "--root", root, "--data_dir",
                              str(tmp_path / "tfds"), "--splits", "train", "--image_size", "64",
                              "--option", f"images_root={images}"]) == 0
    source = get_source("ms_cxr", root, "train", images_root=images)
    copy = get_source("tfds:rmc_ms_cxr", str(tmp_path / "tfds"), "train")
    assert copy.codec == "raw" and copy.image_size == 64  # auto: raw at a training resolution
    got = copy[0]
    assert got.image.shape == (32, 64)
    np.testing.assert_array_equal(got.image, transforms.fit_long_side(source[0].image, 64))
    np.testing.assert_array_equal(got.boxes, source[0].boxes)
    texts = [t for e in (source[0],) for t in (e.report, *e.captions)]
    tokenizer = train_wordpiece(texts, vocab_size=200, max_len=32)
    config = pipe.PipelineConfig(image_size=64, max_regions=3, num_negatives=2,
                                 max_text_len=32, max_caption_len=12)
    a, b = (next(iter(pipe.make_dataset(data, config, tokenizer, batch_size=1, seed=0,
                                        train=False))) for data in (source, copy))
    for key in a:
        np.testing.assert_array_equal(a[key], b[key], err_msg=key)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # read at its resolution or below: nothing to say
        open_source("tfds:rmc_ms_cxr", str(tmp_path / "tfds"), "train", image_size=64)
    with pytest.warns(SourceWarning, match=r"tfds:rmc_ms_cxr: the copy in .* was prepared at 64 "
                                           r"px .* read for 128 px: every image is enlarged"):
        open_source("tfds:rmc_ms_cxr", str(tmp_path / "tfds"), "train", image_size=128)
    with pytest.raises(SystemExit):
        prepare_data.parse_args(["--source", "synthetic", "--data_dir", "x", "--image_size",
                                 "64", "--max_size", "100"])


# ~1 min; the CLI trains on a prepared copy in test_bad_data_cli (tfds: row), and copies equal
# their source here
@pytest.mark.slow
def test_training_on_prepared_synthetic_records_through_the_cli(tmp_path):
    """The embedded synthetic data pre-rendered at the smoke model's resolution, then the
    command line trains and evaluates on the records (tfds:NAME, data.root = data_dir)."""
    data_dir = str(tmp_path / "tfds")
    assert prepare_data.main(["--source", "synthetic", "--data_dir", data_dir, "--splits",
                              "train,test", "--size", "24", "--image_size", "32",
                              "--shards", "2"]) == 0
    assert get_source("tfds:rmc_synthetic", data_dir, "test").codec == "raw"
    root = os.path.join(os.path.dirname(__file__), os.pardir)
    result = subprocess.run(
        [sys.executable, "-m", "rmc_jax.main", "--config=configs/base.py:smoke",
         f"--workdir={tmp_path / 'run'}", "--config.progress_bar=off",
         "--config.total_steps=4", "--config.checkpoint_every=100",
         "--config.data.train=tfds:rmc_synthetic", f"--config.data.root={data_dir}",
         "--config.data.eval=tfds:rmc_synthetic", f"--config.data.eval_root={data_dir}",
         "--config.evals.report=False"],
        cwd=root, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]
    lines = [json.loads(line) for line in open(tmp_path / "run" / "metrics.jsonl")]
    assert lines[-1]["step"] == 4 and lines[-1]["bad_examples_total"] == 0
    results = json.load(open(tmp_path / "run" / "eval" / "results.json"))
    assert results["eval/examples"] == 16 and "retrieval/image_to_report_R@1" in results

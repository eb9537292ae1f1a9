"""ArrayRecord copies (tools/prepare_data.py + the array_record source): exact round trips of
synthetic and real-format data, layout errors, skipped unreadable images, no silent overwrite,
and the training pipeline giving the same batches from a source and from its copy."""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import os
import pickle
import warnings

import numpy as np
import pytest

from fixtures import cxr_formats_a as fx_a
from fixtures import cxr_formats_b as fx_b
from rmc_jax.data import pipeline as pipe
from rmc_jax.data.sources import SourceError, get_source, open_source
from rmc_jax.data.sources import array_record as ar
from rmc_jax.data.sources.images import ImageDecodeError
from rmc_jax.data.tokenizer import train_wordpiece

_TOOL = os.path.join(os.path.dirname(__file__), os.pardir, "tools", "prepare_data.py")
_spec = importlib.util.spec_from_file_location("prepare_data", _TOOL)
prepare_data = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(prepare_data)


def prepare(source, root, out, **kwargs):
    """Run the tool's ``prepare`` collecting its log and warning lines."""
    lines, warned = [], []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the sources' own box-clipping warnings
        prepare_data.prepare(source, root, str(out), log=lines.append, warn=warned.append,
                             **kwargs)
    return lines, warned


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
    out = tmp_path_factory.mktemp("synthetic-ar")
    lines, warned = prepare("synthetic", "", out, splits=("train", "test"), shards=2, size=6)
    return out, lines, warned


def test_synthetic_round_trip_is_exact(synthetic_copy):
    out, lines, warned = synthetic_copy
    assert not warned and any("skipped 0 unreadable" in line for line in lines)
    metadata = json.loads((out / "metadata.json").read_text())
    assert metadata["source"] == "synthetic" and metadata["version"] == ar.VERSION
    assert [s["file"] for s in metadata["splits"]["train"]["shards"]] == [
        "train-00000-of-00002.array_record", "train-00001-of-00002.array_record"]
    assert [s["num_examples"] for s in metadata["splits"]["train"]["shards"]] == [3, 3]
    for split in ("train", "test"):
        expected = open_source("synthetic", "", split, size=6)
        copy = open_source("array_record", str(out), split)
        assert isinstance(copy, ar.ArrayRecordSource) and len(copy) == 6
        assert copy.name == "synthetic" and copy.label_names == tuple(expected.label_names)
        for i in range(6):
            assert_same_example(expected[i], copy[i])
        assert copy.texts(4) == expected.texts(4)
    # Readers are opened again after pickling (Grain worker processes get the source pickled).
    copy = pickle.loads(pickle.dumps(open_source("array_record", str(out), "train")))
    assert_same_example(open_source("synthetic", "", "train", size=6)[-1], copy[-1])


def test_real_format_round_trip_is_exact_and_splits_follow_the_source(tmp_path):
    root = str(tmp_path / "nih")
    fx_b.write_nih(root, "2017")
    lines, warned = prepare("nih_cxr14", root, tmp_path / "out", shards=2)
    assert not warned
    assert any(line.startswith("validate: not written") for line in lines)  # NIH has none
    for split in ("train", "test"):
        expected = quiet(get_source, "nih_cxr14", root, split)
        copy = get_source("array_record", str(tmp_path / "out"), split)
        assert len(copy) == len(expected) == 2 and copy.label_names == expected.label_names
        for i in range(len(expected)):
            assert_same_example(expected[i], copy[i])
    with pytest.raises(SourceError, match=r"split 'validation' is not in .*metadata\.json.*"
                                          r"\['test', 'train'\]"):
        get_source("array_record", str(tmp_path / "out"), "validation")


def test_max_size_shrinks_images_and_keeps_boxes(tmp_path, capsys):
    root, images = str(tmp_path / "ms-cxr"), str(tmp_path / "mimic-cxr-jpg")
    fx_a.write_ms_cxr(root, images_root=images)  # 500 x 250 JPGs on disk
    assert prepare_data.main(["--source", "ms_cxr", "--root", root, "--out",
                              str(tmp_path / "out"), "--splits", "train,test", "--max_size",
                              "100", "--option", f"images_root={images}"]) == 0
    assert "train: 1 examples" in capsys.readouterr().out
    expected = get_source("ms_cxr", root, "train", images_root=images)[0]
    got = get_source("array_record", str(tmp_path / "out"), "train")[0]
    assert expected.image.shape == (250, 500) and got.image.shape == (50, 100)
    np.testing.assert_array_equal(got.boxes, expected.boxes)
    assert got.captions == expected.captions and got.example_id == expected.example_id


def test_layout_errors_name_the_path(tmp_path, synthetic_copy):
    missing = tmp_path / "nowhere"
    with pytest.raises(SourceError, match=f"{missing}.*metadata.json"):
        open_source("array_record", str(missing), "train")
    (tmp_path / "empty").mkdir()
    with pytest.raises(SourceError, match=r"empty.metadata\.json"):
        get_source("array_record", str(tmp_path / "empty"), "train")
    out, _, _ = synthetic_copy
    broken = tmp_path / "broken"
    broken.mkdir()
    for name in os.listdir(out):
        if name != "train-00001-of-00002.array_record":
            (broken / name).write_bytes((out / name).read_bytes())
    get_source("array_record", str(broken), "test")  # the test split is whole
    with pytest.raises(SourceError, match=r"shard file not found: .*broken.train-00001-of-00002"):
        get_source("array_record", str(broken), "train")
    (broken / "metadata.json").write_text(json.dumps({"format": "something else"}))
    with pytest.raises(SourceError, match="format"):
        get_source("array_record", str(broken), "test")


def test_corrupt_record_raises_image_decode_error():
    example = open_source("synthetic", "", "train", size=1)[0]
    record = ar.encode_example(example)
    assert_same_example(example, ar.decode_example(record))
    with pytest.raises(ImageDecodeError, match="shard-7"):
        ar.decode_example(record[:-200], "shard-7")


def test_unreadable_image_is_skipped_with_a_warning_and_counted(tmp_path):
    root = tmp_path / "nih"
    fx_b.write_nih(str(root), "2017", image_layout="flat")
    (root / "images" / "00000001_001.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    lines, warned = prepare("nih_cxr14", str(root), tmp_path / "out", splits=("train",))
    assert len(warned) == 1 and "00000001_001.png" in warned[0]
    assert any("skipped 1 unreadable" in line for line in lines)
    metadata = json.loads((tmp_path / "out" / "metadata.json").read_text())
    assert metadata["splits"]["train"]["skipped"] == 1
    copy = get_source("array_record", str(tmp_path / "out"), "train")
    assert len(copy) == 1
    assert_same_example(quiet(get_source, "nih_cxr14", str(root), "train")[0], copy[0])


def test_refuses_to_overwrite_unless_asked(tmp_path, capsys):
    out = tmp_path / "out"
    prepare("synthetic", "", out, splits=("test",), size=2)
    with pytest.raises(FileExistsError, match="not empty.*--overwrite"):
        prepare("synthetic", "", out, splits=("test",), size=3)
    assert prepare_data.main(["--source", "synthetic", "--out", str(out), "--splits", "test",
                              "--size", "3"]) == 1
    assert "--overwrite" in capsys.readouterr().err
    (out / "notes.txt").write_text("kept")
    prepare("synthetic", "", out, splits=("train",), size=3, shards=2, overwrite=True)
    assert sorted(os.listdir(out)) == ["metadata.json", "notes.txt",
                                       "train-00000-of-00002.array_record",
                                       "train-00001-of-00002.array_record"]
    assert len(get_source("array_record", str(out), "train")) == 3


def test_pipeline_batches_from_the_copy_equal_the_source(synthetic_copy):
    out, _, _ = synthetic_copy
    source = open_source("synthetic", "", "train", size=6)
    copy = open_source("array_record", str(out), "train")
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
    out, _, _ = synthetic_copy
    copy = open_source("array_record", str(out), "test")
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

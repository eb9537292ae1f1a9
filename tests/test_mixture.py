"""Weighted mixtures of sources: proportions, coverage, the shared label space, config parsing."""

import collections
import os
import sys

import numpy as np
import pytest

sys.path.insert(0, os.path.dirname(__file__))
from fixtures import cxr_formats_a as fx  # noqa: E402

from rmc_jax.data.schema import Example  # noqa: E402
from rmc_jax.data.sources import open_source  # noqa: E402
from rmc_jax.data.sources.mixture import Mixture, parse_mixture, roots_for  # noqa: E402


class Toy:
    """A source of ``n`` examples labelled with ``label_names`` (labels = example number)."""

    def __init__(self, name, n, label_names):
        self.name, self.n, self.label_names = name, n, tuple(label_names)

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        c = len(self.label_names)
        return Example(example_id=f"{self.name}{i}", image=np.zeros((4, 4), np.uint8),
                       report="", labels=np.full(c, i % 2, np.float32),
                       label_mask=np.ones(c, bool), boxes=np.zeros((0, 4), np.float32),
                       captions=[], source=self.name)


def test_proportions_and_every_example_per_epoch():
    small, big = Toy("a", 5, ["x"]), Toy("b", 40, ["x"])
    mix = Mixture([small, big], [1.0, 1.0])
    # Equal weights: the 5-example source is cycled to match the 40-example one.
    assert len(mix) == 80
    drawn = collections.Counter(mix[i].example_id for i in range(len(mix)))
    assert {f"a{i}" for i in range(5)} | {f"b{i}" for i in range(40)} == set(drawn)
    assert sum(v for k, v in drawn.items() if k.startswith("a")) == 40
    assert all(drawn[f"a{i}"] == 8 for i in range(5))

    tilted = Mixture([small, big], [3.0, 1.0])  # 3:1 towards the small source
    sources = collections.Counter(tilted[i].source for i in range(len(tilted)))
    assert sources["b"] == 40 and sources["a"] == 120
    assert tilted[-1].example_id == tilted[len(tilted) - 1].example_id
    with pytest.raises(IndexError):
        tilted[len(tilted)]


def test_union_label_space_masks_unknown_classes():
    mix = Mixture([Toy("a", 2, ["edema", "nodule"]), Toy("b", 2, ["nodule", "mass"])], [1, 1])
    assert mix.label_names == ("edema", "nodule", "mass")
    first_b = next(mix[i] for i in range(len(mix)) if mix[i].source == "b" and
                   mix[i].example_id == "b1")
    np.testing.assert_array_equal(first_b.label_mask, [False, True, True])
    np.testing.assert_array_equal(first_b.labels, [0, 1, 1])


def test_parse_errors_name_the_entry():
    assert parse_mixture("ms_cxr:1, mimic_cxr:3") == [("ms_cxr", 1.0), ("mimic_cxr", 3.0)]
    assert parse_mixture("synthetic") == [("synthetic", 1.0)]
    assert parse_mixture("tfds:a:2,tfds:b") == [("tfds:a", 2.0), ("tfds:b", 1.0)]
    for bad in ("a:0", "a:-1", "a:x", ":2", "a,a", "tfds:", "tfds:a:x"):
        with pytest.raises(ValueError, match="mixture"):
            parse_mixture(bad)
    assert roots_for(["a", "b"], "/d") == {"a": "/d", "b": "/d"}
    assert roots_for(["a", "synthetic"], "a=/x") == {"a": "/x", "synthetic": ""}
    with pytest.raises(ValueError, match="no path for b"):
        roots_for(["a", "b"], "a=/x")


def test_open_source_mixes_real_format_and_synthetic(tmp_path):
    fx.write_ms_cxr(str(tmp_path / "ms"))
    mix = open_source("ms_cxr:1,synthetic:1", f"ms_cxr={tmp_path / 'ms'}", "train", size=4,
                      image_size=128)
    assert isinstance(mix, Mixture) and len(mix) == 8
    assert {mix[i].source for i in range(len(mix))} == {"ms_cxr", "synthetic"}
    assert len(mix.label_names) == len(set(mix.label_names))
    assert all(len(mix[i].labels) == len(mix.label_names) for i in range(len(mix)))


def test_tokenizer_corpus_reaches_every_part_of_a_mixture():
    from rmc_jax import train

    class Texts(Toy):
        def __getitem__(self, i):
            raise AssertionError("the corpus reads texts, never images")

        def texts(self, i):
            return f"report from {self.name}", ()

    mix = Mixture([Texts("a", 50, ["x"]), Texts("b", 50, ["x"])], [1, 1])
    assert set(train.corpus(mix, limit=10)) == {"report from a", "report from b"}


def test_source_options_reach_the_datasets_that_take_them(tmp_path):
    from rmc_jax.data.sources import parse_options

    assert parse_options("images_root=/x, ms_cxr.split_csv=/y,box_space=1024.0") == {
        "": {"images_root": "/x", "box_space": 1024.0}, "ms_cxr": {"split_csv": "/y"}}
    # MS-CXR's CSV in one place, its MIMIC-CXR-JPG images in another.
    fx.write_ms_cxr(str(tmp_path / "csv"), images_root=str(tmp_path / "jpg"))
    source = open_source("ms_cxr", str(tmp_path / "csv"), "train",
                         options=f"images_root={tmp_path / 'jpg'}")
    assert source[0].image.size
    # In a mixture each dataset takes the options it knows; synthetic ignores images_root.
    mix = open_source("ms_cxr,synthetic", f"ms_cxr={tmp_path / 'csv'}", "train", size=2,
                      options=f"images_root={tmp_path / 'jpg'}")
    assert {mix[i].source for i in range(len(mix))} == {"ms_cxr", "synthetic"}
    for bad, message in (("image_root=/x", "takes no option"), ("nih.x=1", "unknown datasets"),
                         ("=3", "bad data.source_options")):
        with pytest.raises(ValueError, match=message):
            open_source("ms_cxr", str(tmp_path / "csv"), "train", options=bad)
    with pytest.raises(ValueError, match="no dataset in"):
        open_source("ms_cxr,synthetic", f"ms_cxr={tmp_path / 'csv'}", "train", options="q=1")


def test_a_prefix_of_a_source_pickles_for_input_workers():
    import pickle

    from rmc_jax.data.sources import Prefix
    from rmc_jax.data.synthetic import SyntheticSource

    prefix = Prefix(SyntheticSource(split="train", seed=0, size=8), 3)
    copy = pickle.loads(pickle.dumps(prefix))  # what Grain does for data.workers >= 1
    assert len(copy) == 3 and copy.name == prefix.name
    assert copy.texts(2) == prefix.texts(2)

"""``Source.texts``: every registered format gives an example's report and captions without
decoding its image, equal to the Example's, and still does when the image files are gone."""

from __future__ import annotations

import glob
import os
import warnings

import numpy as np
import pytest

from fixtures import cxr_formats_a as fx_a
from fixtures import cxr_formats_b as fx_b
from fixtures import tfds_copies
from rmc_jax.data.sources import Prefix, available, get_source, open_source
from rmc_jax.data.sources.mixture import Mixture

IMAGE_EXTENSIONS = (".jpg", ".png", ".dcm", ".dicom")


def _mimic(tmp):
    fx_a.write_mimic_cxr(tmp, reports_root=tmp + "/reports")
    return get_source("mimic_cxr", tmp, "all", reports_root=tmp + "/reports", views="all")


def _chexpert(tmp):
    fx_a.write_chexpert(tmp)
    return get_source("chexpert", tmp, "train", views="all")


def _chexpert_5x200(tmp):
    fx_a.write_chexpert(tmp)
    return get_source("chexpert_5x200", tmp, per_class=2)


def _ms_cxr(tmp):
    fx_a.write_ms_cxr(tmp)
    fx_a.write_mimic_cxr(tmp + "/mimic", reports_root=tmp + "/reports")
    return get_source("ms_cxr", tmp, "all", reports_root=tmp + "/reports")


def _rsna(tmp):
    fx_a.write_rsna(tmp)
    return get_source("rsna_pneumonia", tmp)


def _vindr(tmp):
    fx_b.write_vindr(tmp)
    return get_source("vindr_cxr", tmp, "train")


def _imagenome(tmp):
    fx_b.write_imagenome(tmp + "/ig", tmp + "/mimic", tmp + "/reports")
    return get_source("chest_imagenome", tmp + "/ig", "train", images_root=tmp + "/mimic",
                      reports_root=tmp + "/reports", exclude_gold=False)


def _iu(tmp):
    fx_b.write_iu_xray(tmp)
    return get_source("iu_xray", tmp, "all")


def _nih(tmp):
    fx_b.write_nih(tmp)
    return get_source("nih_cxr14", tmp, "all")


def _tfds(tmp, cut: int = 0):
    """A prepared copy of NIH's examples (two shards); with ``cut``, every record's PNG is
    shortened by that many bytes."""
    path = tfds_copies.write_copy(_nih(tmp + "/nih"), tmp + "/tfds", shards=2)
    for shard in tfds_copies.shards(path) if cut else ():
        tfds_copies.cut_pngs(shard, cut)
    return get_source("tfds:rmc_test", tmp + "/tfds", "train")


def _synthetic(tmp):
    return open_source("synthetic", "", "train", size=3)


BUILDERS = {"mimic_cxr": _mimic, "chexpert": _chexpert, "chexpert_5x200": _chexpert_5x200,
            "ms_cxr": _ms_cxr, "rsna_pneumonia": _rsna, "vindr_cxr": _vindr,
            "chest_imagenome": _imagenome, "iu_xray": _iu, "nih_cxr14": _nih,
            "tfds": _tfds, "synthetic": _synthetic}


def test_every_registered_format_is_covered():
    assert set(BUILDERS) == set(available()) | {"tfds"}


def _texts(source):
    return [source.texts(i) for i in range(len(source))]


def _break_images(root: str, how: str) -> int:
    files = [f for ext in IMAGE_EXTENSIONS
             for f in glob.glob(os.path.join(root, "**", "*" + ext), recursive=True)]
    for path in files:
        if how == "delete":
            os.remove(path)
        else:
            with open(path, "wb") as handle:
                handle.write(b"\x89PNG\r\n\x1a\n not an image")
    return len(files)


@pytest.mark.parametrize("how", ["delete", "corrupt"])
@pytest.mark.parametrize("name", sorted(BUILDERS))
def test_texts_equal_the_examples_and_need_no_image(name, how, tmp_path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the fixtures' deliberate clipped/dropped boxes
        source = BUILDERS[name](str(tmp_path / "read"))
        unread = BUILDERS[name](str(tmp_path / "unread"))  # no example read before the break
        examples = [source[i] for i in range(len(source))]
        assert len(source) and _texts(source) == [(e.report, tuple(e.captions))
                                                  for e in examples]
        assert source.texts(-1) == source.texts(len(source) - 1)
        with pytest.raises(IndexError):
            source.texts(len(source))
        if name == "tfds":  # the same records with their PNG cut short
            source = unread = _tfds(str(tmp_path / "cut"), cut=40)
            broken = len(source)
        else:
            broken = _break_images(str(tmp_path), how)
        assert broken or name == "synthetic"
        after, after_unread = _texts(source), _texts(unread)
    assert after == [(e.report, tuple(e.captions)) for e in examples]
    if name == "vindr_cxr":  # without the DICOM header the size is unknown: no side or zone
        assert after_unread == [
            ("Nodule/mass. Pleural effusion. Cardiomegaly. Aortic enlargement.",
             ("nodule/mass", "nodule/mass", "pleural effusion", "cardiomegaly",
              "aortic enlargement")),
            ("Lung opacity.", ("lung opacity",)), ("No finding.", ())]
    else:
        assert after_unread == after
    if broken:
        with pytest.raises(Exception):
            unread[0]


def test_prefix_and_mixture_texts(tmp_path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        nih, rsna = _nih(str(tmp_path / "nih")), _rsna(str(tmp_path / "rsna"))
    prefix = Prefix(rsna, 2)
    assert _texts(prefix) == [rsna.texts(0), rsna.texts(1)] and prefix.texts(-1) == rsna.texts(1)
    with pytest.raises(IndexError):
        prefix.texts(2)
    mix = Mixture([nih, prefix], [1, 1])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        expected = [(mix[i].report, tuple(mix[i].captions)) for i in range(len(mix))]
    _break_images(str(tmp_path), "delete")
    assert _texts(mix) == expected
    assert any(np.asarray(c).size for _, c in expected)

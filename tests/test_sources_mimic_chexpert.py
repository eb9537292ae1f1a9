"""MIMIC-CXR-JPG, CheXpert and CheXpert 5x200 sources read official-layout fixtures, plus the
shared tabular / report helpers."""

import csv
import gzip
import os
import shutil
import sys

import numpy as np
import pytest

sys.path.insert(0, os.path.dirname(__file__))
from fixtures import cxr_formats_a as fx  # noqa: E402

from rmc_jax.data.schema import Example  # noqa: E402
from rmc_jax.data.sources import SourceError, get_source  # noqa: E402
from rmc_jax.data.sources import reports, tabular  # noqa: E402
from rmc_jax.data.sources.chexpert import (  # noqa: E402
    CHEXPERT_LABELS, COMPETITION_LABELS, CheXpert, CheXpert5x200, build_chexpert_5x200)
from rmc_jax.data.sources.mimic_cxr import MimicCXR  # noqa: E402

L = CHEXPERT_LABELS.index


# ---------------------------------------------------------------------------------------------
# tabular helpers
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("cell, policy, expected", [
    ("1.0", "ignore", (1.0, True)), ("1", "ignore", (1.0, True)), ("0.0", "ignore", (0.0, True)),
    ("", "ignore", (0.0, False)), ("  ", "zeros", (0.0, False)), ("nan", "ones", (0.0, False)),
    ("-1.0", "ignore", (0.0, False)), ("-1", "zeros", (0.0, True)), ("-1.0", "ones", (1.0, True)),
])
def test_parse_label(cell, policy, expected):
    assert tabular.parse_label(cell, uncertain=policy) == expected


def test_parse_label_rejects_garbage_and_bad_policy():
    with pytest.raises(ValueError, match="2.0"):
        tabular.parse_label("2.0")
    with pytest.raises(ValueError, match="uncertain"):
        tabular.parse_label("1", uncertain="maybe")


def test_read_csv_plain_and_gz_by_name(tmp_path):
    text = "\ufeffb , a\n1,2\n\n3\n4,5,6\n"
    (tmp_path / "x.csv").write_text(text, encoding="utf-8")
    with gzip.open(tmp_path / "x.csv.gz", "wt", encoding="utf-8") as handle:
        handle.write(text)
    for name in ("x.csv", "x.csv.gz"):
        rows = tabular.read_csv(tmp_path / name, required=("a", "b"))
        assert rows == [{"b": "1", "a": "2"}, {"b": "3", "a": ""}, {"b": "4", "a": "5"}]


def test_read_csv_missing_column_and_file(tmp_path):
    (tmp_path / "x.csv").write_text("a,b\n1,2\n")
    with pytest.raises(SourceError) as error:
        tabular.read_csv(tmp_path / "x.csv", required=("a", "c", "d"))
    message = str(error.value)
    assert str(tmp_path / "x.csv") in message and "['c', 'd']" in message
    assert "['a', 'b']" in message
    with pytest.raises(SourceError, match="nope.csv"):
        tabular.read_csv(tmp_path / "nope.csv", required=("a",))
    with pytest.raises(SourceError, match="expected the thing"):
        tabular.require_dir(tmp_path / "missing", "the thing")


# ---------------------------------------------------------------------------------------------
# report sectioning
# ---------------------------------------------------------------------------------------------

def test_report_sections_full_report():
    text = fx.MIMIC_REPORTS["50414267"]
    sections = reports.split_sections(text)
    assert sections["indication"] == "___F with new onset ascites // eval for infection"
    assert sections["comparison"] == "None."
    findings, impression = reports.findings_impression(text)
    assert findings == ("There is no focal consolidation, pleural effusion or pneumothorax. "
                        "Bilateral nodular opacities. Heart size: normal.")
    assert impression == "No acute cardiopulmonary process."
    assert reports.report_text(text) == findings + " " + impression


@pytest.mark.parametrize("study, expected", [
    ("53189527", "Left lower lobe atelectasis."),                 # impression only, CRLF, tabs
    ("52000001", "Small right pleural effusion."),                # inline headers
    ("59999999", "Lungs are clear. No effusion."),                # no headers at all
])
def test_report_text_variants(study, expected):
    assert reports.report_text(fx.MIMIC_REPORTS[study]) == expected


def test_report_text_fallbacks():
    assert reports.report_text("INDICATION: cough\nCONCLUSION: Normal chest.") == "Normal chest."
    assert reports.report_text("Findings: clear lungs.\nImpression: normal") == \
        "clear lungs. normal"
    assert reports.report_text("INDICATION: cough\nCOMPARISON: none") == ""
    text = "INDICATION: x\nPA AND LATERAL VIEWS OF THE CHEST: clear"
    assert reports.report_text(text) == "clear"
    assert reports.report_text(text, fallback="none") == ""


def test_model_text_orders_and_selects_sections():
    text = ("EXAMINATION: Chest PA.\nINDICATION: Cough.\nFINDINGS: Small left effusion. "
            "Heart size is normal.\n\nIMPRESSION: Small left effusion.")
    findings, impression = "Small left effusion. Heart size is normal.", "Small left effusion."
    assert reports.model_text(text, "findings_impression") == f"{findings} {impression}"
    assert reports.model_text(text, "impression_findings") == f"{impression} {findings}"
    assert reports.model_text(text, "impression") == impression
    assert reports.model_text(text, "full") == (
        "EXAMINATION: Chest PA. INDICATION: Cough. FINDINGS: Small left effusion. Heart size "
        "is normal. IMPRESSION: Small left effusion.")
    # Without an impression the findings stand in; without headers the text is used whole.
    assert reports.model_text("FINDINGS: Clear lungs.", "impression") == "Clear lungs."
    assert reports.model_text("Lungs  are clear.\nNo effusion.", "impression_findings") == \
        "Lungs are clear. No effusion."
    assert reports.model_text("INDICATION: cough\nCONCLUSION: Normal.", "impression") == \
        "Normal."
    # What sources store: the two sections under their headers, administrative ones dropped.
    assert reports.study_text(text) == f"FINDINGS: {findings}\nIMPRESSION: {impression}"
    assert reports.sectioned_text("", " Clear.  ") == "IMPRESSION: Clear."
    assert reports.study_text("INDICATION: cough\nCONCLUSION: Normal.") == "IMPRESSION: Normal."
    assert reports.study_text("Lungs are clear.") == "Lungs are clear."
    for name in fx.MIMIC_REPORTS:  # the default choice reads exactly what report_text gives
        assert reports.model_text(reports.study_text(fx.MIMIC_REPORTS[name])) == \
            reports.report_text(fx.MIMIC_REPORTS[name])
    with pytest.raises(ValueError, match="impression_first"):
        reports.model_text(text, "impression_first")


def test_phrase_attributes():
    assert reports.parse_side("Right lower lobe pneumonia") == "right"
    assert reports.parse_side("bibasilar atelectasis") == "bilateral"
    assert reports.parse_zone("left retrocardiac opacity") == "retrocardiac"
    assert reports.parse_size("mild edema") == "small"


# ---------------------------------------------------------------------------------------------
# MIMIC-CXR
# ---------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def mimic(tmp_path_factory):
    root = tmp_path_factory.mktemp("mimic")
    fx.write_mimic_cxr(str(root / "mimic-cxr-jpg"), reports_root=str(root / "mimic-cxr-reports"))
    return root


def _mimic(root, **kw):
    return MimicCXR(root / "mimic-cxr-jpg", reports_root=root / "mimic-cxr-reports", **kw)


def test_mimic_train_split_frontal_views(mimic):
    source = _mimic(mimic, split="train")
    assert [r["dicom_id"] for r in source.records] == ["d1-pa", "d3-ap"]  # lateral dropped
    example = source[0]
    assert isinstance(example, Example) and example.validate() is example
    assert example.example_id == "d1-pa" and example.view == "PA" and example.source == "mimic_cxr"
    assert example.image.dtype == np.uint8 and example.image.shape == (24, 20)
    assert example.report == (  # the two sections under their headers, nothing else
        "FINDINGS: There is no focal consolidation, pleural effusion or pneumothorax. "
        "Bilateral nodular opacities. Heart size: normal.\n"
        "IMPRESSION: No acute cardiopulmonary process.")
    assert example.boxes.shape == (0, 4) and example.captions == ()
    assert example.labels[L("Lung Opacity")] == 1 and example.label_mask[L("Lung Opacity")]
    assert example.labels[L("Pleural Effusion")] == 0 and example.label_mask[L("Pleural Effusion")]
    assert not example.label_mask[L("No Finding")]  # blank -> unknown
    assert example.label_mask.sum() == 4


def test_mimic_views_all_and_shared_report(mimic):
    source = _mimic(mimic, split="train", views=None)
    assert [r["dicom_id"] for r in source.records] == ["d1-pa", "d2-lat", "d3-ap"]
    assert source[1].view == "LATERAL" and source[1].report == source[0].report


@pytest.mark.parametrize("policy, value, known", [("ignore", 0, False), ("zeros", 0, True),
                                                  ("ones", 1, True)])
def test_mimic_uncertain_policy(mimic, policy, value, known):
    example = _mimic(mimic, split="train", uncertain=policy)[1]  # d3-ap: Edema -1.0
    assert example.example_id == "d3-ap"
    assert example.labels[L("Edema")] == value and example.label_mask[L("Edema")] == known
    assert example.labels[L("Atelectasis")] == 1
    assert example.report == "IMPRESSION: Left lower lobe atelectasis."


def test_mimic_validation_alias_negbio_and_test_without_labels(mimic):
    for split in ("validate", "validation"):
        (example,) = list(_mimic(mimic, split=split, labeler="negbio"))
        assert example.example_id == "d4-pa"
        assert example.labels[L("Pneumonia")] == 1 and example.label_mask[L("Pneumonia")]
        assert reports.model_text(example.report) == "Small right pleural effusion."
    (example,) = list(_mimic(mimic, split="test"))
    assert example.example_id == "d5-ap" and not example.label_mask.any()  # not in label file
    assert example.report == "Lungs are clear. No effusion."  # no headers: the whole text
    assert len(_mimic(mimic, split="all", views="all")) == 5


def test_mimic_plain_csv_reports_in_root_and_no_reports(tmp_path):
    fx.write_mimic_cxr(str(tmp_path), gz=False)
    source = MimicCXR(tmp_path, split="train")
    assert source[0].report.endswith("No acute cardiopulmonary process.")
    assert MimicCXR(tmp_path, split="train", reports=False)[0].report == ""
    assert len(get_source("mimic_cxr", root=str(tmp_path), split="validate")) == 1


def test_mimic_missing_root_file_column(tmp_path):
    with pytest.raises(SourceError, match="files/p1X") as error:
        MimicCXR(tmp_path / "absent")
    assert str(tmp_path / "absent") in str(error.value)
    root = tmp_path / "m"
    fx.write_mimic_cxr(str(root))
    os.remove(root / "mimic-cxr-2.0.0-split.csv.gz")
    with pytest.raises(SourceError, match="mimic-cxr-2.0.0-split.csv") as error:
        MimicCXR(root)
    assert "metadata,split,chexpert,negbio" in str(error.value)
    fx._write_csv(str(root / "mimic-cxr-2.0.0-split.csv.gz"), ("dicom_id", "study_id", "part"),
                  [("d1-pa", "50414267", "train")], gz=True)
    with pytest.raises(SourceError, match=r"\['subject_id', 'split'\]") as error:
        MimicCXR(root)
    assert "split.csv.gz" in str(error.value) and "'part'" in str(error.value)
    with pytest.raises(SourceError, match="mimic-cxr-reports"):
        MimicCXR(root, split="all", reports_root=tmp_path / "no-reports")


# ---------------------------------------------------------------------------------------------
# CheXpert
# ---------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def chexpert(tmp_path_factory):
    root = tmp_path_factory.mktemp("chexpert")
    return fx.write_chexpert(str(root), small=True, per_class=5)


def test_chexpert_parent_or_dataset_root(chexpert):
    for root in (chexpert["root"], chexpert["base"]):
        source = CheXpert(root, split="train")
        frontal = [r for r in chexpert["train"] if r[3] == "Frontal"]
        assert len(source) == len(frontal)
        example = source[0]
        assert example.validate() is example and example.report == ""
        assert example.example_id == "train/patient00001/study1/view1_frontal"
        assert example.image.dtype == np.uint8 and example.image.shape == (10, 12)
        assert example.view == "PA" and example.boxes.shape == (0, 4)
        assert source.records[0]["sex"] == "Female" and source.records[0]["age"] == 60
        assert example.labels[L("Atelectasis")] == 1 and example.label_mask[L("Atelectasis")]
        # row 0: Cardiomegaly 0.0, Consolidation blank (unknown), Support Devices -1.0
        assert example.label_mask[L("Cardiomegaly")] and example.labels[L("Cardiomegaly")] == 0
        assert not example.label_mask[L("Consolidation")]
        assert not example.label_mask[L("Support Devices")]


def test_chexpert_uncertain_views_and_valid(chexpert):
    source = CheXpert(chexpert["root"], uncertain="ones", views="all")
    assert len(source) == len(chexpert["train"])
    assert source[0].labels[L("Support Devices")] == 1 and source[0].label_mask.any()
    lateral = [i for i, r in enumerate(source.records) if r["view"] == "LATERAL"]
    assert len(lateral) == 1
    assert len(CheXpert(chexpert["root"], views=("PA",))) == 5 * 3 + 3  # PA rows
    valid = CheXpert(chexpert["root"], split="valid", views=None)
    assert len(valid) == 2 and valid[0].label_mask.all() and valid[0].view == "AP"
    assert valid[0].labels[L("Edema")] == 1
    assert len(get_source("chexpert", root=chexpert["root"], split="validation")) == 1


def test_chexpert_full_version_prefix(tmp_path):
    info = fx.write_chexpert(str(tmp_path), small=False, per_class=1)
    source = CheXpert(tmp_path / "CheXpert-v1.0")
    assert len(source) == 5 + 3 and source[0].image.shape == (10, 12)
    assert info["train"][0][0].startswith("CheXpert-v1.0/")


def test_chexpert_test_sets(tmp_path):
    fx.write_chexpert_test(str(tmp_path / "a"))
    source = CheXpert(tmp_path / "a", split="test", views=None)
    assert len(source) == 3 and source[1].view == "LATERAL"
    assert source[0].labels[L("Edema")] == 1 and source[0].label_mask.all()
    assert len(CheXpert(tmp_path / "a", split="test")) == 2  # frontal only
    fx.write_chexpert_test(str(tmp_path / "b"), study_level=True)
    source = CheXpert(tmp_path / "b", split="test", views=None)
    assert [r["path"] for r in source.records] == [
        "test/patient64741/study1/view1_frontal.jpg", "test/patient64741/study1/view2_lateral.jpg",
        "test/patient64742/study1/view1_frontal.jpg"]
    assert source[2].labels[L("Pleural Effusion")] == 1 and source[2].validate()


def test_chexpert_errors(tmp_path, chexpert):
    with pytest.raises(SourceError, match="CheXpert layout") as error:
        CheXpert(tmp_path / "absent")
    assert str(tmp_path / "absent") in str(error.value)
    with pytest.raises(SourceError, match="train.csv"):
        CheXpert(tmp_path)
    with pytest.raises(SourceError, match="test_labels.csv"):
        CheXpert(chexpert["root"], split="test")
    broken = tmp_path / "broken" / "CheXpert-v1.0-small"
    broken.mkdir(parents=True)
    with open(os.path.join(chexpert["base"], "train.csv")) as src, \
            open(broken / "train.csv", "w") as dst:
        for line in src:
            dst.write(line.replace("Frontal/Lateral", "View"))
    with pytest.raises(SourceError, match=r"\['Frontal/Lateral'\]") as error:
        CheXpert(broken.parent)
    assert str(broken / "train.csv") in str(error.value) and "'View'" in str(error.value)
    no_images = tmp_path / "noimg"
    fx.write_chexpert(str(no_images), per_class=1, images=False)
    with pytest.raises(SourceError, match="view1_frontal.jpg"):
        CheXpert(no_images)


# ---------------------------------------------------------------------------------------------
# CheXpert 5x200
# ---------------------------------------------------------------------------------------------

def test_5x200_builder_deterministic_single_positive(tmp_path, chexpert):
    out_a, out_b, out_c = (tmp_path / f"{n}.csv" for n in "abc")
    build_chexpert_5x200(chexpert["root"], out_a, seed=0, per_class=3)
    build_chexpert_5x200(chexpert["base"], out_b, seed=0, per_class=3)
    build_chexpert_5x200(chexpert["root"], out_c, seed=1, per_class=3)
    assert out_a.read_text() == out_b.read_text()
    assert out_a.read_text() != out_c.read_text()
    with open(out_a) as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 15
    assert [r["label"] for r in rows] == [n for n in COMPETITION_LABELS for _ in range(3)]
    train = {r[0]: r for r in chexpert["train"]}
    for row in rows:
        assert sum(float(row[n]) for n in COMPETITION_LABELS) == 1.0 and row[row["label"]] == "1.0"
        original = dict(zip(fx.CHEXPERT_HEADER, train[row["Path"]]))
        assert original["Frontal/Lateral"] == "Frontal"
        assert [original[n] == "1.0" for n in COMPETITION_LABELS].count(True) == 1
        assert all(original[n] in ("", "0.0") for n in COMPETITION_LABELS if n != row["label"])
    assert len({r["Path"] for r in rows}) == 15

    source = CheXpert5x200(chexpert["root"], csv=out_a)
    assert len(source) == 15 and source.label_names == COMPETITION_LABELS
    example = source[4]
    assert example.validate() and example.labels.tolist() == [0, 1, 0, 0, 0]
    assert example.label_mask.all() and source.class_index(4) == 1
    in_memory = get_source("chexpert_5x200", root=chexpert["root"], per_class=3)
    assert [r["path"] for r in in_memory.records] == [r["Path"] for r in rows]


def test_5x200_too_few_and_missing_csv(tmp_path, chexpert):
    with pytest.raises(SourceError, match="only 5 .*'Atelectasis'.*allow_fewer"):
        build_chexpert_5x200(chexpert["root"], tmp_path / "x.csv", per_class=6)
    build_chexpert_5x200(chexpert["root"], tmp_path / "x.csv", per_class=6, allow_fewer=True)
    assert len(CheXpert5x200(chexpert["root"], csv=tmp_path / "x.csv")) == 25
    with pytest.raises(SourceError, match="build_chexpert_5x200") as error:
        CheXpert5x200(chexpert["root"], csv=tmp_path / "absent.csv")
    assert "absent.csv" in str(error.value)


def test_copy_without_reports_dir_is_rejected(tmp_path, mimic):
    shutil.copytree(mimic / "mimic-cxr-jpg", tmp_path / "jpg")
    with pytest.raises(SourceError, match="s50414267.txt"):
        MimicCXR(tmp_path / "jpg", reports_root=mimic / "mimic-cxr-jpg")

"""IU X-ray (Open-i XML) and NIH ChestX-ray14 sources on tiny copies in the official layouts."""

from __future__ import annotations

import os
import shutil
import warnings

import numpy as np
import pytest

from fixtures import cxr_formats_b as fx
from rmc_jax.data import schema
from rmc_jax.data.sources import SourceError, get_source
from rmc_jax.data.sources import iu_xray as iu_module
from rmc_jax.data.sources.iu_xray import LABEL_NAMES, IUXray, mesh_finding, parse_report
from rmc_jax.data.sources.reports import model_text
from rmc_jax.data.sources.nih import NIH_LABELS, NIHChestXray14, read_nih_csv, repair_header

FID = schema.FINDINGS.index


def _quiet(factory, *args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return factory(*args, **kwargs)


# ----------------------------------------------------------------------------------------------
# IU X-ray
# ----------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def iu_root(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("iu"))
    fx.write_iu_xray(root)
    return root


def test_iu_xml_reports_images_and_labels(iu_root):
    source = IUXray(iu_root, split="all")
    ids = [source[i].validate().example_id for i in range(len(source))]
    # natural order of report files (1, 2, 3, 10); report 4 has no image; two images of report 1
    assert ids == ["CXR1_1_IM-0001-3001", "CXR1_1_IM-0001-4001", "CXR2_IM-0652-1001",
                   "CXR3_IM-1384-2001", "CXR10_IM-0002-1001"]
    first, second = source[0], source[1]
    assert first.report == second.report == (
        "FINDINGS: The cardiac silhouette and mediastinum size are within normal limits. There "
        "is no pulmonary edema.\nIMPRESSION: Normal chest x-XXXX.")
    assert first.image.shape == (48, 40) and first.num_regions == 0
    assert first.labels[LABEL_NAMES.index("no_finding")] == 1 and first.labels.sum() == 1
    assert first.label_mask.all()
    cardio = source[2]
    assert model_text(cardio.report) == ("Borderline cardiomegaly. Left basilar opacity. "
                                         "Small right effusion. Borderline cardiomegaly.")
    positives = {LABEL_NAMES[i] for i in np.flatnonzero(cardio.labels)}
    assert positives == {"cardiomegaly", "lung_opacity", "pleural_effusion"}
    assert cardio.label_mask.all() and cardio.labels[LABEL_NAMES.index("atelectasis")] == 0
    unindexed = source[3]
    assert unindexed.report == "IMPRESSION: No acute cardiopulmonary abnormality."
    assert not unindexed.label_mask.any()
    granuloma = source[4]
    assert {LABEL_NAMES[i] for i in np.flatnonzero(granuloma.labels)} == \
        {"calcification", "pleural_thickening"}
    report = source.report_of(2)
    assert report["mesh_automatic"] == ["Pulmonary Atelectasis"]
    assert report["sections"]["INDICATION"] == "Positive TB test"
    assert "by-nc-nd" in report["licence"] and source.licence == "CC BY-NC-ND 4.0"
    assert "CC BY-NC-ND" in iu_module.__doc__ and "CC BY-NC-ND" in IUXray.__doc__


def test_iu_automatic_terms_and_mesh_mapping(iu_root):
    source = IUXray(iu_root, split="all", use_automatic=True)
    assert source[2].labels[LABEL_NAMES.index("atelectasis")] == 1
    assert mesh_finding("normal") == "no_finding"
    assert mesh_finding("Pleural Effusion/right/small") == "pleural_effusion"
    assert mesh_finding("Opacity/lung/base/left/mild") == "lung_opacity"
    assert mesh_finding("Thickening/pleura/apex/left") == "pleural_thickening"
    assert mesh_finding("Pulmonary Atelectasis/base/left") == "atelectasis"
    assert mesh_finding("Nodule/lung/upper lobe/right") == "nodule"
    assert mesh_finding("Pulmonary Artery/enlarged") is None
    assert mesh_finding("Spine/degenerative/mild") is None


def test_iu_split_is_a_deterministic_partition(iu_root):
    everything = {IUXray(iu_root, split="all")[i].example_id for i in range(5)}
    parts = [[s.items[i][1] for i in range(len(s))]
             for s in (IUXray(iu_root, split=name) for name in ("train", "val", "test"))]
    assert sorted(sum(parts, [])) == sorted(everything)
    assert len(set(sum(parts, []))) == len(everything)             # disjoint
    # images of one report stay together
    for part in parts:
        assert ("CXR1_1_IM-0001-3001" in part) == ("CXR1_1_IM-0001-4001" in part)
    assert len(get_source("iu_xray", root=iu_root, split="valid")) == len(parts[1])


def test_iu_errors(iu_root, tmp_path):
    with pytest.raises(SourceError, match="NLMCXR_png"):
        broken = tmp_path / "no_png"
        shutil.copytree(os.path.join(iu_root, "ecgen-radiology"), broken / "ecgen-radiology")
        IUXray(str(broken))
    with pytest.raises(SourceError, match="ecgen-radiology"):
        IUXray(str(tmp_path))
    bad = tmp_path / "bad"
    shutil.copytree(iu_root, bad)
    (bad / "ecgen-radiology" / "7.xml").write_text("<eCitation><MeSH></eCitation>")
    with pytest.raises(SourceError, match="7.xml"):
        IUXray(str(bad), split="all")
    missing = tmp_path / "missing"
    shutil.copytree(iu_root, missing)
    os.remove(missing / "NLMCXR_png" / "CXR3_IM-1384-2001.png")
    with pytest.raises(SourceError, match="CXR3_IM-1384-2001"):
        IUXray(str(missing), split="all")
    with pytest.warns(UserWarning, match="skipping 1"):
        assert len(IUXray(str(missing), split="all", missing_images="skip")) == 4
    report = parse_report(os.path.join(iu_root, "ecgen-radiology", "10.xml"))
    assert report["uid"] == "CXR10" and report["images"] == ["CXR10_IM-0002-1001"]


# ----------------------------------------------------------------------------------------------
# NIH ChestX-ray14
# ----------------------------------------------------------------------------------------------

@pytest.fixture(scope="module", params=["2017", "v2020"])
def nih_root(request, tmp_path_factory):
    root = str(tmp_path_factory.mktemp(f"nih{request.param}"))
    fx.write_nih(root, request.param)
    return root, request.param


def test_nih_header_repair():
    assert repair_header(["Image Index", "OriginalImage[Width", "Height]",
                          "OriginalImagePixelSpacing[x", "y]", ""]) == [
        "Image Index", "OriginalImageWidth", "OriginalImageHeight",
        "OriginalImagePixelSpacingX", "OriginalImagePixelSpacingY", ""]
    assert repair_header(["OriginalImage[Width,Height]"]) == ["OriginalImageWidth",
                                                             "OriginalImageHeight"]
    assert repair_header(["Image Index", "Finding Label", "Bbox [x", "y", "w", "h]", "", "",
                          ""]) == ["Image Index", "Finding Label", "BboxX", "BboxY", "BboxW",
                                   "BboxH", "", "", ""]


def test_nih_data_entry_labels_and_metadata(nih_root):
    root, version = nih_root
    source = _quiet(NIHChestXray14, root, split="all")
    assert len(source) == 4 and source.label_names == NIH_LABELS
    assert source.sex_column == ("Patient Gender" if version == "2017" else "Patient Sex")
    first = source[0].validate()
    assert first.example_id == "00000001_000.png" and first.image.shape == (64, 64)
    assert {NIH_LABELS[i] for i in np.flatnonzero(first.labels)} == {"Cardiomegaly", "Effusion"}
    assert first.label_mask.all() and first.view == "PA"
    assert first.report == "Cardiomegaly. Pleural effusion."
    assert source[1].labels.sum() == 0 and source[1].report == "No finding."
    assert source[2].view == "AP"
    assert {NIH_LABELS[i] for i in np.flatnonzero(source[3].labels)} == \
        {"Hernia", "Pleural_Thickening"}
    meta = source.metadata(0)
    assert meta["original_size"] == (2682, 2749) and meta["pixel_spacing"] == (0.143, 0.143)
    assert meta["sex"] == "M" and meta["patient_id"] == "1"


def test_nih_boxes_1024_space(nih_root):
    root, _ = nih_root
    with pytest.warns(UserWarning) as record:
        source = NIHChestXray14(root, split="test")
    messages = " ".join(str(w.message) for w in record)
    assert "clipped" in messages and "dropped 1" in messages
    assert source.clipped_boxes == 1 and source.dropped_boxes == 1
    example = source[0].validate()
    assert example.example_id == "00000002_000.png"
    np.testing.assert_allclose(example.boxes, [
        (0.5, 0.25, 0.625, 0.3125),                                   # Nodule (512,256,128,64)
        (100 / 1024, 300 / 1024, 300 / 1024, 450 / 1024),             # Infiltrate
        (900 / 1024, 700 / 1024, 1.0, 1.0)], atol=1e-6)               # clipped Effusion
    assert list(example.finding_ids) == [FID("nodule"), FID("infiltration"),
                                         FID("pleural_effusion")]
    assert example.captions == ("nodule in the left upper zone",
                                "infiltration in the right middle zone",
                                "pleural effusion in the left lower zone")
    assert list(example.side_ids) == [schema.side_id("left"), schema.side_id("right"),
                                      schema.side_id("left")]
    assert source[1].validate().num_regions == 0                       # its only box dropped


def test_nih_splits_and_image_folders(tmp_path):
    fx.write_nih(str(tmp_path / "flat"), "2017", image_layout="flat", with_boxes=False)
    train = NIHChestXray14(str(tmp_path / "flat"), split="train")
    assert [r["image"] for r in train.records] == ["00000001_000.png", "00000001_001.png"]
    assert train.bbox_path is None and train.image_dirs == [str(tmp_path / "flat" / "images")]
    test = get_source("nih_cxr14", root=str(tmp_path / "flat"), split="test")
    assert isinstance(test, NIHChestXray14)
    assert [test[i].example_id for i in range(len(test))] == ["00000002_000.png",
                                                               "00000003_000.png"]
    fx.write_nih(str(tmp_path / "dirs"), "v2020")
    source = _quiet(NIHChestXray14, str(tmp_path / "dirs"), split="train")
    assert len(source.image_dirs) == 2 and source.image_path(1).endswith(
        os.path.join("images_002", "images", "00000001_001.png"))
    with pytest.raises(ValueError, match="split"):
        NIHChestXray14(str(tmp_path / "dirs"), split="valid")


def test_nih_errors(tmp_path):
    with pytest.raises(SourceError, match="nowhere"):
        NIHChestXray14(str(tmp_path / "nowhere"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(SourceError, match="Data_Entry_2017"):
        NIHChestXray14(str(tmp_path / "empty"))
    root = tmp_path / "nih"
    fx.write_nih(str(root), "2017", with_boxes=False)
    entry = root / "Data_Entry_2017.csv"
    original = entry.read_text()
    entry.write_text(original.replace("Finding Labels", "Labels", 1))
    with pytest.raises(SourceError) as error:
        NIHChestXray14(str(root))
    message = str(error.value)
    assert str(entry) in message and "Finding Labels" in message and "OriginalImageWidth" in message
    entry.write_text(original.replace("0.143,0.143,\n", "0.143,0.143,oops\n", 1))
    with pytest.raises(SourceError, match="oops"):
        NIHChestXray14(str(root))
    entry.write_text(original)
    os.remove(root / "train_val_list.txt")
    with pytest.raises(SourceError, match="train_val_list.txt"):
        NIHChestXray14(str(root), split="train")
    assert len(NIHChestXray14(str(root), split="all")) == 4
    os.remove(root / "images_001" / "images" / "00000001_000.png")
    with pytest.raises(SourceError, match="00000001_000.png"):
        NIHChestXray14(str(root), split="all")
    with pytest.warns(UserWarning, match="skipping 1"):
        assert len(NIHChestXray14(str(root), split="all", missing_images="skip")) == 3
    box_file = root / "BBox_List_2017.csv"
    box_file.write_text("Image Index,Finding Label,x,y\n00000002_000.png,Nodule,1,2\n")
    with pytest.raises(SourceError) as error, pytest.warns(UserWarning, match="skipping 1"):
        NIHChestXray14(str(root), split="all", missing_images="skip")
    assert "BboxW" in str(error.value) and str(box_file) in str(error.value)


def test_read_nih_csv_accepts_padded_bbox_rows(tmp_path):
    path = tmp_path / "BBox_List_2017.csv"
    path.write_text("Image Index,Finding Label,Bbox [x,y,w,h],,,\n"
                    "a.png,Infiltrate,1.5,2,3,4,,,\n"
                    "b.png,Mass,5,6,7,8\n")
    rows, columns = read_nih_csv(str(path), ("Image Index", "Finding Label", "BboxX", "BboxY",
                                             "BboxW", "BboxH"))
    assert columns == ["Image Index", "Finding Label", "BboxX", "BboxY", "BboxW", "BboxH"]
    assert rows[0]["BboxX"] == "1.5" and rows[1]["BboxH"] == "8"

"""VinDr-CXR and Chest ImaGenome sources on tiny copies in the official layouts."""

from __future__ import annotations

import os
import shutil
import warnings

import numpy as np
import pytest

from fixtures import cxr_formats_b as fx
from rmc_jax.data import schema
from rmc_jax.data.sources import SourceError, get_source
from rmc_jax.data.sources.reports import model_text
from rmc_jax.data.sources.imagenome import (ChestImaGenome, attribute_finding,
                                            flatten_attributes, region_position)
from rmc_jax.data.sources.boxes import box_position, check_boxes
from rmc_jax.data.sources.vindr import VINDR_CLASSES, VinDrCXR, merge_reader_boxes

FID = schema.FINDINGS.index


def _quiet(factory, *args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return factory(*args, **kwargs)


def _example(source, example_id):
    index = source.image_ids.index(example_id)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return source[index].validate()


@pytest.fixture(scope="module")
def vindr_root(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("vindr"))
    info = fx.write_vindr(root, "physionet")
    return root, info


# ----------------------------------------------------------------------------------------------
# VinDr-CXR
# ----------------------------------------------------------------------------------------------

def test_vindr_boxes_normalised_by_dicom_rows_columns(vindr_root):
    root, info = vindr_root
    source = VinDrCXR(root, readers="all")
    big = source.image_ids.index(info["big"])
    assert source.image_size(big) == (1000, 800)           # (Columns, Rows) from the header
    example = _example(source, info["big"])
    assert example.image.shape == (800, 1000)
    np.testing.assert_allclose(example.boxes[0], (0.1, 0.25, 0.3, 0.5), atol=1e-6)
    # clipped (-20, 50, 100, 150) -> (0, 0.0625, 0.1, 0.1875); inverted Atelectasis dropped
    captions = list(example.captions)
    np.testing.assert_allclose(example.boxes[captions.index("aortic enlargement in the right "
                                                            "upper zone")],
                               (0.0, 0.0625, 0.1, 0.1875), atol=1e-6)
    assert not any("atelectasis" in c for c in captions)
    assert len(example.captions) == 7 and example.boxes.dtype == np.float32


def test_vindr_merge_readers(vindr_root):
    root, info = vindr_root
    merged = _example(VinDrCXR(root, readers="merge"), info["big"])
    everything = _example(VinDrCXR(root, readers="all"), info["big"])
    nodule = FID("nodule")
    assert np.sum(everything.finding_ids == nodule) == 3
    assert np.sum(merged.finding_ids == nodule) == 2       # R1 + R2 averaged, R3 separate
    np.testing.assert_allclose(merged.boxes[0], (0.105, 0.25625, 0.305, 0.50625), atol=1e-6)
    effusion = FID("pleural_effusion")
    assert np.sum(everything.finding_ids == effusion) == 2
    assert np.sum(merged.finding_ids == effusion) == 1
    np.testing.assert_allclose(merged.boxes[merged.finding_ids == effusion][0],
                               (0.605, 0.753125, 0.945, 0.990625), atol=1e-6)
    source = VinDrCXR(root, readers="merge")
    _quiet(source.regions, source.image_ids.index(info["big"]))
    assert source.regions(source.image_ids.index(info["big"]))[2] == [2, 1, 2, 1, 1]


def test_merge_never_joins_boxes_of_one_reader_or_low_iou():
    boxes = np.array([[0.1, 0.1, 0.3, 0.3], [0.11, 0.1, 0.31, 0.3], [0.1, 0.1, 0.3, 0.3],
                      [0.2, 0.2, 0.4, 0.4]])
    out, classes, counts = merge_reader_boxes(boxes, ["A", "A", "B", "A"], ["R1", "R1", "R2", "R2"])
    # same reader never merged; other class never merged; IoU((.1,.1,.3,.3),(.2,.2,.4,.4))=1/7
    assert classes == ["A", "A", "B", "A"] and counts == [1, 1, 1, 1]
    out, classes, counts = merge_reader_boxes(boxes[:2], ["A", "A"], ["R1", "R2"])
    assert counts == [2]
    np.testing.assert_allclose(out[0], (0.105, 0.1, 0.305, 0.3), atol=1e-6)


def test_vindr_captions_laterality_and_report(vindr_root):
    root, info = vindr_root
    example = _example(VinDrCXR(root), info["big"])
    assert example.captions == (
        "nodule/mass in the right middle zone", "nodule/mass in the left upper zone",
        "pleural effusion in the left lower zone", "cardiomegaly in the middle zone",
        "aortic enlargement in the right upper zone")
    assert [schema.SIDES[s] if s >= 0 else "" for s in example.side_ids] == \
        ["right", "left", "left", "", "right"]
    assert [schema.ZONES[z] for z in example.zone_ids] == \
        ["middle", "upper", "lower", "middle", "upper"]
    assert list(example.finding_ids) == [FID("nodule"), FID("nodule"), FID("pleural_effusion"),
                                         FID("cardiomegaly"), FID("aortic_enlargement")]
    assert example.report.startswith("Nodule/mass in the right middle zone. Nodule/mass in the "
                                     "left upper zone. Pleural effusion in the left lower zone.")
    mono1 = _example(VinDrCXR(root), info["mono1"])
    assert mono1.captions == ("lung opacity in the right upper zone",)
    normal = _example(VinDrCXR(root), info["normal"])
    assert normal.num_regions == 0 and normal.report == "No finding."
    # patient's right is the image's left
    assert box_position((0.1, 0.1, 0.2, 0.2)) == ("right", "upper")
    assert box_position((0.7, 0.8, 0.9, 0.9)) == ("left", "lower")
    assert box_position((0.3, 0.0, 0.7, 1.0)) == ("", "")


def test_vindr_monochrome1_is_inverted(vindr_root):
    root, info = vindr_root
    mono1 = _example(VinDrCXR(root), info["mono1"])
    np.testing.assert_array_equal(mono1.image, 255 - info["mono1_pixels"])
    big = _example(VinDrCXR(root), info["big"])                     # MONOCHROME2: as stored
    assert big.image[0, 0] == 0 and big.image[0, 999] == 255


def test_vindr_labels_majority_of_readers(vindr_root):
    root, info = vindr_root
    index = VINDR_CLASSES.index
    boxes_only = VinDrCXR(root, use_image_labels=False)
    big = _example(boxes_only, info["big"])
    assert big.labels[index("Nodule/Mass")] == 1 and big.labels[index("Pleural effusion")] == 1
    assert big.labels[index("Cardiomegaly")] == 0 and big.labels[index("Atelectasis")] == 0
    assert big.label_mask.all()
    mono1 = _example(boxes_only, info["mono1"])       # 1 of 2 readers: tie -> unknown
    assert not mono1.label_mask[index("Lung Opacity")] and mono1.label_mask.sum() == 13
    normal = _example(boxes_only, info["normal"])
    assert normal.labels.sum() == 0 and normal.label_mask.all()
    with_table = VinDrCXR(root)                        # image_labels_train.csv (rad_ID column)
    assert with_table.image_labels_path.endswith(os.path.join("annotations",
                                                              "image_labels_train.csv"))
    big = _example(with_table, info["big"])
    assert big.labels[index("Cardiomegaly")] == 1      # 2 of 3 readers in the table
    assert big.labels[index("Aortic enlargement")] == 0
    assert VinDrCXR.label_names == VINDR_CLASSES and len(big.labels) == 14


def test_vindr_clip_and_drop_warn_and_count(vindr_root):
    root, info = vindr_root
    source = VinDrCXR(root)
    big = source.image_ids.index(info["big"])
    with pytest.warns(UserWarning) as record:
        source[big]
    messages = " ".join(str(w.message) for w in record)
    assert "clipped" in messages and "dropped 1" in messages
    assert source.clipped_boxes == 1 and source.dropped_boxes == 1
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        source[big]                                    # converted once: no new warnings
    assert source.clipped_boxes == 1 and source.dropped_boxes == 1


def test_check_boxes_drops_and_clips_naming_each_place():
    checked = check_boxes([[10, 10, 20, 20], [np.nan, 1, 2, 3], [200, 10, 300, 20],
                           [5, 5, 5, 9], [30, 10, 20, 20], [90, -5, 120, 25]], (100, 50),
                          [f"a.csv:{line}" for line in range(2, 8)])
    assert checked.keep.tolist() == [True, False, False, False, False, True]
    np.testing.assert_allclose(checked.boxes, [[0.1, 0.2, 0.2, 0.4], [0.9, 0, 1, 0.5]],
                               atol=1e-7)
    assert checked.dropped == [
        "a.csv:3 (blank or not finite coordinate: [nan, 1, 2, 3])",
        "a.csv:4 (outside the 100x50 image: [200, 10, 300, 20])",
        "a.csv:5 (empty: [5, 5, 5, 9])", "a.csv:6 (inverted: [30, 10, 20, 20])"]
    assert checked.clipped == ["a.csv:7 (partly outside the 100x50 image: [90, -5, 120, 25])"]
    # one size per box (MS-CXR), and an unknown size: nothing clipped, pixels kept
    per_box = check_boxes([[100, 50, 300, 150]] * 2, [[1000, 500], [400, 200]], ["x", "y"])
    np.testing.assert_allclose(per_box.boxes, [[0.1, 0.1, 0.3, 0.3], [0.25, 0.25, 0.75, 0.75]])
    unknown = check_boxes([[200, 10, 300, 20], [30, 10, 20, 20]], None, ["x", "y"])
    assert unknown.keep.tolist() == [True, False] and not unknown.clipped
    np.testing.assert_allclose(unknown.boxes, [[200, 10, 300, 20]])


def test_vindr_kaggle_layout_and_registry(tmp_path):
    info = fx.write_vindr(str(tmp_path), "kaggle")
    source = get_source("vindr_cxr", root=str(tmp_path), readers="all")
    assert isinstance(source, VinDrCXR) and source.annotations_path.endswith("train.csv")
    assert source.image_labels_path is None and len(source) == 3
    example = _example(source, info["big"])
    np.testing.assert_allclose(example.boxes[0], (0.1, 0.25, 0.3, 0.5), atol=1e-6)
    assert source.readers_of(source.image_ids.index(info["big"])) == ["R1", "R2", "R3"]


def test_vindr_test_split_without_reader_column(vindr_root):
    root, _ = vindr_root
    source = VinDrCXR(root, split="test")
    example = source[0].validate()
    assert example.num_regions == 2                    # one (unnamed) reader: nothing merged
    assert example.captions == ("pneumothorax in the right upper zone",
                                "pneumothorax in the left upper zone")
    assert example.labels[VINDR_CLASSES.index("Pneumothorax")] == 1


def test_vindr_errors_name_path_and_columns(tmp_path, vindr_root):
    root, info = vindr_root
    with pytest.raises(SourceError, match="nowhere"):
        VinDrCXR(str(tmp_path / "nowhere"))
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(SourceError, match="annotations_train.csv"):
        VinDrCXR(str(empty))
    broken = tmp_path / "broken"
    shutil.copytree(root, broken)
    path = broken / "annotations" / "annotations_train.csv"
    lines = path.read_text().splitlines()
    path.write_text("\n".join(line.rsplit(",", 1)[0] for line in lines) + "\n")  # drop y_max
    with pytest.raises(SourceError) as error:
        VinDrCXR(str(broken))
    assert "y_max" in str(error.value) and str(path) in str(error.value)
    assert "x_max" in str(error.value)                 # found columns are listed
    no_images = tmp_path / "no_images"
    shutil.copytree(root, no_images)
    os.remove(no_images / "train" / f"{info['mono1']}.dicom")
    with pytest.raises(SourceError, match="missing_images"):
        VinDrCXR(str(no_images))
    with pytest.warns(UserWarning, match="skipping 1"):
        assert len(VinDrCXR(str(no_images), missing_images="skip")) == 2
    labels = tmp_path / "labels"
    shutil.copytree(root, labels)
    table = labels / "annotations" / "image_labels_train.csv"
    table.write_text(table.read_text().replace("Pleural thickening", "Something else"))
    with pytest.raises(SourceError, match="Pleural thickening"):
        VinDrCXR(str(labels))
    with pytest.raises(ValueError, match="readers"):
        VinDrCXR(root, readers="majority")


# ----------------------------------------------------------------------------------------------
# Chest ImaGenome
# ----------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def imagenome(tmp_path_factory):
    base = tmp_path_factory.mktemp("imagenome")
    info = fx.write_imagenome(str(base / "ig"), str(base / "mimic"), str(base / "reports"))
    return str(base / "ig"), str(base / "mimic"), str(base / "reports"), info


def test_imagenome_regions_from_scene_graph(imagenome):
    root, images, _, info = imagenome
    with pytest.warns(UserWarning, match="without a scene graph"):
        source = ChestImaGenome(root, "train", images_root=images)
    assert len(source) == 1 and source.missing_scene_graphs == 1 and source.excluded_gold == 1
    with pytest.warns(UserWarning) as record:
        example = source[0].validate()
    messages = " ".join(str(w.message) for w in record)
    assert "clipped" in messages and "dropped 1" in messages
    assert source.clipped_boxes == 1 and source.dropped_boxes == 1
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        source[0]                                      # second read: no repeated warnings
    assert source.clipped_boxes == 1 and source.dropped_boxes == 1
    assert example.example_id == info["a"] and example.image.shape == (160, 200)
    assert example.captions == (
        "Patchy opacity in the right upper lobe.",
        "Small left pleural effusion. Blunting of the left costophrenic angle.",
        "Heart size is normal.", "Left basilar atelectasis.", "Right PICC tip in the SVC.")
    np.testing.assert_allclose(example.boxes, [
        (0.1, 0.0625, 0.3, 0.25), (0.75, 0.75, 0.95, 0.9375), (0.35, 0.4375, 0.7, 0.8125),
        (0.6, 0.625, 1.0, 0.9375), (0.45, 0.125, 0.55, 0.375)], atol=1e-6)
    assert list(example.finding_ids) == [FID("lung_opacity"), FID("pleural_effusion"), -1,
                                         FID("atelectasis"), FID("support_device")]
    assert list(example.side_ids) == [schema.side_id("right"), schema.side_id("left"), -1,
                                      schema.side_id("left"), -1]
    assert list(example.zone_ids) == [schema.zone_id("upper"), schema.zone_id("basal"), -1,
                                      schema.zone_id("lower"), -1]
    assert example.size_ids[1] == schema.size_id("small")
    labels = dict(zip(schema.FINDINGS, zip(example.labels, example.label_mask)))
    assert labels["lung_opacity"] == (1, True) and labels["pleural_effusion"] == (1, True)
    assert labels["cardiomegaly"] == (0, True)          # 'no|enlarged cardiac silhouette'
    assert labels["pneumothorax"] == (0, False)         # never mentioned
    assert labels["support_device"] == (1, True)
    assert example.view == "PA"
    assert example.report.startswith("Patchy opacity in the right upper lobe. Small left")


def test_imagenome_224_space_and_ids_from_scene_graph(imagenome):
    root, images, _, info = imagenome
    for split in ("valid", "val"):
        source = ChestImaGenome(root, split, images_root=images)
        example = source[0].validate()                 # split CSV has only dicom_id
        assert example.example_id == info["b"] and example.image.shape == (80, 100)
        np.testing.assert_allclose(example.boxes, [(0.1, 0.2, 0.5, 1.0)], atol=1e-6)
        assert example.captions == ("No pneumothorax.",) and example.view == "AP"
        assert example.label_mask[FID("pneumothorax")] and example.labels.sum() == 0
    assert len(ChestImaGenome(root, "test", images_root=images)) == 0


def test_imagenome_options(imagenome, tmp_path):
    root, images, reports, info = imagenome
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        source = ChestImaGenome(root, "train", images_root=images, reports_root=reports,
                                exclude_gold=False, use_original_coords=False)
        assert len(source) == 2
        example = source[0].validate()
    assert model_text(example.report) == ("Patchy opacity in the right upper lobe. Small left "
                                          "pleural effusion. Right upper lobe pneumonia.")
    assert model_text(example.report, "impression") == "Right upper lobe pneumonia."
    np.testing.assert_allclose(example.boxes[0], np.array([10, 10, 50, 50]) / 224, atol=1e-6)
    nested = tmp_path / "nested"
    fx.write_imagenome(str(nested / "ig"), str(nested / "mimic"), nested=True)
    source = _quiet(get_source, "chest_imagenome", root=str(nested / "ig"),
                    images_root=str(nested / "mimic"))
    assert source.scene_graph_dir.endswith(os.path.join("scene_graph", "scene_graph"))
    assert _quiet(source.__getitem__, 0).example_id == info["a"]


def test_imagenome_errors(imagenome, tmp_path):
    root, images, _, _ = imagenome
    with pytest.raises(SourceError, match="images_root"):
        ChestImaGenome(root, "train")
    with pytest.raises(SourceError, match="files"):
        ChestImaGenome(root, "valid", images_root=str(tmp_path))
    with pytest.raises(SourceError, match="silver_dataset"):
        ChestImaGenome(str(tmp_path), "train", images_root=images)
    broken = tmp_path / "broken"
    shutil.copytree(root, broken)
    split = broken / "silver_dataset" / "splits" / "valid.csv"
    split.write_text("image_id\nabc\n")
    with pytest.raises(SourceError) as error:
        ChestImaGenome(str(broken), "valid", images_root=images)
    assert "dicom_id" in str(error.value) and str(split) in str(error.value)
    assert "image_id" in str(error.value)


def test_imagenome_helpers():
    assert region_position("right upper lung zone") == ("right", "upper")
    assert region_position("left mid lung zone") == ("left", "middle")
    assert region_position("left costophrenic angle") == ("left", "basal")
    assert region_position("right hilar structures") == ("right", "perihilar")
    assert region_position("right apical zone") == ("right", "apical")
    assert region_position("cardiac silhouette") == ("", "")
    assert attribute_finding("anatomicalfinding", "enlarged cardiac silhouette") == \
        FID("cardiomegaly")
    assert attribute_finding("disease", "pneumonia") == FID("pneumonia")
    assert attribute_finding("tubesandlines", "endotracheal tube") == FID("support_device")
    assert attribute_finding("nlp", "abnormal") == -1
    assert flatten_attributes([["a|yes|b"], ["c|no|d", "e|yes|f"]]) == \
        ["a|yes|b", "c|no|d", "e|yes|f"]

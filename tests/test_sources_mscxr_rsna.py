"""MS-CXR and RSNA pneumonia sources, and the shared DICOM reader, on official-layout fixtures."""

import csv
import os
import sys

import numpy as np
import pydicom
import pytest

sys.path.insert(0, os.path.dirname(__file__))
from fixtures import cxr_formats_a as fx  # noqa: E402

from rmc_jax.data.schema import FINDINGS, SIDES, ZONES, SIZES, finding_id  # noqa: E402
from rmc_jax.data.sources import SourceError, SourceWarning, get_source, reports  # noqa: E402
from rmc_jax.data.sources.dicom import load_dicom, read_dicom  # noqa: E402
from rmc_jax.data.sources.images import ImageDecodeError  # noqa: E402
from rmc_jax.data.sources.ms_cxr import MSCXR  # noqa: E402
from rmc_jax.data.sources.rsna import RSNAPneumonia  # noqa: E402

# ---------------------------------------------------------------------------------------------
# DICOM
# ---------------------------------------------------------------------------------------------


def test_read_dicom_monochrome2_and_monochrome1(tmp_path):
    pixels = fx.rsna_pixels(16)
    two = read_dicom(fx.write_dicom(str(tmp_path / "m2.dcm"), pixels, "MONOCHROME2"))
    one = read_dicom(fx.write_dicom(str(tmp_path / "m1.dcm"), pixels, "MONOCHROME1"))
    expected = np.round(pixels.astype(np.float64) * 255.0 / 4000.0).astype(np.uint8)
    assert two.dtype == np.uint8 and two.shape == (16, 16)
    np.testing.assert_array_equal(two, expected)
    np.testing.assert_array_equal(one, 255 - expected)
    assert one[0, 0] == 255 and one[0, -1] == 0


def test_read_dicom_rescale_and_window(tmp_path):
    pixels = np.array([[0, 500, 1000, 1500, 2000, 2500, 3000]], np.uint16)
    # modality: 2 * v - 1000 -> [-1000, 0, 1000, 2000, 3000, 4000, 5000]
    # window centre 2000, width 2001: 0 at <= 999.5, 255 above 2999.5, linear between.
    image, dataset = load_dicom(fx.write_dicom(str(tmp_path / "w.dcm"), pixels, window=(2000, 2001),
                                               slope=2, intercept=-1000))
    assert image.tolist() == [[0, 0, 0, 128, 255, 255, 255]]
    assert str(dataset.ViewPosition) == "PA"
    plain = read_dicom(fx.write_dicom(str(tmp_path / "p.dcm"), pixels, slope=2, intercept=-1000))
    assert plain.tolist() == [[0, 42, 85, 128, 170, 212, 255]]  # x * 255 / 6000, half to even


def _window_by_formula(x: np.ndarray, function: str, center: float, width: float):
    """PS3.3 C.11.2.1.2.1 (LINEAR), C.11.2.1.3.2 (LINEAR_EXACT), C.11.2.1.3.1 (SIGMOID) with
    output range [0, 1], then 0..255."""
    if function == "LINEAR":
        c, w = center - 0.5, width - 1
    else:
        c, w = center, width
    if function == "SIGMOID":
        y = 1 / (1 + np.exp(-4 * (x - center) / width))
    else:
        y = np.where(x <= c - w / 2, 0.0, np.where(x > c + w / 2, 1.0, (x - c) / w + 0.5))
    return np.round(y * 255).astype(np.uint8)


@pytest.mark.parametrize("photometric", ["MONOCHROME2", "MONOCHROME1"])
@pytest.mark.parametrize("function", ["LINEAR", "LINEAR_EXACT", "SIGMOID"])
def test_read_dicom_windows_the_rescaled_values_with_each_voi_function(tmp_path, function,
                                                                       photometric):
    from pydicom.pixels import apply_modality_lut, apply_voi_lut

    stored = (np.arange(41, dtype=np.uint16) * 100).reshape(1, 41)  # 0..4000 of 12 bits
    path = fx.write_dicom(str(tmp_path / "w.dcm"), stored, photometric, window=(3000, 2000),
                          slope=2, intercept=-1000, voi_function=function)
    image = read_dicom(path)
    expected = _window_by_formula(stored * 2.0 - 1000, function, 3000, 2000)
    if photometric == "MONOCHROME1":
        expected = 255 - expected
    np.testing.assert_array_equal(image, expected)
    # pydicom's functions by hand, its output range [y_min, y_max] (12 bits stored, rescaled)
    # mapped onto 0..255.
    dataset = pydicom.dcmread(path)
    windowed = apply_voi_lut(apply_modality_lut(dataset.pixel_array, dataset), dataset)
    low, high = 0 * 2 - 1000, 4095 * 2 - 1000
    by_hand = np.round((windowed - low) / (high - low) * 255).astype(np.uint8)
    np.testing.assert_array_equal(image, by_hand if photometric == "MONOCHROME2"
                                  else 255 - by_hand)
    if function == "SIGMOID":  # no hard cut-off at the window's lower edge (x = 1000)
        assert 0 < by_hand[0, 10] < 30


@pytest.mark.parametrize("vr", ["US", "OW"])
def test_read_dicom_applies_a_voi_lut_to_the_rescaled_values(tmp_path, vr):
    lut = (np.arange(401) ** 2 // 40).astype(np.uint16)  # input values 100..500
    stored = (np.arange(41, dtype=np.uint16) * 10).reshape(1, 41)  # 0..400, rescaled 100..500
    path = fx.write_dicom(str(tmp_path / "l.dcm"), stored, slope=1, intercept=100,
                          window=(50, 10), voi_lut=(100, lut, vr))  # the LUT takes precedence
    expected = np.round(lut[stored[0]] / lut.max() * 255).astype(np.uint8)  # lut[x - 100]
    np.testing.assert_array_equal(read_dicom(path)[0], expected)


def test_read_dicom_ignores_a_window_pydicom_rejects_with_a_warning(tmp_path):
    stored = (np.arange(41, dtype=np.uint16) * 100).reshape(1, 41)
    path = fx.write_dicom(str(tmp_path / "z.dcm"), stored, window=(50, 0.5))
    with pytest.warns(SourceWarning, match=r"ignored the VOI LUT / window of .*z\.dcm.*Width"):
        image = read_dicom(path)
    np.testing.assert_array_equal(image, np.round(stored / 4000 * 255).astype(np.uint8))


def test_read_dicom_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="absent.dcm"):
        read_dicom(tmp_path / "absent.dcm")
    (tmp_path / "bad.dcm").write_bytes(b"not a dicom file at all" * 10)
    with pytest.raises(ImageDecodeError, match="bad.dcm"):
        read_dicom(tmp_path / "bad.dcm")
    path = fx.write_dicom(str(tmp_path / "cut.dcm"), fx.rsna_pixels(16))
    data = open(path, "rb").read()
    (tmp_path / "cut.dcm").write_bytes(data[:-100])  # truncated pixel data
    with pytest.raises(ImageDecodeError, match="cut.dcm"):
        read_dicom(tmp_path / "cut.dcm")


# ---------------------------------------------------------------------------------------------
# MS-CXR
# ---------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def mscxr(tmp_path_factory):
    root = tmp_path_factory.mktemp("mscxr")
    fx.write_ms_cxr(str(root / "ms-cxr"))
    fx.write_mimic_cxr(str(root / "jpg"), reports_root=str(root / "reports"))
    return root


def test_ms_cxr_through_registry(mscxr):
    source = get_source("ms_cxr", root=str(mscxr / "ms-cxr"))  # default split 'train'
    assert len(source) == 1
    example = source[0]
    assert example.validate() is example and example.example_id == "ms1"
    assert example.image.dtype == np.uint8 and example.image.shape == (250, 500)  # resized JPG
    np.testing.assert_allclose(example.boxes, [[0.1, 0.1, 0.3, 0.3],
                                               [0.4, 0.6, 0.5, 0.7],
                                               [0.7, 0.7, 0.95, 1.0]], atol=1e-6)
    assert example.boxes.dtype == np.float32
    assert example.captions == ("Right lower lobe pneumonia", "Right lower lobe pneumonia",
                                "small left pleural effusion")
    assert [FINDINGS[i] for i in example.finding_ids] == ["pneumonia", "pneumonia",
                                                          "pleural_effusion"]
    assert [SIDES[i] for i in example.side_ids] == ["right", "right", "left"]
    assert [ZONES[i] for i in example.zone_ids[:2]] == ["lower", "lower"]
    assert example.zone_ids[2] == -1 and SIZES[example.size_ids[2]] == "small"
    names = source.label_names
    assert example.labels[names.index("Pneumonia")] == 1
    assert example.labels[names.index("Pleural Effusion")] == 1
    assert example.label_mask.sum() == 2 and example.report == ""


def test_ms_cxr_splits_and_reports(mscxr):
    (example,) = list(MSCXR(mscxr / "ms-cxr", split="test", reports_root=mscxr / "reports"))
    assert example.example_id == "ms2" and example.captions == ("Enlarged cardiac silhouette",)
    assert example.finding_ids.tolist() == [finding_id("Cardiomegaly")]
    np.testing.assert_allclose(example.boxes, [[0.3, 0.4, 0.7, 0.9]], atol=1e-6)
    assert reports.model_text(example.report) == "Small right pleural effusion."  # s52000001
    source = MSCXR(mscxr / "ms-cxr", split="all", reports_root=mscxr / "reports")
    assert len(source) == 2 and source[0].report.endswith("No acute cardiopulmonary process.")
    assert len(MSCXR(mscxr / "ms-cxr", split="validation")) == 0


def test_ms_cxr_images_root_and_no_split_column(tmp_path):
    fx.write_ms_cxr(str(tmp_path / "ms"), images_root=str(tmp_path / "mimic"), with_split=False,
                    resize=4)
    with pytest.raises(SourceError, match="split='all'"):
        MSCXR(tmp_path / "ms", images_root=tmp_path / "mimic")
    source = MSCXR(tmp_path / "ms", split="all", images_root=tmp_path / "mimic")
    assert len(source) == 2 and source[0].image.shape == (125, 250)
    np.testing.assert_allclose(source[0].boxes[0], [0.1, 0.1, 0.3, 0.3], atol=1e-6)
    with pytest.raises(SourceError, match="ms1.jpg"):
        MSCXR(tmp_path / "ms", split="all")  # images not under root


def test_ms_cxr_blank_image_size_is_an_error(tmp_path):
    fx.write_ms_cxr(str(tmp_path), resize=2)  # files are 500 x 250: their size would move boxes
    path = tmp_path / "MS_CXR_Local_Alignment_v1.1.0.csv"
    rows = list(csv.reader(open(path)))
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(rows[0])
        writer.writerow(["ms1", "Edema", "mild pulmonary edema", rows[1][3], 50, 25, 100, 50, "",
                         "", "train"])
    with pytest.raises(SourceError, match=r"v1\.1\.0\.csv:2: column 'image_width' is ''"):
        MSCXR(tmp_path)


def test_ms_cxr_errors(tmp_path):
    with pytest.raises(SourceError, match="MS_CXR_Local_Alignment") as error:
        MSCXR(tmp_path / "absent")
    assert str(tmp_path / "absent") in str(error.value)
    with pytest.raises(SourceError, match="no MS-CXR CSV found"):
        MSCXR(tmp_path)
    fx.write_ms_cxr(str(tmp_path))
    path = tmp_path / "MS_CXR_Local_Alignment_v1.1.0.csv"
    path.write_text(path.read_text().replace("label_text", "phrase", 1))
    with pytest.raises(SourceError, match=r"\['label_text'\]") as error:
        MSCXR(tmp_path)
    assert str(path) in str(error.value) and "'phrase'" in str(error.value)


# ---------------------------------------------------------------------------------------------
# RSNA pneumonia
# ---------------------------------------------------------------------------------------------

PATIENTS = list(fx.RSNA_PATIENTS)


@pytest.fixture(scope="module")
def rsna(tmp_path_factory):
    root = tmp_path_factory.mktemp("rsna")
    fx.write_rsna(str(root))
    return root


def test_rsna_boxes_captions_labels(rsna):
    source = get_source("rsna_pneumonia", root=str(rsna))
    assert len(source) == 4 and source.label_names[0] == "Pneumonia"
    assert [r["patient_id"] for r in source.records] == PATIENTS
    example = source[1]
    assert example.validate() is example and example.example_id == PATIENTS[1]
    np.testing.assert_allclose(example.boxes, np.array(
        [[264, 152, 264 + 213, 152 + 379], [562, 152, 562 + 256, 152 + 453]]) / 1024.0,
        atol=1e-6)
    assert example.captions == ("lung opacity suggestive of pneumonia in the right upper lung zone",
                                "lung opacity suggestive of pneumonia in the left upper lung zone")
    assert [SIDES[i] for i in example.side_ids] == ["right", "left"]
    assert example.finding_ids.tolist() == [finding_id("pneumonia")] * 2
    assert example.labels.tolist() == [1, 0, 0] and example.label_mask.all()
    assert example.view == "AP"
    # MONOCHROME1: the ramp is inverted (bright on the left).
    assert example.image.dtype == np.uint8 and example.image.shape == (16, 16)
    assert example.image[0, 0] == 255 and example.image[0, -1] == 0
    assert source[0].image[0, 0] == 0 and source[0].image[0, -1] == 255

    negative = source[0]
    assert negative.boxes.shape == (0, 4) and negative.captions == ()
    assert negative.labels.tolist() == [0, 1, 0] and negative.label_mask.all()
    assert source[2].labels.tolist() == [0, 0, 1]
    third = source[3]
    assert third.captions == ("lung opacity suggestive of pneumonia in the right middle lung zone",)
    assert ZONES[third.zone_ids[0]] == "middle"


def test_rsna_png_without_class_info_and_split_csv(tmp_path):
    fx.write_rsna(str(tmp_path), image_format="png", class_info=False, size=20)
    source = RSNAPneumonia(tmp_path)
    assert source.ext == ".png" and source[0].image.shape == (20, 20)
    assert source[0].labels.tolist() == [0, 0, 0]
    assert source[0].label_mask.tolist() == [True, False, False]
    assert source[1].labels.tolist() == [1, 0, 0] and source[1].label_mask.all()
    split_csv = tmp_path / "splits.csv"
    split_csv.write_text("patientId,split\n" + "".join(
        f"{p},{'test' if i % 2 else 'train'}\n" for i, p in enumerate(PATIENTS)))
    test = RSNAPneumonia(tmp_path, split="test", split_csv=split_csv)
    assert [r["patient_id"] for r in test.records] == [PATIENTS[1], PATIENTS[3]]
    with pytest.raises(SourceError, match="split_csv"):
        RSNAPneumonia(tmp_path, split="test")


def test_rsna_errors(tmp_path):
    with pytest.raises(SourceError, match="stage_2_train_labels.csv") as error:
        RSNAPneumonia(tmp_path / "absent")
    assert str(tmp_path / "absent") in str(error.value)
    with pytest.raises(SourceError, match="stage_2_train_labels.csv"):
        RSNAPneumonia(tmp_path)
    fx.write_rsna(str(tmp_path))
    labels = tmp_path / "stage_2_train_labels.csv"
    labels.write_text(labels.read_text().replace("Target", "label", 1))
    with pytest.raises(SourceError, match=r"\['Target'\]") as error:
        RSNAPneumonia(tmp_path)
    assert str(labels) in str(error.value) and "'label'" in str(error.value)
    labels.write_text(labels.read_text().replace("label", "Target", 1))
    os.rename(tmp_path / "stage_2_train_images", tmp_path / "images")
    with pytest.raises(SourceError, match="stage_2_train_images"):
        RSNAPneumonia(tmp_path)
    assert len(RSNAPneumonia(tmp_path, images_dir=tmp_path / "images")) == 4

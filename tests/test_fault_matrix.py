"""Bad data, format by format: one table of (format, fault, expected behaviour).

Each row writes an official-layout fixture (tests/fixtures), injects one fault and asserts
one of:

* RAISES: constructing the source (or opening the split) is a SourceError whose message
  matches the pattern (file:line, column, what was expected);
* WARNS: the source reads, with a SourceWarning matching the pattern (the count and the
  file:line of every repair), and ``check`` holds;
* EXAMPLE: the source reads, ``src[index]`` raises an error matching the pattern (naming the
  file, or shard and record) while every other example loads;
* READS: the source reads without warnings and ``check`` holds.

Patterns are format strings over the fixture's context: ``{line}`` is the injected record's
first line, path keys are escaped.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import warnings
from typing import Callable

import numpy as np
import pytest

from fixtures import cxr_formats_a as fx_a
from fixtures import cxr_formats_b as fx_b
from fixtures import tfds_copies
from rmc_jax.data.sources import SourceError, SourceWarning, open_source
from rmc_jax.data.sources.chexpert import CheXpert, CheXpert5x200
from rmc_jax.data.sources.imagenome import ChestImaGenome
from rmc_jax.data.sources.iu_xray import LABEL_NAMES as IU_LABELS
from rmc_jax.data.sources.iu_xray import IUXray
from rmc_jax.data.sources.mimic_cxr import MimicCXR
from rmc_jax.data.sources.ms_cxr import MSCXR
from rmc_jax.data.sources.nih import NIH_LABELS, NIHChestXray14
from rmc_jax.data.sources.rsna import RSNAPneumonia
from rmc_jax.data.sources.vindr import VinDrCXR

RAISES, WARNS, EXAMPLE, READS = "raises", "warns", "example", "reads"


# ----------------------------------------------------------------------------------------------
# Fixtures per format: write the copy, return its context (paths, ``open``).
# ----------------------------------------------------------------------------------------------

def ms_cxr(tmp):
    fx_a.write_ms_cxr(tmp)
    csv = os.path.join(tmp, "MS_CXR_Local_Alignment_v1.1.0.csv")
    return dict(csv=csv, jpg=os.path.join(tmp, "files/p10/p10000032/s50414267/ms1.jpg"),
                open=lambda: MSCXR(tmp, split="all"),
                open_split=lambda: open_source("ms_cxr", tmp, "test"))


def rsna(tmp):
    fx_a.write_rsna(tmp)
    first = list(fx_a.RSNA_PATIENTS)[1]
    return dict(labels=os.path.join(tmp, "stage_2_train_labels.csv"),
                classes=os.path.join(tmp, "stage_2_detailed_class_info.csv"),
                dcm=os.path.join(tmp, "stage_2_train_images", first + ".dcm"),
                open=lambda: RSNAPneumonia(tmp))


def vindr(tmp):
    info = fx_b.write_vindr(tmp)
    return dict(annotations=os.path.join(tmp, "annotations", "annotations_train.csv"),
                image_labels=os.path.join(tmp, "annotations", "image_labels_train.csv"),
                dicom=os.path.join(tmp, "train", info["mono1"] + ".dicom"),
                open=lambda: VinDrCXR(tmp))


def imagenome(tmp):
    info = fx_b.write_imagenome(tmp + "/ig", tmp + "/mimic")
    return dict(json=info["graphs"][info["a"]], split=os.path.join(info["splits"], "train.csv"),
                open=lambda: ChestImaGenome(tmp + "/ig", "train", images_root=tmp + "/mimic",
                                            exclude_gold=False),
                open_split=lambda: open_source("chest_imagenome", tmp + "/ig", "test",
                                               options=f"images_root={tmp}/mimic"))


def mimic(tmp):
    info = fx_a.write_mimic_cxr(tmp)
    index = {stem: os.path.join(tmp, f"mimic-cxr-2.0.0-{stem}{info['suffix']}")
             for stem in ("metadata", "split", "chexpert")}
    return dict(index, report=info["reports"]["53189527"],
                open=lambda: MimicCXR(tmp, "all", views="all"),
                open_train=lambda: MimicCXR(tmp, "train", views="all"),
                open_split=lambda: open_source("mimic_cxr", tmp, "test"))


def chexpert(tmp):
    fx_a.write_chexpert(tmp, per_class=2)
    return dict(csv=os.path.join(tmp, "CheXpert-v1.0-small", "train.csv"),
                open=lambda: CheXpert(tmp, views="all"),
                open_5x200=lambda: CheXpert5x200(tmp, per_class=2))


def iu(tmp, reports=None):
    fx_b.write_iu_xray(tmp, reports)
    return dict(xml=os.path.join(tmp, "ecgen-radiology", "2.xml"),
                png=os.path.join(tmp, "NLMCXR_png", "CXR2_IM-0652-1001.png"),
                open=lambda: IUXray(tmp, "all"))


def nih(tmp, rows=fx_b.NIH_ROWS, boxes=fx_b.NIH_BOXES):
    fx_b.write_nih(tmp, rows=rows, boxes=boxes)
    return dict(entry=os.path.join(tmp, "Data_Entry_2017.csv"),
                bbox=os.path.join(tmp, "BBox_List_2017.csv"),
                train_list=os.path.join(tmp, "train_val_list.txt"),
                open=lambda: NIHChestXray14(tmp, "all"),
                open_train=lambda: NIHChestXray14(tmp, "train"))


def tfds_copy(tmp, codec="png"):
    """Three synthetic examples in one shard of a prepared TFDS copy, images as ``codec``."""
    path = tfds_copies.write_copy(open_source("synthetic", "", "train", size=3), tmp,
                                  codec=codec)
    return dict(shard=tfds_copies.shards(path)[0],
                open=lambda: open_source("tfds:rmc_test", tmp, "train"))


# ----------------------------------------------------------------------------------------------
# Faults: each takes the context, changes the copy, may set ctx["line"].
# ----------------------------------------------------------------------------------------------

def edit(key, index, copy=False, **cells):
    """Set cells of record ``index`` of the CSV ``ctx[key]`` (or append an edited copy)."""
    def inject(ctx):
        ctx["line"] = fx_a.edit_csv(ctx[key], index, copy, **cells)
    return inject


def write_bytes(key, data: bytes):
    def inject(ctx):
        with open(ctx[key], "wb") as handle:
            handle.write(data)
    return inject


def append_text(key, text: str):
    def inject(ctx):
        with open(ctx[key], "a") as handle:
            handle.write(text)
    return inject


def edit_json(key, change: Callable[[dict], None]):
    def inject(ctx):
        with open(ctx[key]) as handle:
            graph = json.load(handle)
        change(graph)
        with open(ctx[key], "w") as handle:
            json.dump(graph, handle)
    return inject


def dicom(key, pixels, **options):
    def inject(ctx):
        fx_a.write_dicom(ctx[key], pixels, **options)
    return inject


def corrupt_record(ctx):
    """Zero 8 bytes inside the first record's chunk (riegeli: chunk data hash mismatch)."""
    tfds_copies.flip_bytes(ctx["shard"])


def truncate_record_png(ctx):
    """Rewrite the shard with record 1's PNG (or JPEG) cut short (its other features still
    parse)."""
    tfds_copies.cut_pngs(ctx["shard"], 60, records={1})


def truncate_record_pixels(ctx):
    """Rewrite the shard with record 1's raw pixels cut short (its stored shape no longer
    fits them)."""
    tfds_copies.cut_pngs(ctx["shard"], 60, records={1}, feature="image/value")


def nothing(ctx):
    pass


def with_nih_rows(*rows):
    return lambda tmp: nih(tmp, rows=list(fx_b.NIH_ROWS) + list(rows))


def with_nih_boxes(*boxes):
    return lambda tmp: nih(tmp, boxes=list(fx_b.NIH_BOXES) + list(boxes))


def iu_with_major(*terms):
    reports = dict(fx_b.IU_REPORTS)
    reports[2] = dict(reports[2], major=list(terms))
    return lambda tmp: iu(tmp, reports)


def iu_image_twice(tmp):
    reports = dict(fx_b.IU_REPORTS)
    reports[10] = dict(reports[10], images=reports[10]["images"] + ["CXR2_IM-0652-1001"])
    return iu(tmp, reports)


# ----------------------------------------------------------------------------------------------
# Checks
# ----------------------------------------------------------------------------------------------

def boxes_of(count, index=0):
    def check(source):
        assert source[index].boxes.shape == (count, 4)
    return check


def rsna_contradiction(source):
    example = source[1]
    assert example.labels[0] == 1 and example.label_mask.tolist() == [True, False, False]


def mimic_first_row_used(source):
    example = next(source[i] for i in range(len(source)) if source[i].example_id == "d3-ap")
    assert example.labels[source.label_names.index("Atelectasis")] == 1


def iu_typo_unknown(source):
    example = source[2]
    known = {IU_LABELS[i] for i in np.flatnonzero(example.label_mask)}
    assert known == {"cardiomegaly"} and example.labels[IU_LABELS.index("cardiomegaly")] == 1


def nih_typo_unknown(source):
    example = source[len(source) - 1]
    assert example.label_mask.tolist() == [n == "Edema" for n in NIH_LABELS]


def nih_metadata_named(source):
    assert source.metadata(0)["original_size"] == (2682, 2749)
    with pytest.raises(SourceError, match=r"Data_Entry_2017\.csv:6: column "
                                          r"'OriginalImageWidth' is '2500px'"):
        source.metadata(4)


def rgb_is_gray(source):
    image = source[1].image
    assert image.shape == (16, 16) and image.dtype == np.uint8


def chexpert_age_unknown(source):
    assert source.records[0]["age"] is None and source.records[1]["age"] == 60


# ----------------------------------------------------------------------------------------------
# The table
# ----------------------------------------------------------------------------------------------

@dataclasses.dataclass
class Fault:
    format: str
    fault: str
    setup: Callable
    inject: Callable
    expect: str
    pattern: str
    check: Callable | None = None
    index: int = 0          # EXAMPLE: the unreadable example
    open: str = "open"      # which context entry builds the source


RGB = np.dstack([fx_a.gradient(16, 16, 1)] * 3)
TRUNCATED_PNG = b"\x89PNG\r\n\x1a\n truncated"
ROWS = [
    # MS-CXR ------------------------------------------------------------------------------------
    Fault("ms_cxr", "blank image_width", ms_cxr, edit("csv", 0, image_width=""), RAISES,
          "{csv}:{line}: column 'image_width' is ''; expected the size of the original image"),
    Fault("ms_cxr", "zero image_height", ms_cxr, edit("csv", 1, image_height="0"), RAISES,
          "{csv}:{line}: column 'image_height' is '0'"),
    Fault("ms_cxr", "negative image_width", ms_cxr, edit("csv", 2, image_width="-1000"),
          RAISES, "{csv}:{line}: column 'image_width' is '-1000'"),
    Fault("ms_cxr", "non-numeric x", ms_cxr, edit("csv", 1, x="12a"), RAISES,
          "{csv}:{line}: column 'x' is '12a'; expected a number"),
    Fault("ms_cxr", "w=inf", ms_cxr, edit("csv", 1, w="inf"), RAISES,
          "{csv}:{line}: column 'w' is 'inf'"),
    Fault("ms_cxr", "one dicom_id, two paths", ms_cxr,
          edit("csv", 2, path="files/p10/p10000032/s50414267/other.jpg"), RAISES,
          "{csv}:{line}: dicom_id ms1 has path '.*other.jpg', but line 2 gives it"),
    Fault("ms_cxr", "inverted box", ms_cxr, edit("csv", 1, w="-50"), WARNS,
          r"MS-CXR: dropped 1 box\(es\).*: {csv}:{line} \(inverted: \[400, 300, 350, 350\]\)",
          boxes_of(2)),
    Fault("ms_cxr", "empty box", ms_cxr, edit("csv", 1, h="0"), WARNS,
          r"dropped 1 box\(es\).*{csv}:{line} \(empty", boxes_of(2)),
    Fault("ms_cxr", "box outside the image", ms_cxr, edit("csv", 1, x="1500"), WARNS,
          r"dropped 1 box\(es\).*{csv}:{line} \(outside the 1000x500 image", boxes_of(2)),
    Fault("ms_cxr", "box partly outside", ms_cxr, edit("csv", 1, x="950"), WARNS,
          r"clipped 1 box\(es\).*{csv}:{line} \(partly outside the 1000x500 image",
          boxes_of(3)),
    Fault("ms_cxr", "duplicate row", ms_cxr, edit("csv", 0, copy=True), WARNS,
          r"MS-CXR: ignored 1 repeated row\(s\).*{csv}:{line} \(repeats line 2\)",
          boxes_of(3)),
    Fault("ms_cxr", "split typo", ms_cxr, edit("csv", 3, split="tset"), WARNS,
          r"MS-CXR: 1 row\(s\) in no split .*{csv}:{line} \('tset'\)"),
    Fault("ms_cxr", "split typo empties the split", ms_cxr, edit("csv", 3, split="tset"),
          RAISES, r"ms_cxr: split 'test' of .* has no examples; the copy holds 'train': 3, "
          r"'tset': 1", open="open_split"),
    Fault("ms_cxr", "corrupt JPEG", ms_cxr, write_bytes("jpg", b"\xff\xd8\xff not a jpeg"),
          EXAMPLE, "{jpg}"),
    # RSNA pneumonia ------------------------------------------------------------------------------
    Fault("rsna", "w=inf", rsna, edit("labels", 1, width="inf"), RAISES,
          "{labels}:{line}: column 'width' is 'inf'; expected a number of pixels"),
    Fault("rsna", "Target 2", rsna, edit("labels", 0, Target="2"), RAISES,
          "{labels}:{line}: column 'Target' is '2'; expected 0 or 1"),
    Fault("rsna", "non-numeric y", rsna, edit("labels", 2, y="n/a"), RAISES,
          "{labels}:{line}: column 'y' is 'n/a'"),
    Fault("rsna", "box outside the image", rsna, edit("labels", 2, x="1100"), WARNS,
          r"RSNA pneumonia: dropped 1 box\(es\).*{labels}:{line} \(outside the 1024x1024",
          boxes_of(1, 1)),
    Fault("rsna", "inverted box", rsna, edit("labels", 2, height="-5"), WARNS,
          r"dropped 1 box\(es\).*{labels}:{line} \(inverted", boxes_of(1, 1)),
    Fault("rsna", "box partly outside", rsna, edit("labels", 2, x="900"), WARNS,
          r"clipped 1 box\(es\).*{labels}:{line} \(partly outside", boxes_of(2, 1)),
    Fault("rsna", "duplicate row", rsna, edit("labels", 1, copy=True), WARNS,
          r"ignored 1 repeated row\(s\).*{labels}:{line} \(repeats line 3\)", boxes_of(2, 1)),
    Fault("rsna", "box on a Target 0 row", rsna, edit("labels", 0, x="1", y="1", width="9",
                                                      height="9"), WARNS,
          r"ignored the box of 1 Target 0 row\(s\): {labels}:{line}", boxes_of(0)),
    Fault("rsna", "Normal with Target 1", rsna, edit("classes", 1, **{"class": "Normal"}),
          WARNS, r"1 patient\(s\) whose class contradicts Target.*{classes}:{line} "
          r"\('Normal': Target is 1\)", rsna_contradiction),
    Fault("rsna", "multi-frame DICOM", rsna,
          dicom("dcm", np.stack([fx_a.rsna_pixels(16)] * 2)), EXAMPLE,
          r"{dcm}: pixel data of shape \(2, 16, 16\) with NumberOfFrames 2", index=1),
    Fault("rsna", "DICOM Rows tag too small", rsna,
          dicom("dcm", fx_a.rsna_pixels(16), tags={"Rows": 8}), EXAMPLE,
          r"{dcm}: pixel data of shape \(2, 8, 16\) .*Rows x Columns 8 x 16", index=1),
    Fault("rsna", "RGB DICOM stays an image", rsna, dicom("dcm", RGB, photometric="RGB"),
          READS, "", rgb_is_gray),
    # VinDr-CXR -----------------------------------------------------------------------------------
    Fault("vindr_cxr", "non-numeric x_min", vindr, edit("annotations", 0, x_min="1O0"), RAISES,
          "{annotations}:{line}: column 'x_min' is '1O0'; expected a pixel coordinate"),
    Fault("vindr_cxr", "image_labels value 2", vindr,
          edit("image_labels", 1, Cardiomegaly="2"), RAISES,
          "{image_labels}:{line}: column 'Cardiomegaly' is '2'; expected 0 or 1"),
    Fault("vindr_cxr", "image_labels value -1", vindr,
          edit("image_labels", 3, Atelectasis="-1"), RAISES,
          "{image_labels}:{line}: column 'Atelectasis' is '-1'; expected 0 or 1"),
    Fault("vindr_cxr", "image_labels non-numeric", vindr, edit("image_labels", 0, ILD="yes"),
          RAISES, "{image_labels}:{line}: column 'ILD' is 'yes'"),
    Fault("vindr_cxr", "duplicate annotation row", vindr, edit("annotations", 0, copy=True),
          WARNS, r"ignored 1 repeated annotation row\(s\).*{annotations}:{line} \(repeats line "
          r"2\)", boxes_of(5)),
    Fault("vindr_cxr", "a reader's image_labels row twice", vindr,
          edit("image_labels", 2, copy=True, Cardiomegaly="1"), WARNS,
          r"ignored 1 repeated reader row\(s\).*{image_labels}:{line} \(conflicts with line 4\)"),
    Fault("vindr_cxr", "inverted box (fixture)", vindr, nothing, WARNS,
          r"VinDr-CXR 1a2b.*: dropped 1 box\(es\).*{annotations}:9 \(inverted: "
          r"\[300, 300, 200, 400\]\)"),
    Fault("vindr_cxr", "box partly outside (fixture)", vindr, nothing, WARNS,
          r"clipped 1 box\(es\).*{annotations}:8 \(partly outside the 1000x800 image"),
    Fault("vindr_cxr", "corrupt DICOM", vindr, write_bytes("dicom", b"DICM" * 40), EXAMPLE,
          "{dicom}", index=1),
    # Chest ImaGenome -----------------------------------------------------------------------------
    Fault("chest_imagenome", "truncated scene graph", imagenome,
          write_bytes("json", b'{"objects": [{"bbox_name": "right'), EXAMPLE,
          "cannot read scene graph {json}"),
    Fault("chest_imagenome", "empty scene graph", imagenome, write_bytes("json", b""), EXAMPLE,
          "cannot read scene graph {json}"),
    Fault("chest_imagenome", "non-numeric coordinate", imagenome,
          edit_json("json", lambda g: g["objects"][0].update(original_x1="2O")), EXAMPLE,
          r"{json} object 'right upper lung zone': original_x1 is '2O'; expected a number"),
    Fault("chest_imagenome", "objects not a list of objects", imagenome,
          edit_json("json", lambda g: g.update(objects=["right lung"])), EXAMPLE,
          r"{json}: 'objects' must be a list of objects"),
    Fault("chest_imagenome", "a phrase that is not text", imagenome,
          edit_json("json", lambda g: g["attributes"][0].update(phrases=[3])), EXAMPLE,
          r"{json}: not a valid scene graph \(TypeError"),
    Fault("chest_imagenome", "object without coordinates", imagenome,
          edit_json("json", lambda g: g["objects"][0].update(
              dict.fromkeys(("x1", "original_x1")))), WARNS,
          r"dropped 2 box\(es\).*{json} object 'right upper lung zone' \(no coordinates\)"),
    Fault("chest_imagenome", "duplicate split row", imagenome, edit("split", 0, copy=True),
          WARNS, r"ignored 1 repeated split row\(s\).*{split}:{line} \(dicom_id 02aa.* repeats "
          r"line 2\)"),
    Fault("chest_imagenome", "inverted box (fixture)", imagenome, nothing, WARNS,
          r"dropped 1 box\(es\).*{json} object 'right hilar structures' \(inverted"),
    Fault("chest_imagenome", "empty split", imagenome, nothing, RAISES,
          r"chest_imagenome: split 'test' of .* has no examples; the copy holds 'test': 0, "
          r"'train': 3, 'valid': 1", open="open_split"),
    # MIMIC-CXR -----------------------------------------------------------------------------------
    Fault("mimic_cxr", "conflicting label rows of a study", mimic,
          edit("chexpert", 1, copy=True, Atelectasis="0.0"), WARNS,
          r"ignored 1 repeated study row\(s\) of the label file; the first row of each is "
          r"used: {chexpert}:{line} \(study 53189527 conflicts with line 3\)",
          mimic_first_row_used),
    Fault("mimic_cxr", "non-numeric label", mimic, edit("chexpert", 0, Edema="maybe"), RAISES,
          r"{chexpert}:{line}: column 'Edema': not a CheXpert label value"),
    Fault("mimic_cxr", "duplicate metadata row", mimic, edit("metadata", 0, copy=True), WARNS,
          r"ignored 1 repeated image row\(s\).*{metadata}:{line} \(dicom_id d1-pa repeats "
          r"line 2\)"),
    Fault("mimic_cxr", "split typo", mimic, edit("split", 4, split="tset"), WARNS,
          r"1 image\(s\) in no split .*{split}:{line} \('tset'\)", open="open_train"),
    Fault("mimic_cxr", "image without a split row", mimic, edit("split", 4, dicom_id="d9"),
          WARNS, r"1 image\(s\) of the metadata without a row in the split file.*"
          r"{metadata}:6 \(d5-ap\)", open="open_train"),
    Fault("mimic_cxr", "split typo empties the split", mimic, edit("split", 4, split="tset"),
          RAISES, r"mimic_cxr: split 'test' .* no examples; the copy holds 'train': 3, "
          r"'tset': 1, 'validate': 1", open="open_split"),
    Fault("mimic_cxr", "report not UTF-8", mimic,
          write_bytes("report", b"IMPRESSION: \xff\xfe atelectasis"), EXAMPLE,
          r"report {report} is not UTF-8 text \(byte b'\\xff' at offset 12\)", index=2),
    # CheXpert ------------------------------------------------------------------------------------
    Fault("chexpert", "non-numeric label", chexpert, edit("csv", 1, Edema="x"), RAISES,
          "{csv}:{line}: column 'Edema': not a CheXpert label value"),
    Fault("chexpert", "label 2", chexpert, edit("csv", 0, Cardiomegaly="2.0"), RAISES,
          "{csv}:{line}: column 'Cardiomegaly'"),
    Fault("chexpert", "5x200 candidate with a bad label", chexpert,
          edit("csv", 2, Consolidation="?"), RAISES,
          "{csv}:{line}: column 'Consolidation'", open="open_5x200"),
    Fault("chexpert", "duplicate Path", chexpert, edit("csv", 0, copy=True), WARNS,
          r"CheXpert: ignored 1 repeated row\(s\).*{csv}:{line} \(Path .* repeats line 2\)"),
    Fault("chexpert", "Age not a number", chexpert, edit("csv", 0, Age="sixty"), WARNS,
          r"1 Age cell\(s\) that are not a whole number.*{csv}:{line} \('sixty'\)",
          chexpert_age_unknown),
    # IU X-ray ------------------------------------------------------------------------------------
    Fault("iu_xray", "MeSH term typo", iu_with_major("Cardiomegaly", "Pleural Efusion/right"),
          nothing, WARNS, r"1 MeSH major term\(s\) that are not IU X-ray vocabulary.*{xml} "
          r"\('Pleural Efusion/right'\)", iu_typo_unknown),
    Fault("iu_xray", "report not XML", iu, write_bytes("xml", b"<eCitation><MeSH>"), RAISES,
          "cannot parse IU X-ray report {xml}"),
    Fault("iu_xray", "image in two reports", iu_image_twice, nothing, WARNS,
          r"ignored 1 image\(s\) listed by a second report.*10\.xml \(CXR2_IM-0652-1001, also "
          r"in {xml}\)"),
    Fault("iu_xray", "corrupt PNG", iu, write_bytes("png", TRUNCATED_PNG), EXAMPLE, "{png}",
          index=2),
    # NIH ChestX-ray14 ----------------------------------------------------------------------------
    Fault("nih_cxr14", "OriginalImage width '2500px' (unused column)",
          lambda tmp: nih(tmp, boxes=(), rows=list(fx_b.NIH_ROWS) + [(
              "00000004_000.png", "Mass", 0, 4, "040Y", "F", "PA", "2500px", 2048, 0.168, 0.168,
              "train")]), nothing, READS, "", nih_metadata_named),
    Fault("nih_cxr14", "non-numeric BBox cell", with_nih_boxes(("00000001_000.png", "Mass",
                                                                1, 2, "abc", 4)), nothing,
          RAISES, r"{bbox}:6: column 'BboxW' is 'abc'; expected a number of pixels"),
    Fault("nih_cxr14", "finding label typo", with_nih_rows(
        ("00000004_000.png", "Edema|Cardiomegally", 0, 4, "040Y", "F", "PA", 2500, 2048, 0.168,
         0.168, "train")), nothing, WARNS,
        r"1 finding label\(s\) outside the 14 classes.*{entry}:6 \('Cardiomegally'\)",
        nih_typo_unknown),
    Fault("nih_cxr14", "duplicate image row", with_nih_rows(fx_b.NIH_ROWS[0]), nothing, WARNS,
          r"ignored 1 repeated image row\(s\).*{entry}:6 \(Image Index 00000001_000.png "
          r"repeats line 2\)"),
    Fault("nih_cxr14", "split list names an image not in Data_Entry", nih,
          append_text("train_list", "00000009_000.png\n"), WARNS,
          r"skipping 1 image\(s\) of {train_list} that are not in {entry}: 00000009_000.png",
          open="open_train"),
    Fault("nih_cxr14", "box outside the image", with_nih_boxes(("00000001_000.png", "Mass",
                                                                1030, 10, 20, 20)), nothing,
          WARNS, r"dropped 2 box\(es\).*{bbox}:5 \(empty.*{bbox}:6 \(outside the 1024x1024"),
    Fault("nih_cxr14", "box of an image not in Data_Entry", with_nih_boxes(
        ("99999999_000.png", "Mass", 1, 2, 3, 4)), nothing, WARNS,
        r"ignored 1 box\(es\) of images not in .*{bbox}:6 \('99999999_000.png'\)"),
    # Prepared TFDS copy -----------------------------------------------------------------------
    Fault("tfds", "corrupt record (riegeli hash mismatch)", tfds_copy, corrupt_record,
          EXAMPLE, r"{shard} record 0: cannot read the record: .*Corrupted"),
    Fault("tfds", "record with a truncated PNG", tfds_copy, truncate_record_png,
          EXAMPLE, r"{shard} record 1: cannot decode the record's PNG image", index=1),
    Fault("tfds", "record with a truncated JPEG", lambda tmp: tfds_copy(tmp, "jpeg"),
          truncate_record_png, EXAMPLE, r"{shard} record 1: cannot decode the record's JPEG "
          r"image", index=1),
    Fault("tfds", "record with raw pixels cut short", lambda tmp: tfds_copy(tmp, "raw"),
          truncate_record_pixels, EXAMPLE, r"{shard} record 1: cannot decode the record's RAW "
          r"image: .* bytes for the stored shape", index=1),
]


def _pattern(template: str, ctx: dict) -> str:
    values = {k: re.escape(v) if isinstance(v, str) else v for k, v in ctx.items()}
    return template.format(**values)


@pytest.mark.parametrize("row", ROWS, ids=[f"{r.format}: {r.fault}" for r in ROWS])
def test_fault(row: Fault, tmp_path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the fixtures' own clipped/dropped boxes
        ctx = row.setup(str(tmp_path))
    row.inject(ctx)
    pattern = _pattern(row.pattern, ctx)
    build = ctx[row.open]
    if row.expect == RAISES:
        with warnings.catch_warnings(), pytest.raises(SourceError, match=pattern):
            warnings.simplefilter("ignore")  # repairs made before the error
            build()
        return
    if row.expect == WARNS:
        with pytest.warns(SourceWarning) as record:
            source = build()
            for i in range(len(source)):  # VinDr, ImaGenome check boxes on first read
                source[i]
        messages = [str(w.message) for w in record if issubclass(w.category, SourceWarning)]
        assert any(re.search(pattern, m) for m in messages), (pattern, messages)
    elif row.expect == READS:
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            source = build()
    else:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            source = build()
            with pytest.raises(Exception, match=pattern):
                source[row.index]
            for i in range(len(source)):
                if i != row.index:
                    source[i].validate()
    if row.check is not None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            row.check(source)


def test_a_mixture_part_with_an_empty_split_is_named(tmp_path):
    fx_a.write_ms_cxr(str(tmp_path / "ms"))
    fx_a.edit_csv(str(tmp_path / "ms" / "MS_CXR_Local_Alignment_v1.1.0.csv"), 3, split="tset")
    with pytest.warns(SourceWarning), pytest.raises(SourceError, match="ms_cxr: split 'test'"):
        open_source("synthetic,ms_cxr", f"ms_cxr={tmp_path / 'ms'}", "test", size=2)

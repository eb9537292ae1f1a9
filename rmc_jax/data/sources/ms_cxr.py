"""MS-CXR: phrase grounding boxes on MIMIC-CXR images (BioViL, PhysioNet v0.1 / v1.x).

Official CSV (``MS_CXR_Local_Alignment_v1.0.0.csv``, ``MS_CXR_Local_Alignment_v1.1.0.csv`` ...)::

    dicom_id, category_name, label_text, path, x, y, w, h, image_width, image_height[, split]

one row per box; boxes are xywh in the pixels of the original MIMIC-CXR image of size
image_width x image_height, so dividing by those sizes gives coordinates that are right for the
JPG on disk even when it was resized (a blank, zero or negative size is an error: the JPG's
own size would move every box of a resized copy). Several rows share an image (several boxes
per phrase, several phrases per image). ``path`` (``files/p1X/p<subject>/s<study>/
<dicom_id>.jpg``) is relative to the MIMIC-CXR-JPG root. One Example per image; each box's
caption is its label_text, its finding_id comes from category_name, side/zone/size from the
phrase's words.

Bad rows: a coordinate or size that is not a number, a blank box and a size that is not
positive are SourceErrors naming file:line and column, and so is a dicom_id given two different
paths (one of them is wrong; merging would put one image's boxes on the other). A box that is
inverted, empty or outside its image is dropped, one partly outside is clipped, and a row
repeated verbatim is ignored, each with a counted warning naming its line; so is a split value
that is not a known split (the row is in no split).
"""

from __future__ import annotations

import collections
import glob
import os
import re

import numpy as np

from rmc_jax.data.schema import Example, finding_id, side_id, size_id, zone_id
from rmc_jax.data.sources import reports as report_lib
from rmc_jax.data.sources import tabular
from rmc_jax.data.sources.base import ExampleError, Source, SourceError, warn_places
from rmc_jax.data.sources.boxes import check_boxes, warn_boxes
from rmc_jax.data.sources.images import read_image

CATEGORIES = ("Atelectasis", "Cardiomegaly", "Consolidation", "Edema", "Lung Opacity",
              "Pleural Effusion", "Pneumonia", "Pneumothorax")
COLUMNS = ("dicom_id", "category_name", "label_text", "path", "x", "y", "w", "h",
           "image_width", "image_height")
CSV_PATTERN = "MS_CXR_Local_Alignment_v*.csv"
LAYOUT = ("MS-CXR layout: <root>/MS_CXR_Local_Alignment_v*.csv with columns "
          + ", ".join(COLUMNS) + "[, split], images at <images_root>/<path> "
          "(MIMIC-CXR-JPG files/p1X/p<subject>/s<study>/<dicom_id>.jpg)")
SPLIT_ALIASES = {"train": "train", "val": "val", "valid": "val", "validate": "val",
                 "validation": "val", "test": "test"}
_STUDY = re.compile(r"p(\d+)/s(\d+)/")
_SIZE_COLUMNS = ("image_width", "image_height")
_SIZE_EXPECTED = ("the size of the original image in pixels (a positive number), the space the "
                  "box x, y, w, h is given in")


def _find_csv(root: str) -> str:
    found = sorted(glob.glob(os.path.join(root, CSV_PATTERN)))
    if not found:
        found = sorted(glob.glob(os.path.join(root, "MS_CXR*.csv")))
    if not found:
        raise SourceError(f"no MS-CXR CSV found in {root} (looked for {CSV_PATTERN}); "
                          f"expected {LAYOUT}")
    return found[-1]  # the newest version


class MSCXR(Source):
    """MS-CXR images with their grounded phrases (boxes), one Example per image.

    Args:
      root: folder holding the MS-CXR CSV.
      split: 'train', 'val' (or 'validation'/'validate'/'valid'), 'test' when the CSV has a
        split column; 'all' keeps every row (the only choice for a CSV without split column).
      csv: the CSV file (default: the newest MS_CXR_Local_Alignment_v*.csv in root).
      images_root: MIMIC-CXR-JPG root that ``path`` is relative to (default ``root``).
      reports_root: optional mimic-cxr-reports root; when given the Example's report is the
        study's FINDINGS and IMPRESSION (``reports.study_text``), else ''.
      check_files: check at construction that the first image exists.

    ``label_names`` are the MS-CXR categories (plus any other category in the CSV, in order of
    appearance); labels are 1 for an image's annotated categories, masked elsewhere (MS-CXR does
    not say a category is absent).
    """

    name = "ms_cxr"
    label_names = CATEGORIES

    def __init__(self, root, split: str = "train", *, csv=None, images_root=None,
                 reports_root=None, check_files: bool = True):
        self.root = tabular.require_dir(os.fspath(root), LAYOUT)
        self.csv = tabular.require_file(os.fspath(csv), LAYOUT) if csv else _find_csv(self.root)
        self.images_root = tabular.require_dir(
            os.fspath(images_root) if images_root is not None else self.root, LAYOUT)
        self.reports_root = None
        if reports_root is not None:
            from rmc_jax.data.sources.mimic_cxr import REPORTS_LAYOUT
            self.reports_root = tabular.require_dir(os.fspath(reports_root), REPORTS_LAYOUT)
        rows = tabular.read_csv(self.csv, COLUMNS, LAYOUT)
        has_split = bool(rows) and "split" in rows[0]
        if split == "all":
            self.split = "all"
        elif split not in SPLIT_ALIASES:
            raise ValueError(f"split must be one of {sorted(SPLIT_ALIASES)} or 'all', "
                             f"got {split!r}")
        elif not has_split:
            raise SourceError(f"{self.csv} has no 'split' column (MS-CXR v1.0.0 has none); "
                              f"use split='all' or a CSV with a split column")
        else:
            self.split = SPLIT_ALIASES[split]

        categories = list(CATEGORIES)
        images: dict[str, dict] = {}
        self._split_sizes = collections.Counter(r["split"].strip() for r in rows) if has_split \
            else {"all": len(rows)}
        unknown_splits = [f"{r.place} ({r['split']!r})" for r in rows if has_split
                          and r["split"].strip().lower() not in SPLIT_ALIASES]
        warn_places(f"MS-CXR: {{count}} row(s) in no split (expected one of "
                    f"{sorted(SPLIT_ALIASES)})", unknown_splits)
        repeats, boxes, places, sizes, regions = tabular.Repeats(), [], [], [], []
        for row in rows:
            if self.split != "all" and SPLIT_ALIASES.get(
                    row["split"].strip().lower()) != self.split:
                continue
            if not repeats.first(tuple(row.values()), row):
                continue
            x, y, w, h = (tabular.cell_float(row, c, expected="a number of pixels of the "
                                             "original image") for c in ("x", "y", "w", "h"))
            if any(np.isnan(v) for v in (x, y, w, h)):
                raise SourceError(f"{row.place}: box x, y, w, h must all be given, got "
                                  f"{[row[c] for c in ('x', 'y', 'w', 'h')]}")
            size = [tabular.cell_float(row, c, 0.0, _SIZE_EXPECTED) for c in _SIZE_COLUMNS]
            for column, value in zip(_SIZE_COLUMNS, size):
                if not value > 0:
                    raise SourceError(f"{row.place}: column {column!r} is {row[column]!r}; "
                                      f"expected {_SIZE_EXPECTED}")
            category = row["category_name"].strip()
            if category not in categories:
                categories.append(category)
            dicom_id, path = row["dicom_id"].strip(), row["path"].strip()
            for column, value in (("dicom_id", dicom_id), ("path", path)):
                if not value:
                    raise SourceError(f"{row.place}: column {column!r} is blank; expected the "
                                      f"image's {column}")
            image = images.setdefault(dicom_id, {"dicom_id": dicom_id, "path": path,
                                                 "line": row.line, "regions": [],
                                                 "categories": []})
            if image["path"] != path:
                raise SourceError(
                    f"{row.place}: dicom_id {dicom_id} has path {path!r}, but line "
                    f"{image['line']} gives it {image['path']!r}; one image has one path")
            image["categories"].append(category)
            text = report_lib.clean_text(row["label_text"])
            boxes.append((x, y, x + w, y + h))
            places.append(row.place)
            sizes.append(size)
            regions.append((image, {
                "caption": text, "finding_id": finding_id(category),
                "side_id": side_id(report_lib.parse_side(text)),
                "zone_id": zone_id(report_lib.parse_zone(text)),
                "size_id": size_id(report_lib.parse_size(text))}))
        repeats.warn("MS-CXR: ignored {count} repeated row(s)")
        checked = check_boxes(boxes, sizes, places)
        warn_boxes("MS-CXR", checked)
        kept = iter(checked.boxes)
        for (image, region), keep in zip(regions, checked.keep):
            if keep:
                image["regions"].append(dict(region, box=next(kept)))
        self.label_names = tuple(categories)
        self.records = list(images.values())
        if check_files and self.records:
            path = self.image_path(0)
            if not os.path.isfile(path):
                raise SourceError(f"image of dicom_id {self.records[0]['dicom_id']} not found: "
                                  f"{path}; expected {LAYOUT}")

    def split_sizes(self) -> dict:
        return dict(self._split_sizes)

    def __len__(self) -> int:
        return len(self.records)

    def image_path(self, index: int) -> str:
        return os.path.join(self.images_root, self.records[index]["path"])

    def report(self, index: int) -> str:
        if self.reports_root is None:
            return ""
        from rmc_jax.data.sources.mimic_cxr import REPORTS_LAYOUT, report_path
        match = _STUDY.search(self.records[index]["path"].replace("\\", "/"))
        if match is None:
            raise ExampleError(f"{self.csv}:{self.records[index]['line']}: cannot find "
                               f"p<subject>/s<study> in path {self.records[index]['path']!r}")
        path = report_path(self.reports_root, match.group(1), match.group(2))
        if not os.path.isfile(path):
            raise FileNotFoundError(f"report not found: {path}; expected {REPORTS_LAYOUT}")
        return report_lib.study_text(report_lib.read_report(path))

    def texts(self, index: int) -> tuple[str, tuple]:
        index = self._position(index)
        return self.report(index), tuple(r["caption"] for r in self.records[index]["regions"])

    def __getitem__(self, index: int) -> Example:
        index = self._position(index)
        record = self.records[index]
        image = read_image(self.image_path(index))
        regions = record["regions"]
        labels = np.zeros(len(self.label_names), np.float32)
        for category in record["categories"]:
            labels[self.label_names.index(category)] = 1.0
        report, captions = self.texts(index)
        return Example(
            example_id=record["dicom_id"], image=image, report=report,
            labels=labels, label_mask=labels > 0,
            boxes=np.array([r["box"] for r in regions], np.float32).reshape(-1, 4),
            captions=captions,
            finding_ids=np.array([r["finding_id"] for r in regions], np.int32),
            side_ids=np.array([r["side_id"] for r in regions], np.int32),
            zone_ids=np.array([r["zone_id"] for r in regions], np.int32),
            size_ids=np.array([r["size_id"] for r in regions], np.int32),
            source=self.name, view="")

"""VinDr-CXR (PhysioNet v1.0.0 or the Kaggle competition copy) with radiologists' boxes.

Official layouts under ``root``::

    PhysioNet (vindr-cxr/1.0.0):
        annotations/annotations_train.csv   image_id, rad_id, class_name, x_min, y_min, x_max, y_max
        annotations/annotations_test.csv    same columns (consensus of the test readers)
        annotations/image_labels_train.csv  image_id, rad_id, <one 0/1 column per label> (optional)
        annotations/image_labels_test.csv   (optional)
        train/<image_id>.dicom              test/<image_id>.dicom
    Kaggle (vinbigdata-chest-xray-abnormalities-detection):
        train.csv                           image_id, class_name, class_id, rad_id, x_min, ...
        train/<image_id>.dicom

Columns are looked up by name (``rad_id`` / ``rad_ID`` and ``class_id`` are optional; a CSV
without readers counts as one reader). Boxes are xyxy in the ORIGINAL DICOM pixels and the CSV
has no image size: each image's ``Columns`` x ``Rows`` are read from its DICOM header
(``pydicom.dcmread(path, stop_before_pixels=True)``, cached) the first time its regions are
asked for, and the boxes are normalised to [0, 1] xyxy then, once per image
(``boxes.check_boxes``). Boxes partly outside the image are clipped with a warning naming their
CSV lines (``clipped_boxes`` counts them); empty, inverted, blank or entirely-outside boxes are
dropped with a warning (``dropped_boxes``). Both counters cover the images whose regions have
been computed so far. A coordinate that is not a number, or a blank image_id, is a SourceError
naming file:line and column; a row repeated verbatim is ignored with a counted warning. 'No
finding' rows have blank coordinates and only record that the reader read the image. Box
classes outside the 14 below (the PhysioNet release annotates 22 local labels, e.g. 'Rib
fracture', 'Emphysema') still become regions (``finding_ids`` -1 where schema.finding_id has no
canonical meaning) but get no label column. DICOMs are decoded lazily with
``dicom.read_dicom`` (MONOCHROME1 inverted, rescale slope/intercept, VOI window).

Several radiologists (rad_id R1..R17, three per training image) annotate each image:

* ``readers='all'``: every reader's box is its own region (the same lesion appears up to three
  times).
* ``readers='merge'`` (default): boxes of the same class from *different* readers are clustered
  greedily in file order: a box joins the cluster of its class whose current mean box it overlaps
  with the largest IoU above ``iou_threshold`` (0.4) and that has no box of its reader yet; else it
  starts a new cluster. Each cluster becomes one region whose box is the coordinate-wise mean of
  its members (in normalised coordinates). Boxes of the same reader are never merged.

Labels (``label_names`` = the 14 VinDr box classes): a class is positive when more than half of
the image's readers marked it (with a box) and negative when fewer than half did; an exact tie
(possible with an even number of readers) is left unknown (``label_mask`` False). When the
official image-level table ``image_labels_<split>.csv`` exists (and ``use_image_labels``), its
per-reader 0/1 columns give the votes instead, with the same majority rule (any other value is a
SourceError naming file:line and column; a second row of one reader for one image is ignored
with a warning).

Captions: one per region, the class name plus the side and zone derived from the box position
(``box_position``): the patient's right is the image's LEFT, so a box centred at x < 0.5 is
'right'; zones are thirds of the image height (upper / middle / lower), e.g. "nodule/mass in the
right upper zone". A box that straddles the midline gets no side, one taller than two thirds of
the image no zone. The report is built from the boxes: one sentence per distinct region caption
("Nodule/mass in the right upper zone."), then one per positive class without a region, or
"No finding." when there is neither.
"""

from __future__ import annotations

import os
from typing import Sequence

import numpy as np

from rmc_jax.data import schema
from rmc_jax.data.schema import Example
from rmc_jax.data.sources import tabular
from rmc_jax.data.sources.base import Source, SourceError, warn_places
from rmc_jax.data.sources.boxes import (CheckedAsRead, box_position, check_boxes,
                                        describe_region)
from rmc_jax.data.sources.dicom import read_dicom
from rmc_jax.data.sources.images import ImageDecodeError

VINDR_CLASSES = (
    "Aortic enlargement", "Atelectasis", "Calcification", "Cardiomegaly", "Consolidation", "ILD",
    "Infiltration", "Lung Opacity", "Nodule/Mass", "Other lesion", "Pleural effusion",
    "Pleural thickening", "Pneumothorax", "Pulmonary fibrosis",
)
NO_FINDING = "No finding"
LAYOUT = ("VinDr-CXR layout: <root>/annotations/annotations_{train,test}.csv (PhysioNet) or "
          "<root>/train.csv (Kaggle) with columns image_id, class_name, rad_id, x_min, y_min, "
          "x_max, y_max, and DICOMs <root>/{train,test}/<image_id>.dicom")
ANNOTATION_COLUMNS = ("image_id", "class_name", "x_min", "y_min", "x_max", "y_max")
READER_MODES = ("all", "merge")


# ----------------------------------------------------------------------------------------------
# Reader merging and majority votes.
# ----------------------------------------------------------------------------------------------

def display_name(class_name: str) -> str:
    """Class name as written in a caption: lower case, acronyms (ILD) kept."""
    return class_name if class_name.isupper() else class_name.lower()


def box_iou(a, b) -> float:
    """IoU of two xyxy boxes."""
    iw = min(a[2], b[2]) - max(a[0], b[0])
    ih = min(a[3], b[3]) - max(a[1], b[1])
    if iw <= 0 or ih <= 0:
        return 0.0
    inter = iw * ih
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return float(inter / union) if union > 0 else 0.0


def merge_reader_boxes(boxes, classes: Sequence[str], readers: Sequence[str],
                       iou_threshold: float = 0.4):
    """Greedy cross-reader merge (see the module docstring).

    Returns (boxes float32 [M, 4], classes list[str], reader counts list[int]).
    """
    clusters: list[dict] = []
    for box, cls, reader in zip(np.asarray(boxes, np.float64).reshape(-1, 4), classes, readers):
        best, best_iou = None, iou_threshold
        for cluster in clusters:
            if cluster["class"] != cls or reader in cluster["readers"]:
                continue
            iou = box_iou(box, np.mean(cluster["boxes"], axis=0))
            if iou > best_iou:
                best, best_iou = cluster, iou
        if best is None:
            clusters.append({"class": cls, "boxes": [box], "readers": {reader}})
        else:
            best["boxes"].append(box)
            best["readers"].add(reader)
    merged = np.array([np.mean(c["boxes"], axis=0) for c in clusters], np.float32).reshape(-1, 4)
    return merged, [c["class"] for c in clusters], [len(c["boxes"]) for c in clusters]


def majority(votes: int, readers: int) -> tuple[float, bool]:
    """(label, known) from ``votes`` of ``readers``: > half 1, < half 0, a tie unknown."""
    if readers <= 0:
        return 0.0, False
    if 2 * votes > readers:
        return 1.0, True
    if 2 * votes < readers:
        return 0.0, True
    return 0.0, False


def _sentence(text: str) -> str:
    text = text.strip()
    return (text[:1].upper() + text[1:] + ("" if text.endswith(".") else ".")) if text else ""


def _annotation_files(split: str) -> list[str]:
    """Where a split's annotations may be, relative to the root (PhysioNet, then Kaggle)."""
    return [os.path.join("annotations", f"annotations_{split}.csv"), f"annotations_{split}.csv",
            f"{split}.csv"]


def _vote(row, column: str) -> int:
    """A reader's 0/1 cell of image_labels_<split>.csv; anything else is a SourceError."""
    value = row[column].strip()
    if value not in ("0", "1", "0.0", "1.0"):
        raise SourceError(f"{row.place}: column {column!r} is {row[column]!r}; expected 0 or 1 "
                          f"(whether this reader found the label)")
    return int(float(value))


def _column(header: Sequence[str], *names: str) -> str | None:
    """The header column matching one of ``names`` case-insensitively, or None."""
    lookup = {name.strip().lower(): name for name in header}
    for name in names:
        if name.lower() in lookup:
            return lookup[name.lower()]
    return None


_CLASS_BY_KEY = {schema.normalise_name(name): name for name in VINDR_CLASSES}


class VinDrCXR(CheckedAsRead, Source):
    """VinDr-CXR as Examples; see the module docstring for layout, merging, labels and captions.

    Args:
      root: the dataset folder (PhysioNet ``vindr-cxr/1.0.0`` or the Kaggle competition folder).
      split: 'train' or 'test' (the official splits; the Kaggle copy only has 'train').
      readers: 'merge' (default) or 'all'.
      iou_threshold: IoU above which boxes of different readers are merged (0.4).
      use_image_labels: take labels from ``image_labels_<split>.csv`` when it exists.
    """

    name = "vindr_cxr"
    label_names = VINDR_CLASSES

    def __init__(self, root: str, split: str = "train", readers: str = "merge",
                 iou_threshold: float = 0.4, use_image_labels: bool = True,
                 missing_images: str = "error"):
        if split not in ("train", "test"):
            raise ValueError(f"VinDr-CXR split must be 'train' or 'test', got {split!r}")
        if readers not in READER_MODES:
            raise ValueError(f"readers must be one of {READER_MODES}, got {readers!r}")
        if missing_images not in ("error", "skip"):
            raise ValueError(f"missing_images must be 'error' or 'skip', got {missing_images!r}")
        self.root = tabular.require_dir(root, LAYOUT)
        self.split = split
        self.readers = readers
        self.iou_threshold = float(iou_threshold)
        self.annotations_path = tabular.find_file(self.root, _annotation_files(split), LAYOUT)
        self.image_dir = tabular.require_dir(os.path.join(self.root, split), LAYOUT)
        rows = tabular.read_csv(self.annotations_path, ANNOTATION_COLUMNS, LAYOUT)
        header = list(rows[0]) if rows else tabular.read_header(self.annotations_path)
        rad_col = _column(header, "rad_id")

        self.image_ids: list[str] = []
        self._raw: dict[str, list[tuple]] = {}  # image -> [(reader, class, x0, y0, x1, y1, place)]
        self._readers: dict[str, list[str]] = {}
        repeats = tabular.Repeats()
        for row in rows:
            image_id = row["image_id"].strip()
            if not image_id:
                raise SourceError(f"{row.place}: column 'image_id' is blank; expected the id of "
                                  f"the image (<image_id>.dicom)")
            if not repeats.first(tuple(row.values()), row):
                continue
            if image_id not in self._raw:
                self.image_ids.append(image_id)
                self._raw[image_id] = []
                self._readers[image_id] = []
            reader = row[rad_col].strip() if rad_col else ""
            if reader not in self._readers[image_id]:
                self._readers[image_id].append(reader)
            class_name = row["class_name"].strip()
            if class_name.lower() == NO_FINDING.lower():
                continue
            class_name = _CLASS_BY_KEY.get(schema.normalise_name(class_name), class_name)
            coords = tuple(tabular.cell_float(row, c, expected="a pixel coordinate (a number)")
                           for c in ANNOTATION_COLUMNS[2:])
            self._raw[image_id].append((reader, class_name) + coords + (row.place,))
        repeats.warn("VinDr-CXR: ignored {count} repeated annotation row(s)")

        self._check_images(missing_images)
        self._labels = {image_id: self._box_votes(image_id) for image_id in self.image_ids}
        self.image_labels_path = None
        if use_image_labels:
            for candidate in (os.path.join(self.root, "annotations", f"image_labels_{split}.csv"),
                              os.path.join(self.root, f"image_labels_{split}.csv")):
                if os.path.isfile(candidate):
                    self.image_labels_path = candidate
                    self._read_image_labels(candidate)
                    break
        self._sizes: dict[str, tuple[int, int]] = {}
        self._regions: dict[str, tuple] = {}

    # -- index -----------------------------------------------------------------------------

    def _check_images(self, missing_images: str) -> None:
        present = set(os.listdir(self.image_dir))
        missing = [i for i in self.image_ids if f"{i}.dicom" not in present]
        if not missing:
            return
        if missing_images == "error":
            raise SourceError(
                f"{len(missing)} image(s) of {self.annotations_path} have no DICOM in "
                f"{self.image_dir} (expected <image_id>.dicom), e.g. {missing[:3]}; pass "
                f"missing_images='skip' to leave them out")
        warn_places(f"VinDr-CXR: skipping {{count}} image(s) of {self.annotations_path} "
                    f"without a DICOM in {self.image_dir}", missing)
        missing = set(missing)
        self.image_ids = [i for i in self.image_ids if i not in missing]

    def split_sizes(self) -> dict:
        sizes = {}
        for split in ("train", "test"):
            try:
                path = tabular.find_file(self.root, _annotation_files(split))
            except SourceError:
                continue
            sizes[split] = len({r["image_id"] for r in tabular.read_csv(path)})
        return sizes

    def _box_votes(self, image_id: str):
        readers = self._readers[image_id]
        labels = np.zeros(len(VINDR_CLASSES), np.float32)
        mask = np.zeros(len(VINDR_CLASSES), bool)
        for c, class_name in enumerate(VINDR_CLASSES):
            votes = len({r for r, cls, *_ in self._raw[image_id] if cls == class_name})
            labels[c], mask[c] = majority(votes, len(readers))
        return labels, mask

    def _read_image_labels(self, path: str) -> None:
        rows = tabular.read_csv(path, ("image_id",), "VinDr-CXR image_labels_<split>.csv: "
                                "image_id, rad_id, one 0/1 column per label")
        header = list(rows[0]) if rows else tabular.read_header(path)
        by_key = {schema.normalise_name(name): name for name in header}
        missing = [c for c in VINDR_CLASSES if schema.normalise_name(c) not in by_key]
        if missing:
            raise SourceError(f"{path}: missing label column(s) {missing}; found columns {header}; "
                              f"expected image_id, rad_id and one 0/1 column per VinDr label")
        columns = [by_key[schema.normalise_name(c)] for c in VINDR_CLASSES]
        votes: dict[str, np.ndarray] = {}
        counts: dict[str, int] = {}
        reader_column = _column(header, "rad_id")
        repeats = tabular.Repeats()
        for row in rows:
            image_id = row["image_id"].strip()
            values = [_vote(row, col) for col in columns]
            reader = row[reader_column].strip() if reader_column else row.line
            if not repeats.first((image_id, reader), row, values):
                continue
            votes[image_id] = votes.get(image_id, 0) + np.array(values, int)
            counts[image_id] = counts.get(image_id, 0) + 1
        repeats.warn(f"VinDr-CXR: ignored {{count}} repeated reader row(s) of {path}")
        for image_id in self.image_ids:
            if image_id in votes:
                pairs = [majority(int(v), counts[image_id]) for v in votes[image_id]]
                self._labels[image_id] = (np.array([p[0] for p in pairs], np.float32),
                                          np.array([p[1] for p in pairs], bool))

    # -- per image -------------------------------------------------------------------------

    def image_path(self, index: int) -> str:
        return os.path.join(self.image_dir, f"{self.image_ids[index]}.dicom")

    def image_size(self, index: int) -> tuple[int, int]:
        """(width, height) = (Columns, Rows) from the DICOM header, without decoding pixels."""
        image_id = self.image_ids[index]
        if image_id not in self._sizes:
            path = self.image_path(index)
            if not os.path.exists(path):
                raise FileNotFoundError(f"DICOM file not found: {path}")
            try:
                import pydicom
                header = pydicom.dcmread(path, stop_before_pixels=True)
                self._sizes[image_id] = (int(header.Columns), int(header.Rows))
            except Exception as error:  # noqa: BLE001 - pydicom raises many types
                raise ImageDecodeError(f"cannot read Rows/Columns of DICOM {path}: {error}") \
                    from error
        return self._sizes[image_id]

    def regions(self, index: int):
        """(boxes [R, 4] normalised xyxy, class names [R], reader counts [R]) of one image.

        Computed (and its clipped and dropped boxes warned about) once per image."""
        image_id = self.image_ids[index]
        if image_id not in self._regions:
            checked = self._check(image_id, self.image_size(index))
            self.warn_and_count("VinDr-CXR", image_id, checked)
            self._regions[image_id] = self._merge(image_id, checked)
        return self._regions[image_id]

    def _check(self, image_id: str, size):
        raw = self._raw[image_id]
        return check_boxes([r[2:6] for r in raw], size, [r[6] for r in raw])

    def _merge(self, image_id: str, checked):
        """(boxes, classes, reader counts) of the kept boxes, merged across readers."""
        raw = self._raw[image_id]
        classes = [r[1] for r, k in zip(raw, checked.keep) if k]
        readers = [r[0] for r, k in zip(raw, checked.keep) if k]
        if self.readers == "merge":
            return merge_reader_boxes(checked.boxes, classes, readers, self.iou_threshold)
        return checked.boxes, classes, [1] * len(classes)

    def readers_of(self, index: int) -> list[str]:
        return list(self._readers[self.image_ids[index]])

    def __len__(self) -> int:
        return len(self.image_ids)

    def _describe(self, image_id: str, boxes, classes):
        """(report, captions, side ids, zone ids) of an image's regions; ``boxes`` None: the
        image's size is unknown, so the regions have no side or zone."""
        sides, zones, captions = [], [], []
        for k, class_name in enumerate(classes):
            side, zone = box_position(boxes[k]) if boxes is not None else ("", "")
            sides.append(schema.side_id(side))
            zones.append(schema.zone_id(zone))
            captions.append(describe_region(display_name(class_name), side, zone))
        labels = self._labels[image_id][0]
        sentences = list(dict.fromkeys(_sentence(c) for c in captions))
        for c, class_name in enumerate(VINDR_CLASSES):
            if labels[c] > 0 and class_name not in classes:
                sentences.append(_sentence(display_name(class_name)))
        report = " ".join(sentences) if sentences else "No finding."
        return report, tuple(captions), sides, zones

    def texts(self, index: int) -> tuple[str, tuple]:
        """(report, captions); reads the DICOM header for the image size (not its pixels).
        Without a readable header the regions are described without side and zone."""
        index = self._position(index)
        image_id = self.image_ids[index]
        try:
            boxes, classes, _ = self.regions(index)
        except (FileNotFoundError, ImageDecodeError):
            boxes, (_, classes, _) = None, self._merge(image_id, self._check(image_id, None))
        return self._describe(image_id, boxes, classes)[:2]

    def __getitem__(self, index: int) -> Example:
        index = self._position(index)
        image_id = self.image_ids[index]
        image = read_dicom(self.image_path(index))
        boxes, classes, _ = self.regions(index)
        report, captions, sides, zones = self._describe(image_id, boxes, classes)
        labels, mask = self._labels[image_id]
        return Example(
            example_id=image_id, image=image, report=report,
            labels=labels.copy(), label_mask=mask.copy(),
            boxes=np.asarray(boxes, np.float32).reshape(-1, 4), captions=captions,
            finding_ids=np.array([schema.finding_id(c) for c in classes], np.int32),
            side_ids=np.array(sides, np.int32), zone_ids=np.array(zones, np.int32),
            source=self.name, view="")

"""RSNA Pneumonia Detection Challenge (Kaggle 2018, stage 2; stage 1 names accepted).

Official layout under ``root``::

    stage_2_train_labels.csv          patientId, x, y, width, height, Target
    stage_2_detailed_class_info.csv   patientId, class   (optional)
    stage_2_train_images/<patientId>.dcm   (or .png / .jpg conversions with the same stem)

Several rows per patient (one per box); Target 0 rows have blank boxes. Boxes are xywh in the
1024 x 1024 pixel space of the DICOMs, so they are normalised by 1024 (right for resized PNG/JPG
conversions as well). Class info values: 'Lung Opacity', 'No Lung Opacity / Not Normal',
'Normal'.

Each box becomes a region with finding 'pneumonia' and a caption naming the patient's side and
lung zone from the box centre: patient's right = image left, so centre x < 0.5 -> 'right'; the
zone is 'upper' / 'middle' / 'lower' for centre y below 0.38 / 0.62 / above (thirds of the lung
fields, which span roughly y 0.15-0.85 of these images), e.g. "lung opacity suggestive of
pneumonia in the right lower lung zone".
"""

from __future__ import annotations

import os

import numpy as np

from rmc_jax.data.schema import Example, finding_id, side_id, zone_id
from rmc_jax.data.sources import tabular
from rmc_jax.data.sources.base import Source, SourceError
from rmc_jax.data.sources.dicom import load_dicom
from rmc_jax.data.sources.images import read_image

LABEL_NAMES = ("Pneumonia", "No Lung Opacity / Not Normal", "Normal")
CLASS_NAMES = {"lung opacity": 0, "no lung opacity / not normal": 1, "normal": 2}
LABEL_COLUMNS = ("patientId", "x", "y", "width", "height", "Target")
CLASS_COLUMNS = ("patientId", "class")
IMAGE_EXTS = (".dcm", ".png", ".jpg", ".jpeg")
BOX_SPACE = 1024.0
LAYOUT = ("RSNA pneumonia layout: <root>/stage_2_train_labels.csv (columns "
          + ", ".join(LABEL_COLUMNS) + "), <root>/stage_2_train_images/<patientId>.dcm "
          "(or .png/.jpg), optional <root>/stage_2_detailed_class_info.csv (patientId, class)")
CAPTION = "lung opacity suggestive of pneumonia"


def box_side(box) -> str:
    """Patient's side of a normalised xyxy box: image left (centre x < 0.5) is patient right."""
    return "right" if (box[0] + box[2]) / 2.0 < 0.5 else "left"


def box_zone(box) -> str:
    centre_y = (box[1] + box[3]) / 2.0
    return "upper" if centre_y < 0.38 else "middle" if centre_y < 0.62 else "lower"


def box_caption(box) -> str:
    return f"{CAPTION} in the {box_side(box)} {box_zone(box)} lung zone"


def _first_existing(root: str, names) -> str | None:
    for name in names:
        if os.path.exists(os.path.join(root, name)):
            return os.path.join(root, name)
    return None


class RSNAPneumonia(Source):
    """RSNA pneumonia images with opacity boxes, one Example per patient (image).

    Args:
      root: the competition folder (see module docstring).
      split: 'train' or 'all' (every labelled patient), or any split named in ``split_csv``.
      split_csv: optional CSV with columns patientId, split (e.g. a fixed train/val/test
        partition of the labelled patients).
      images_dir: image folder (default ``<root>/stage_2_train_images``, stage 1 accepted).
      box_space: the pixel space of the boxes (1024).
      check_files: check at construction that the first image exists (its extension, .dcm /
        .png / .jpg / .jpeg, is then used for all).

    ``label_names`` = ('Pneumonia' (Target), 'No Lung Opacity / Not Normal', 'Normal'): with the
    class-info file all three are known; without it only Pneumonia is known, plus the other two
    as 0 for Target 1 patients.
    """

    name = "rsna_pneumonia"
    label_names = LABEL_NAMES

    def __init__(self, root, split: str = "train", *, split_csv=None, images_dir=None,
                 box_space: float = BOX_SPACE, check_files: bool = True):
        self.root = tabular.require_dir(os.fspath(root), LAYOUT)
        labels_csv = _first_existing(self.root, ("stage_2_train_labels.csv",
                                                 "stage_2_train_labels.csv.gz",
                                                 "stage_1_train_labels.csv"))
        if labels_csv is None:
            raise SourceError(f"required file not found: "
                              f"{os.path.join(self.root, 'stage_2_train_labels.csv')}; "
                              f"expected {LAYOUT}")
        self.labels_csv = labels_csv
        if images_dir is None:
            images_dir = _first_existing(self.root, ("stage_2_train_images",
                                                     "stage_1_train_images"))
            if images_dir is None:
                raise SourceError(f"dataset directory not found: "
                                  f"{os.path.join(self.root, 'stage_2_train_images')}; "
                                  f"expected {LAYOUT}")
        self.images_dir = tabular.require_dir(os.fspath(images_dir), LAYOUT)
        self.box_space = float(box_space)

        patients: dict[str, dict] = {}
        for line, row in enumerate(tabular.read_csv(labels_csv, LABEL_COLUMNS, LAYOUT), start=2):
            where = f"{labels_csv}:{line}"
            patient = row["patientId"].strip()
            record = patients.setdefault(patient, {"patient_id": patient, "target": 0,
                                                   "boxes": [], "class": None})
            try:
                target = tabular.parse_int(row["Target"])
                x, y, w, h = (tabular.parse_float(row[c]) for c in ("x", "y", "width", "height"))
            except ValueError as error:
                raise SourceError(f"{where}: bad number: {error}") from error
            if target not in (0, 1):
                raise SourceError(f"{where}: Target must be 0 or 1, got {row['Target']!r}")
            if target == 1:
                record["target"] = 1
                if any(np.isnan(v) for v in (x, y, w, h)):
                    raise SourceError(f"{where}: Target 1 row without a box")
                box = np.clip(np.array([x, y, x + w, y + h], np.float64) / self.box_space, 0, 1)
                if box[2] > box[0] and box[3] > box[1]:
                    record["boxes"].append(box.astype(np.float32))

        class_csv = _first_existing(self.root, ("stage_2_detailed_class_info.csv",
                                                "stage_1_detailed_class_info.csv"))
        self.class_csv = class_csv
        if class_csv is not None:
            for line, row in enumerate(tabular.read_csv(class_csv, CLASS_COLUMNS, LAYOUT),
                                       start=2):
                name = " ".join(row["class"].strip().lower().split())
                if name not in CLASS_NAMES:
                    raise SourceError(f"{class_csv}:{line}: unknown class {row['class']!r}, "
                                      f"expected one of {sorted(CLASS_NAMES)}")
                if row["patientId"].strip() in patients:
                    patients[row["patientId"].strip()]["class"] = CLASS_NAMES[name]

        self.split = split
        keep = None
        if split_csv is not None:
            rows = tabular.read_csv(split_csv, ("patientId", "split"),
                                    "a split CSV with columns patientId, split")
            keep = {r["patientId"].strip() for r in rows if r["split"].strip() == split}
        elif split not in ("train", "all"):
            raise SourceError(f"RSNA pneumonia has labels for the train images only; split "
                              f"{split!r} needs a split_csv (patientId, split)")
        self.records = [r for r in patients.values() if keep is None or r["patient_id"] in keep]

        self.ext = ".dcm"
        if self.records:
            stem = os.path.join(self.images_dir, self.records[0]["patient_id"])
            found = [ext for ext in IMAGE_EXTS if os.path.isfile(stem + ext)]
            if found:
                self.ext = found[0]
            elif check_files:
                raise SourceError(f"image of patient {self.records[0]['patient_id']} not found: "
                                  f"tried {stem}{{{','.join(IMAGE_EXTS)}}}; expected {LAYOUT}")

    def __len__(self) -> int:
        return len(self.records)

    def image_path(self, index: int) -> str:
        return os.path.join(self.images_dir, self.records[index]["patient_id"] + self.ext)

    def _labels(self, record):
        labels, mask = np.zeros(3, np.float32), np.zeros(3, bool)
        if record["class"] is not None:
            labels[record["class"]] = 1.0
            mask[:] = True
            labels[0] = float(record["target"])  # Target is the ground truth for pneumonia
        else:
            labels[0], mask[0] = float(record["target"]), True
            if record["target"] == 1:
                mask[1:] = True  # the three classes are exclusive
        return labels, mask

    def texts(self, index: int) -> tuple[str, tuple]:
        boxes = self.records[self._position(index)]["boxes"]
        return "", tuple(box_caption(b) for b in boxes)

    def __getitem__(self, index: int) -> Example:
        index = self._position(index)
        record = self.records[index]
        path = self.image_path(index)
        view = ""
        if self.ext == ".dcm":
            image, dataset = load_dicom(path)
            view = str(dataset.get("ViewPosition", "")).strip().upper()
            view = view if view in ("PA", "AP") else ""
        else:
            image = read_image(path)
        boxes = (np.stack(record["boxes"]) if record["boxes"]
                 else np.zeros((0, 4), np.float32)).astype(np.float32)
        labels, mask = self._labels(record)
        r = len(boxes)
        return Example(
            example_id=record["patient_id"], image=image, report="", labels=labels,
            label_mask=mask, boxes=boxes, captions=self.texts(index)[1],
            finding_ids=np.full((r,), finding_id("pneumonia"), np.int32),
            side_ids=np.array([side_id(box_side(b)) for b in boxes], np.int32).reshape(r),
            zone_ids=np.array([zone_id(box_zone(b)) for b in boxes], np.int32).reshape(r),
            source=self.name, view=view)

"""RSNA Pneumonia Detection Challenge (Kaggle 2018, stage 2; stage 1 names accepted).

Official layout under ``root``::

    stage_2_train_labels.csv          patientId, x, y, width, height, Target
    stage_2_detailed_class_info.csv   patientId, class   (optional)
    stage_2_train_images/<patientId>.dcm   (or .png / .jpg conversions with the same stem)

Several rows per patient (one per box); Target 0 rows have blank boxes. Boxes are xywh in the
1024 x 1024 pixel space of the DICOMs, so they are normalised by 1024 (right for resized PNG/JPG
conversions as well). Class info values: 'Lung Opacity', 'No Lung Opacity / Not Normal',
'Normal'.

Bad rows: a Target other than 0/1, a coordinate that is not a finite number (``inf``) and a
Target 1 row without a box are SourceErrors naming file:line and column. Boxes that are
inverted, empty or outside the image are dropped and boxes partly outside clipped, a repeated
row or a box on a Target 0 row ignored, and a patient with both Target values counted as
Target 1, each with a warning naming the lines. A class that contradicts Target ('Normal' with
Target 1) or another class row of the patient leaves 'No Lung Opacity / Not Normal' and
'Normal' unknown for that patient (warned); Pneumonia always comes from Target.

Each box becomes a region with finding 'pneumonia' and a caption naming the patient's side and
lung zone from the box centre: patient's right = image left, so centre x < 0.5 -> 'right'; the
zone is 'upper' / 'middle' / 'lower' for centre y below 0.38 / 0.62 / above (thirds of the lung
fields, which span roughly y 0.15-0.85 of these images), e.g. "lung opacity suggestive of
pneumonia in the right lower lung zone".
"""

from __future__ import annotations

import collections
import os

import numpy as np

from rmc_jax.data.schema import Example, finding_id, side_id, zone_id
from rmc_jax.data.sources import tabular
from rmc_jax.data.sources.base import Source, SourceError, warn_places
from rmc_jax.data.sources.boxes import check_boxes, warn_boxes
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
CONTRADICTED = -1  # a patient's class info contradicts its Target


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

        patients = self._read_labels(labels_csv)
        class_csv = _first_existing(self.root, ("stage_2_detailed_class_info.csv",
                                                "stage_1_detailed_class_info.csv"))
        self.class_csv = class_csv
        if class_csv is not None:
            self._read_classes(class_csv, patients)

        self.split, self.split_csv = split, split_csv
        keep = None
        if split_csv is not None:
            rows = tabular.read_csv(split_csv, ("patientId", "split"),
                                    "a split CSV with columns patientId, split")
            repeats = tabular.Repeats("patientId")
            keep = {r["patientId"].strip() for r in rows
                    if repeats.first(r["patientId"].strip(), r, r["split"].strip())
                    and r["split"].strip() == split}
            repeats.warn(f"RSNA pneumonia: ignored {{count}} repeated row(s) of {split_csv}")
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

    def _read_labels(self, path: str) -> dict:
        """patientId -> record (Target, boxes normalised by ``box_space``) from the labels CSV;
        bad cells are SourceErrors, dropped/clipped boxes and odd rows counted warnings."""
        patients: dict[str, dict] = {}
        repeats, boxes, places, owners, ignored = tabular.Repeats(), [], [], [], []
        for row in tabular.read_csv(path, LABEL_COLUMNS, LAYOUT):
            patient = row["patientId"].strip()
            record = patients.setdefault(patient, {"patient_id": patient, "targets": set(),
                                                   "boxes": [], "class": None})
            target = tabular.cell_int(row, "Target", expected="0 or 1")
            if target not in (0, 1):
                raise SourceError(f"{row.place}: column 'Target' is {row['Target']!r}; "
                                  f"expected 0 or 1")
            x, y, w, h = (tabular.cell_float(row, c, expected=f"a number of pixels in the "
                                             f"{self.box_space:g} x {self.box_space:g} image")
                          for c in ("x", "y", "width", "height"))
            if not repeats.first(tuple(row.values()), row):
                continue
            record["targets"].add((target, row.line))
            if target == 0:
                if not all(np.isnan(v) for v in (x, y, w, h)):
                    ignored.append(f"{row.place} (Target 0 with a box)")
                continue
            if any(np.isnan(v) for v in (x, y, w, h)):
                raise SourceError(f"{row.place}: Target 1 row without a box (x, y, width, "
                                  f"height must all be given)")
            boxes.append((x, y, x + w, y + h))
            places.append(row.place)
            owners.append(record)
        repeats.warn("RSNA pneumonia: ignored {count} repeated row(s)")
        warn_places("RSNA pneumonia: ignored the box of {count} Target 0 row(s)", ignored)
        checked = check_boxes(boxes, (self.box_space, self.box_space), places)
        warn_boxes("RSNA pneumonia", checked)
        kept = iter(checked.boxes)
        for record, keep in zip(owners, checked.keep):
            if keep:
                record["boxes"].append(next(kept))
        mixed = []
        for record in patients.values():
            targets = record.pop("targets")
            record["target"] = max(t for t, _ in targets)
            if len({t for t, _ in targets}) > 1:
                mixed.append(f"{path}:{min(line for t, line in targets if t == 0)} "
                             f"({record['patient_id']})")
        warn_places("RSNA pneumonia: {count} patient(s) with both Target 0 and Target 1 rows "
                    "(Target 1 is used)", mixed)
        return patients

    def _read_classes(self, path: str, patients: dict) -> None:
        """Each patient's class from the detailed class info (one row per box, so repeats are
        normal); a class that contradicts Target leaves the two classes besides Pneumonia
        unknown."""
        seen, contradictions = {}, []
        for row in tabular.read_csv(path, CLASS_COLUMNS, LAYOUT):
            name = " ".join(row["class"].strip().lower().split())
            if name not in CLASS_NAMES:
                raise SourceError(f"{row.place}: column 'class' is {row['class']!r}; expected "
                                  f"one of {sorted(CLASS_NAMES)}")
            patient = patients.get(row["patientId"].strip())
            if patient is None or patient["class"] == CONTRADICTED:
                continue
            first = seen.setdefault(patient["patient_id"], (name, row.line))
            if first[0] != name:
                why = f"conflicts with line {first[1]}"
            elif (CLASS_NAMES[name] == 0) != (patient["target"] == 1):
                why = f"Target is {patient['target']}"
            else:
                patient["class"] = CLASS_NAMES[name]
                continue
            contradictions.append(f"{row.place} ({row['class']!r}: {why})")
            patient["class"] = CONTRADICTED
        warn_places("RSNA pneumonia: {count} patient(s) whose class contradicts Target or "
                    "another class row; their Pneumonia label comes from Target, the other "
                    "two are unknown", contradictions)

    def split_sizes(self) -> dict:
        if self.split_csv is None:
            return {"train": len(self.records)}
        return dict(collections.Counter(r["split"].strip() for r in tabular.read_csv(
            self.split_csv, ("patientId", "split"))))

    def __len__(self) -> int:
        return len(self.records)

    def image_path(self, index: int) -> str:
        return os.path.join(self.images_dir, self.records[index]["patient_id"] + self.ext)

    def _labels(self, record):
        labels, mask = np.zeros(3, np.float32), np.zeros(3, bool)
        if record["class"] == CONTRADICTED:
            labels[0], mask[0] = float(record["target"]), True
        elif record["class"] is not None:
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

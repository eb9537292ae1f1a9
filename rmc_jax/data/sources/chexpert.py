"""CheXpert (v1.0 and v1.0-small), its test-set label files, and the CheXpert 5x200 set.

Official layout; ``root`` is either the parent folder or the dataset folder itself::

    CheXpert-v1.0-small/train.csv    Path, Sex, Age, Frontal/Lateral, AP/PA, <14 labels>
    CheXpert-v1.0-small/valid.csv
    CheXpert-v1.0-small/train/patient00001/study1/view1_frontal.jpg

``Path`` starts with ``CheXpert-v1.0-small/`` or ``CheXpert-v1.0/`` (or has no prefix); it is
resolved against the root whichever of the two it is. Labels: 1.0 present, 0.0 absent, -1.0
uncertain, blank unknown (masked).

Test split: the first of ``test_labels.csv``, ``groundtruth.csv``, ``test.csv`` found (in the
dataset folder or the root), image-level with a ``Path`` column or study-level with a ``Study``
column (``CheXpert-v1.0/test/patient64741/study1``; the study's images are listed from its
folder). At least the 5 competition labels must be present; other label columns are used when
present and masked otherwise. Sex / Age / Frontal/Lateral / AP/PA are optional there (the view
is read from the file name).

CheXpert 5x200 ("GLoRIA-style 5x200", the definition pinned here): from ``train.csv``, frontal
images only (Frontal/Lateral == 'Frontal') that are positive (1.0) for exactly one of the 5
competition labels (Atelectasis, Cardiomegaly, Consolidation, Edema, Pleural Effusion) while
the other four are 0.0 or blank (an image with -1 among the 5 is excluded); candidates sorted by
Path, then per class (in that order) ``per_class`` = 200 are drawn without replacement with
``numpy.random.default_rng(seed)``, default seed 0. ``build_chexpert_5x200`` writes them to a CSV
that ``CheXpert5x200(root, csv=...)`` reads as a single-label, 5-class set.
"""

from __future__ import annotations

import csv
import glob
import os
import re

import numpy as np

from rmc_jax.data.schema import Example
from rmc_jax.data.sources import tabular
from rmc_jax.data.sources.base import Source, SourceError, warn_places
from rmc_jax.data.sources.images import read_image

CHEXPERT_LABELS = (
    "No Finding", "Enlarged Cardiomediastinum", "Cardiomegaly", "Lung Opacity", "Lung Lesion",
    "Edema", "Consolidation", "Pneumonia", "Atelectasis", "Pneumothorax", "Pleural Effusion",
    "Pleural Other", "Fracture", "Support Devices",
)
COMPETITION_LABELS = ("Atelectasis", "Cardiomegaly", "Consolidation", "Edema", "Pleural Effusion")
DATASET_DIRS = ("CheXpert-v1.0-small", "CheXpert-v1.0")
TRAIN_COLUMNS = ("Path", "Sex", "Age", "Frontal/Lateral", "AP/PA") + CHEXPERT_LABELS
TEST_FILES = ("test_labels.csv", "groundtruth.csv", "test.csv")
SPLIT_FILES = {"train": "train.csv", "valid": "valid.csv"}
SPLIT_ALIASES = {"train": "train", "training": "train", "valid": "valid", "validation": "valid",
                 "validate": "valid", "val": "valid", "test": "test"}
LAYOUT = ("CheXpert layout: <root>[/CheXpert-v1.0-small|/CheXpert-v1.0]/{train,valid}.csv with "
          "columns " + ", ".join(TRAIN_COLUMNS) + " and images at the CSV's Path "
          "(CheXpert-v1.0[-small]/train/patientXXXXX/studyN/viewN_frontal.jpg)")
_PREFIX = re.compile(r"^(?:\./)?CheXpert-v1\.0(?:-small)?/")


def _dataset_dir(root: str) -> str:
    """The folder holding train.csv: ``root`` itself or ``root/CheXpert-v1.0[-small]``."""
    if os.path.isfile(os.path.join(root, "train.csv")) or os.path.isfile(
            os.path.join(root, "valid.csv")):
        return root
    for name in DATASET_DIRS:
        if os.path.isdir(os.path.join(root, name)):
            return os.path.join(root, name)
    return root


def _strip_prefix(path: str) -> str:
    return _PREFIX.sub("", path.strip().replace("\\", "/"))


class _PathResolver:
    """Maps a CSV Path to a file, whichever of parent/dataset folder ``root`` is.

    The base folder is chosen once, from the first Path whose file exists.
    """

    def __init__(self, root: str, dataset_dir: str):
        self.bases = list(dict.fromkeys([dataset_dir, root] + [
            os.path.join(root, name) for name in DATASET_DIRS]))
        self.base = None

    def candidates(self, path: str) -> list[str]:
        return [os.path.join(base, _strip_prefix(path)) for base in self.bases]

    def calibrate(self, path: str) -> bool:
        for base, candidate in zip(self.bases, self.candidates(path)):
            if os.path.exists(candidate):
                self.base = base
                return True
        return False

    def __call__(self, path: str) -> str:
        return os.path.join(self.base or self.bases[0], _strip_prefix(path))


def _labels(row: tabular.Row, names, uncertain: str):
    values, mask = np.zeros(len(names), np.float32), np.zeros(len(names), bool)
    for i, name in enumerate(names):
        if name in row:
            values[i], mask[i] = tabular.cell_label(row, name, uncertain)
    return values, mask


def _view_from_row(row: dict, path: str) -> str:
    frontal_lateral = row.get("Frontal/Lateral", "").strip().lower()
    if not frontal_lateral:
        name = os.path.basename(path).lower()
        frontal_lateral = "lateral" if "lateral" in name else "frontal" if "frontal" in name else ""
    if frontal_lateral == "lateral":
        return "LATERAL"
    ap_pa = row.get("AP/PA", "").strip().upper()
    return ap_pa if ap_pa in ("AP", "PA") else ""


def _matches_views(views, row: dict, path: str) -> bool:
    """Whether the image is one of ``views`` ('frontal', 'lateral', 'AP', 'PA')."""
    if views is None:
        return True
    view = _view_from_row(row, path)
    frontal = (row.get("Frontal/Lateral", "").strip().lower() == "frontal"
               or not row.get("Frontal/Lateral", "").strip()
               and "frontal" in os.path.basename(path).lower())
    kind = "lateral" if view == "LATERAL" else "frontal" if frontal else ""
    return any(v == kind or v in ("AP", "PA") and v == view for v in views)


class CheXpert(Source):
    """CheXpert images with the 14 labels (no report text, no boxes), one Example per image.

    Args:
      root: parent of ``CheXpert-v1.0[-small]/`` or that folder itself.
      split: 'train', 'valid' (or 'validation'/'val'), 'test' (test_labels.csv / groundtruth.csv).
      uncertain: -1 labels: 'ignore' (masked, default), 'zeros' or 'ones'.
      views: kept views, any of 'frontal', 'lateral', 'AP', 'PA' (default ('frontal',));
        None or 'all' keeps all.
      csv: an explicit label CSV (same columns) instead of the split's file.
      check_files: check at construction that the first image exists.

    ``records[i]`` holds path, sex, age and view of example i.
    """

    name = "chexpert"
    label_names = CHEXPERT_LABELS

    def __init__(self, root, split: str = "train", *, uncertain: str = "ignore",
                 views=("frontal",), csv=None, check_files: bool = True):
        self.root = tabular.require_dir(os.fspath(root), LAYOUT)
        if uncertain not in tabular.UNCERTAIN_POLICIES:
            raise ValueError(f"uncertain must be one of {tabular.UNCERTAIN_POLICIES}, "
                             f"got {uncertain!r}")
        if split not in SPLIT_ALIASES:
            raise ValueError(f"split must be one of {sorted(SPLIT_ALIASES)}, got {split!r}")
        self.split, self.uncertain = SPLIT_ALIASES[split], uncertain
        if isinstance(views, str):
            views = None if views == "all" else (views,)
        self.views = None if views is None else tuple(v.strip().lower() if v.upper() not in (
            "AP", "PA") else v.upper() for v in views)
        self.dataset_dir = _dataset_dir(self.root)
        self._resolve = _PathResolver(self.root, self.dataset_dir)

        if csv is not None:
            self.csv = tabular.require_file(os.fspath(csv), LAYOUT)
        elif self.split == "test":
            candidates = [os.path.join(d, n) for n in TEST_FILES
                          for d in dict.fromkeys([self.dataset_dir, self.root])]
            found = [c for c in candidates if os.path.isfile(c)]
            if not found:
                raise SourceError(f"CheXpert test labels not found: tried {', '.join(candidates)};"
                                  f" expected a CSV with a Path or Study column and the labels "
                                  f"{', '.join(COMPETITION_LABELS)}")
            self.csv = found[0]
        else:
            self.csv = tabular.require_file(
                os.path.join(self.dataset_dir, SPLIT_FILES[self.split]), LAYOUT)

        header = tabular.read_header(self.csv)
        if self.split == "test" or ("Path" not in header and "Study" in header):
            key = "Path" if "Path" in header else "Study"
            rows = tabular.read_csv(self.csv, (key,) + COMPETITION_LABELS,
                                    "a CheXpert test label CSV with a Path or Study column and "
                                    "the competition labels")
        else:
            key = "Path"
            rows = tabular.read_csv(self.csv, TRAIN_COLUMNS, LAYOUT)
        self.records = self._build_records(rows, key)
        if check_files and self.records and not os.path.isfile(self.records[0]["file"]):
            first = self.records[0]["path"]
            raise SourceError(f"image for Path {first!r} not found: tried "
                              f"{', '.join(self._resolve.candidates(first))}; expected {LAYOUT}")

    def _build_records(self, rows, key: str) -> list[dict]:
        if rows:
            for row in rows[:50]:
                if self._resolve.calibrate(row[key]):
                    break
        records, repeats, ages = [], tabular.Repeats(key), []
        for row in rows:
            if not repeats.first(row[key].strip(), row, dict(row)):
                continue
            entries = [row[key].strip()]
            if key == "Study":
                folder = self._resolve(entries[0])
                if not os.path.isdir(folder):
                    raise SourceError(f"{row.place}: study folder not found: {folder}")
                entries = sorted(os.path.relpath(f, self._resolve.base or self._resolve.bases[0])
                                 for f in glob.glob(os.path.join(folder, "*.jpg")))
            for path in entries:
                if not _matches_views(self.views, row, path):
                    continue
                values, mask = _labels(row, CHEXPERT_LABELS, self.uncertain)
                try:
                    age = tabular.cell_int(row, "Age")
                except SourceError:
                    age = None
                    ages.append(f"{row.place} ({row['Age']!r})")
                records.append({"path": path, "file": self._resolve(path),
                                "sex": row.get("Sex", "").strip(), "age": age,
                                "view": _view_from_row(row, path),
                                "labels": values, "mask": mask})
        repeats.warn("CheXpert: ignored {count} repeated row(s)")
        warn_places("CheXpert: {count} Age cell(s) that are not a whole number (age left "
                    "unknown; nothing else uses it)", ages)
        return records

    def split_sizes(self) -> dict:
        files = {"train": os.path.join(self.dataset_dir, "train.csv"),
                 "valid": os.path.join(self.dataset_dir, "valid.csv")}
        return {split: len(tabular.read_csv(path)) for split, path in files.items()
                if os.path.isfile(path)}

    def __len__(self) -> int:
        return len(self.records)

    def texts(self, index: int) -> tuple[str, tuple]:
        self._position(index)
        return "", ()  # CheXpert ships labels, no report text

    def __getitem__(self, index: int) -> Example:
        record = self.records[self._position(index)]
        example_id = os.path.splitext(_strip_prefix(record["path"]))[0]
        return Example(example_id=example_id, image=read_image(record["file"]), report="",
                       labels=record["labels"].copy(), label_mask=record["mask"].copy(),
                       source=self.name, view=record["view"])


# ----------------------------------------------------------------------------------------------
# CheXpert 5x200
# ----------------------------------------------------------------------------------------------

FIVE_BY_200_COLUMNS = ("Path", "label") + COMPETITION_LABELS + ("Sex", "Age", "Frontal/Lateral",
                                                                "AP/PA")


def select_chexpert_5x200(rows, seed: int = 0, per_class: int = 200,
                          allow_fewer: bool = False, where: str = "train.csv") -> list[dict]:
    """The pinned 5x200 rule applied to train.csv rows -> the chosen rows with a 'label' key."""
    candidates = {name: [] for name in COMPETITION_LABELS}
    for row in rows:
        if row.get("Frontal/Lateral", "").strip() != "Frontal":
            continue
        cells = [tabular.cell_label(row, name, "ignore") for name in COMPETITION_LABELS]
        if any(not known and row[name].strip() for (_, known), name in
               zip(cells, COMPETITION_LABELS)):
            continue  # uncertain (-1) among the 5
        numbers = [value for value, _ in cells]
        if sum(numbers) != 1.0:
            continue
        candidates[COMPETITION_LABELS[numbers.index(1.0)]].append(row)
    rng = np.random.default_rng(seed)
    chosen = []
    for name in COMPETITION_LABELS:
        pool = sorted(candidates[name], key=lambda r: r["Path"])
        if len(pool) < per_class and not allow_fewer:
            counts = {k: len(v) for k, v in candidates.items()}
            raise SourceError(f"{where}: only {len(pool)} frontal images are positive for exactly "
                              f"'{name}' among the 5 competition labels, {per_class} requested "
                              f"(candidates per class: {counts}); pass allow_fewer=True to keep "
                              f"them all")
        picks = rng.choice(len(pool), size=min(per_class, len(pool)), replace=False)
        chosen.extend(tabular.Row(dict(pool[i], label=name), where, pool[i].line)
                      for i in sorted(picks))
    return chosen


def build_chexpert_5x200(root, out_csv, seed: int = 0, per_class: int = 200,
                         allow_fewer: bool = False) -> str:
    """Write the pinned CheXpert 5x200 selection (see module docstring) to ``out_csv``.

    Columns: Path (as in train.csv), label (class name), the 5 competition labels one-hot
    (1.0/0.0), Sex, Age, Frontal/Lateral, AP/PA. Deterministic for a given train.csv and seed.
    """
    root = tabular.require_dir(os.fspath(root), LAYOUT)
    train_csv = tabular.require_file(os.path.join(_dataset_dir(root), "train.csv"), LAYOUT)
    rows = tabular.read_csv(train_csv, ("Path", "Frontal/Lateral") + COMPETITION_LABELS, LAYOUT)
    chosen = select_chexpert_5x200(rows, seed, per_class, allow_fewer, train_csv)
    out_csv = os.fspath(out_csv)
    os.makedirs(os.path.dirname(os.path.abspath(out_csv)), exist_ok=True)
    with open(out_csv, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(FIVE_BY_200_COLUMNS)
        for row in chosen:
            writer.writerow([row["Path"], row["label"]]
                            + ["1.0" if n == row["label"] else "0.0" for n in COMPETITION_LABELS]
                            + [row.get(c, "") for c in ("Sex", "Age", "Frontal/Lateral", "AP/PA")])
    return out_csv


class CheXpert5x200(Source):
    """CheXpert 5x200 as a single-label 5-class set (labels one-hot over COMPETITION_LABELS).

    The pinned definition is the module docstring's "GLoRIA-style 5x200". ``csv`` is a file from
    ``build_chexpert_5x200``; without it the selection is made in memory from ``train.csv`` with
    ``seed`` / ``per_class`` / ``allow_fewer``. ``split`` is accepted for the registry and
    ignored: the set is always drawn from train.csv and used for evaluation.
    """

    name = "chexpert_5x200"
    label_names = COMPETITION_LABELS

    def __init__(self, root, split: str = "test", *, csv=None, seed: int = 0,
                 per_class: int = 200, allow_fewer: bool = False, check_files: bool = True):
        del split
        self.root = tabular.require_dir(os.fspath(root), LAYOUT)
        dataset_dir = _dataset_dir(self.root)
        self._resolve = _PathResolver(self.root, dataset_dir)
        if csv is None:
            train_csv = tabular.require_file(os.path.join(dataset_dir, "train.csv"), LAYOUT)
            rows = tabular.read_csv(train_csv, ("Path", "Frontal/Lateral") + COMPETITION_LABELS,
                                    LAYOUT)
            rows = select_chexpert_5x200(rows, seed, per_class, allow_fewer, train_csv)
            self.csv = None
        else:
            self.csv = tabular.require_file(
                os.fspath(csv), "a CheXpert 5x200 CSV written by build_chexpert_5x200 (columns "
                + ", ".join(FIVE_BY_200_COLUMNS[:2]) + ")")
            rows = tabular.read_csv(self.csv, ("Path", "label"),
                                    "a CheXpert 5x200 CSV written by build_chexpert_5x200")
        self.records = []
        for row in rows:
            label = row["label"].strip()
            if label not in COMPETITION_LABELS:
                raise SourceError(f"{row.place}: column 'label' is {row['label']!r}; expected "
                                  f"one of {COMPETITION_LABELS}")
            self.records.append({"path": row["Path"].strip(), "label": label,
                                 "view": _view_from_row(row, row["Path"])})
        for row in self.records[:50]:
            if self._resolve.calibrate(row["path"]):
                break
        for record in self.records:
            record["file"] = self._resolve(record["path"])
        if check_files and self.records and not os.path.isfile(self.records[0]["file"]):
            first = self.records[0]["path"]
            raise SourceError(f"image for Path {first!r} not found: tried "
                              f"{', '.join(self._resolve.candidates(first))}; expected {LAYOUT}")

    def __len__(self) -> int:
        return len(self.records)

    def class_index(self, index: int) -> int:
        return COMPETITION_LABELS.index(self.records[index]["label"])

    def texts(self, index: int) -> tuple[str, tuple]:
        self._position(index)
        return "", ()

    def __getitem__(self, index: int) -> Example:
        record = self.records[self._position(index)]
        labels = np.zeros(len(COMPETITION_LABELS), np.float32)
        labels[COMPETITION_LABELS.index(record["label"])] = 1.0
        return Example(example_id=os.path.splitext(_strip_prefix(record["path"]))[0],
                       image=read_image(record["file"]), report="", labels=labels,
                       label_mask=np.ones(len(COMPETITION_LABELS), bool), source=self.name,
                       view=record["view"])

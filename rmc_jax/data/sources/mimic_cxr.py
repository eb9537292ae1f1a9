"""MIMIC-CXR-JPG (v2.0.0 / v2.1.0) with MIMIC-CXR free-text reports.

Official layout under ``root`` (the ``mimic-cxr-jpg/2.x.0`` folder)::

    files/p10/p10000032/s50414267/02aa804e-bde0afdd-112c0b34-7bc16630-4e384014.jpg
    mimic-cxr-2.0.0-metadata.csv.gz   dicom_id, subject_id, study_id, ViewPosition, Rows, ...
    mimic-cxr-2.0.0-split.csv.gz      dicom_id, study_id, subject_id, split (train/validate/test)
    mimic-cxr-2.0.0-chexpert.csv.gz   subject_id, study_id, <14 CheXpert labels> (1/0/-1/blank)
    mimic-cxr-2.0.0-negbio.csv.gz     same columns, NegBio labeler

(plain ``.csv`` is accepted as well). Reports come from ``mimic-cxr-reports.zip`` extracted as
``files/p10/p10000032/s50414267.txt`` under ``reports_root`` (default: ``root``; the ``files``
folder itself is accepted too). The ``p1X`` folder is 'p' + the first two digits of the subject
id. Several images of a study share its report; the report is its FINDINGS and IMPRESSION
under their headers (``reports.study_text``; the pipeline's ``report_sections`` picks from them).

Bad rows: a label cell other than 1 / 0 / -1 / blank is a SourceError naming file:line and
column. A second row for one study in the label file, or for one image in the metadata or split
file, is ignored with a warning naming its line and whether it repeats or contradicts the first
(which is used). A split value that is none of train / validate / test leaves that image out of
every split, with a warning naming the line. A report that is not UTF-8 makes its examples
unreadable (``ExampleError`` naming the file; the pipeline skips and counts them).
"""

from __future__ import annotations

import collections
import os

import numpy as np

from rmc_jax.data.schema import Example
from rmc_jax.data.sources import reports as report_lib
from rmc_jax.data.sources import tabular
from rmc_jax.data.sources.base import Source, SourceError, warn_places
from rmc_jax.data.sources.chexpert import CHEXPERT_LABELS
from rmc_jax.data.sources.images import read_image
from rmc_jax.data.sources.tabular import clean_id

LAYOUT = ("MIMIC-CXR-JPG layout: <root>/files/p1X/p<subject>/s<study>/<dicom_id>.jpg with "
          "<root>/mimic-cxr-2.0.0-{metadata,split,chexpert,negbio}.csv(.gz)")
REPORTS_LAYOUT = ("mimic-cxr-reports layout: <reports_root>/files/p1X/p<subject>/s<study>.txt "
                  "(FINDINGS: / IMPRESSION: sections)")
METADATA_COLUMNS = ("dicom_id", "subject_id", "study_id", "ViewPosition")
SPLIT_COLUMNS = ("dicom_id", "study_id", "subject_id", "split")
LABEL_KEY_COLUMNS = ("subject_id", "study_id")
SPLIT_ALIASES = {
    "train": "train", "training": "train",
    "validate": "validate", "validation": "validate", "valid": "validate", "val": "validate",
    "test": "test",
}
_VIEW_NAMES = {"PA": "PA", "AP": "AP", "LATERAL": "LATERAL", "LL": "LATERAL",
               "XTABLE LATERAL": "LATERAL", "RL": "LATERAL"}


_VIEW_GROUPS = {"frontal": ("PA", "AP"), "lateral": ("LATERAL", "LL", "XTABLE LATERAL")}


def _index_file(root: str, stem: str) -> str:
    """``<root>/mimic-cxr-2.0.0-<stem>.csv.gz`` or ``.csv`` (any 2.x.0 version prefix)."""
    names = [f"mimic-cxr-2.0.0-{stem}.csv.gz", f"mimic-cxr-2.0.0-{stem}.csv"]
    for name in names:
        if os.path.isfile(os.path.join(root, name)):
            return os.path.join(root, name)
    if os.path.isdir(root):
        for name in sorted(os.listdir(root)):
            if name.startswith("mimic-cxr-2.") and name.endswith((f"-{stem}.csv.gz",
                                                                  f"-{stem}.csv")):
                return os.path.join(root, name)
    return tabular.find_file(root, names, LAYOUT)


def subject_folder(subject_id: str) -> str:
    """'10000032' -> 'p10/p10000032'."""
    subject_id = clean_id(subject_id)
    return f"p{subject_id[:2]}/p{subject_id}"


def image_path(root: str, subject_id: str, study_id: str, dicom_id: str,
               ext: str = ".jpg") -> str:
    return os.path.join(root, "files", subject_folder(subject_id), f"s{clean_id(study_id)}",
                        dicom_id + ext)


def reports_files_dir(reports_root: str) -> str:
    """The folder holding p1X/ report folders: ``<reports_root>/files`` or ``reports_root``."""
    files = os.path.join(reports_root, "files")
    return files if os.path.isdir(files) else reports_root


def report_path(reports_root: str, subject_id: str, study_id: str) -> str:
    return os.path.join(reports_files_dir(reports_root), subject_folder(subject_id),
                        f"s{clean_id(study_id)}.txt")


def view_name(view_position: str) -> str:
    """DICOM ViewPosition -> Example.view ('PA', 'AP', 'LATERAL' or '')."""
    return _VIEW_NAMES.get((view_position or "").strip().upper(), "")


class MimicCXR(Source):
    """MIMIC-CXR-JPG images with reports and CheXpert/NegBio labels, one Example per image.

    Args:
      root: the MIMIC-CXR-JPG folder (see module docstring).
      split: 'train', 'validate' (or 'validation'/'valid'/'val'), 'test' or 'all'.
      reports_root: the extracted mimic-cxr-reports folder (default ``root``).
      reports: False to skip reports (report = '').
      labeler: 'chexpert' or 'negbio' label file.
      views: ViewPosition values kept (default frontal ('PA', 'AP'); 'frontal' and 'lateral'
        name the groups); None or 'all' keeps all.
      uncertain: -1 labels: 'ignore' (masked), 'zeros' or 'ones'.
      image_ext: '.jpg' (MIMIC-CXR-JPG); '.dcm' reads MIMIC-CXR DICOMs instead.
      check_files: at construction check that the first selected image (and report) exist.

    Examples have ``label_names`` = the 14 CheXpert labels; a study missing from the label file
    has every label masked. ``example_id`` is the dicom_id.
    """

    name = "mimic_cxr"
    label_names = CHEXPERT_LABELS

    def __init__(self, root, split: str = "train", *, reports_root=None, reports: bool = True,
                 labeler: str = "chexpert", views=("PA", "AP"), uncertain: str = "ignore",
                 image_ext: str = ".jpg", check_files: bool = True):
        self.root = tabular.require_dir(os.fspath(root), LAYOUT)
        if split != "all" and split not in SPLIT_ALIASES:
            raise ValueError(f"split must be one of {sorted(SPLIT_ALIASES)} or 'all', "
                             f"got {split!r}")
        if labeler not in ("chexpert", "negbio"):
            raise ValueError(f"labeler must be 'chexpert' or 'negbio', got {labeler!r}")
        if uncertain not in tabular.UNCERTAIN_POLICIES:
            raise ValueError(f"uncertain must be one of {tabular.UNCERTAIN_POLICIES}, "
                             f"got {uncertain!r}")
        self.split = "all" if split == "all" else SPLIT_ALIASES[split]
        self.uncertain, self.labeler, self.image_ext = uncertain, labeler, image_ext
        if isinstance(views, str):
            views = None if views == "all" else (views,)
        if views is not None:
            views = {name for v in views for name in _VIEW_GROUPS.get(v.strip().lower(),
                                                                      (v.strip().upper(),))}
        self.views = views
        tabular.require_dir(os.path.join(self.root, "files"), LAYOUT)

        self.reports_root = None
        if reports:
            self.reports_root = os.fspath(reports_root) if reports_root is not None else self.root
            tabular.require_dir(self.reports_root, REPORTS_LAYOUT)
            if not os.path.isdir(reports_files_dir(self.reports_root)):
                raise SourceError(f"reports folder not found under {self.reports_root}; "
                                  f"expected {REPORTS_LAYOUT}")

        self.labels_file = _index_file(self.root, labeler)
        self._study_labels = self._read_labels(self.labels_file)
        split_of = None if self.split == "all" else self._read_split()
        self.records = []
        repeats, unsplit = tabular.Repeats("dicom_id"), []
        for row in tabular.iter_csv(_index_file(self.root, "metadata"), METADATA_COLUMNS,
                                    LAYOUT):
            dicom_id = row["dicom_id"].strip()
            if split_of is not None and dicom_id not in split_of:
                unsplit.append(f"{row.place} ({dicom_id})")
            if split_of is not None and split_of.get(dicom_id) != self.split:
                continue
            view = row["ViewPosition"].strip().upper()
            if self.views is not None and view not in self.views:
                continue
            if repeats.first(dicom_id, row, dict(row)):
                self.records.append({"dicom_id": dicom_id,
                                     "subject_id": clean_id(row["subject_id"]),
                                     "study_id": clean_id(row["study_id"]),
                                     "view": view_name(view)})
        repeats.warn("MIMIC-CXR: ignored {count} repeated image row(s)")
        warn_places("MIMIC-CXR: {count} image(s) of the metadata without a row in the split "
                    "file (in no split)", unsplit)
        if check_files and self.records:
            first = self.records[0]
            path = self.image_path(0)
            if not os.path.isfile(path):
                raise SourceError(f"image of dicom_id {first['dicom_id']} not found: {path}; "
                                  f"expected {LAYOUT}")
            if self.reports_root is not None:
                tabular.require_file(self.report_path(0), REPORTS_LAYOUT)

    def _read_labels(self, path: str) -> dict:
        """study id -> (labels, mask) from the labeler's CSV; a study's first row is used."""
        labels, repeats = {}, tabular.Repeats("study")
        for row in tabular.iter_csv(path, LABEL_KEY_COLUMNS + CHEXPERT_LABELS, LAYOUT):
            parsed = [tabular.cell_label(row, name, self.uncertain) for name in CHEXPERT_LABELS]
            if repeats.first(clean_id(row["study_id"]), row, parsed):
                labels[clean_id(row["study_id"])] = (np.array([v for v, _ in parsed], np.float32),
                                                     np.array([k for _, k in parsed], bool))
        repeats.warn("MIMIC-CXR: ignored {count} repeated study row(s) of the label file")
        return labels

    def _read_split(self) -> dict:
        """dicom_id -> canonical split (None for a split value that is none of them: warned)."""
        split_of, repeats, unknown = {}, tabular.Repeats("dicom_id"), []
        for row in tabular.iter_csv(_index_file(self.root, "split"), SPLIT_COLUMNS, LAYOUT):
            value = row["split"].strip().lower()
            if value not in SPLIT_ALIASES:
                unknown.append(f"{row.place} ({row['split']!r})")
            if repeats.first(row["dicom_id"].strip(), row, value):
                split_of[row["dicom_id"].strip()] = SPLIT_ALIASES.get(value)
        repeats.warn("MIMIC-CXR: ignored {count} repeated row(s) of the split file")
        warn_places(f"MIMIC-CXR: {{count}} image(s) in no split (the split is not one of "
                    f"{sorted(set(SPLIT_ALIASES.values()))})", unknown)
        return split_of

    def split_sizes(self) -> dict:
        sizes = collections.Counter(
            row["split"].strip() for row in tabular.iter_csv(_index_file(self.root, "split"),
                                                             SPLIT_COLUMNS, LAYOUT))
        return dict(sizes)

    def __len__(self) -> int:
        return len(self.records)

    def image_path(self, index: int) -> str:
        r = self.records[index]
        return image_path(self.root, r["subject_id"], r["study_id"], r["dicom_id"],
                          self.image_ext)

    def report_path(self, index: int) -> str:
        r = self.records[index]
        return report_path(self.reports_root or self.root, r["subject_id"], r["study_id"])

    def report(self, index: int) -> str:
        """FINDINGS + IMPRESSION of the image's study ('' when reports are disabled)."""
        if self.reports_root is None:
            return ""
        path = self.report_path(index)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"report not found: {path}; expected {REPORTS_LAYOUT}")
        return report_lib.study_text(report_lib.read_report(path))

    def texts(self, index: int) -> tuple[str, tuple]:
        return self.report(self._position(index)), ()

    def __getitem__(self, index: int) -> Example:
        index = self._position(index)
        record = self.records[index]
        path = self.image_path(index)
        if self.image_ext.lower() == ".dcm":
            from rmc_jax.data.sources.dicom import read_dicom
            image = read_dicom(path)
        else:
            image = read_image(path)
        labels, mask = self._study_labels.get(
            record["study_id"],
            (np.zeros(len(CHEXPERT_LABELS), np.float32), np.zeros(len(CHEXPERT_LABELS), bool)))
        return Example(example_id=record["dicom_id"], image=image, report=self.report(index),
                       labels=labels.copy(), label_mask=mask.copy(), source=self.name,
                       view=record["view"])

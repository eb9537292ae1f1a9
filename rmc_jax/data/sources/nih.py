"""NIH ChestX-ray14 (the NIH Clinical Center release, Box or Kaggle copy).

Official layout under ``root``::

    Data_Entry_2017.csv  or  Data_Entry_2017_v2020.csv
        Image Index, Finding Labels, Follow-up #, Patient ID, Patient Age,
        Patient Gender (2017) / Patient Sex (v2020), View Position,
        OriginalImage[Width,Height], OriginalImagePixelSpacing[x,y][, trailing empty column]
    BBox_List_2017.csv   Image Index, Finding Label, Bbox [x,y,w,h]  (optional)
    train_val_list.txt, test_list.txt   one image name per line (the official split)
    images/<name>.png    or  images_001/images/<name>.png ... images_012/images/<name>.png

Quirks handled (all columns are found by name after repairing the header):

* The bracketed headers ``OriginalImage[Width,Height]`` and ``OriginalImagePixelSpacing[x,y]``
  contain a comma. Unquoted, csv splits each into two header cells (``OriginalImage[Width``,
  ``Height]``); quoted, each is one header cell while the rows have two fields, so the header has
  fewer names than the rows have fields. Either way a bracketed group ``Base[a,b,...]`` becomes
  the columns ``BaseA``, ``BaseB``, ... (``OriginalImageWidth``, ``OriginalImageHeight``,
  ``OriginalImagePixelSpacingX``, ``OriginalImagePixelSpacingY``) matched by position.
* A trailing empty header cell / trailing empty row fields are ignored; a row with non-empty
  fields beyond the header is an error naming the file and line.
* ``Patient Gender`` (2017) or ``Patient Sex`` (v2020) -> ``metadata(i)['sex']``.
* ``Finding Labels`` are joined by '|'; 'No Finding' means all 14 labels are negative. A label
  outside the 14 (a typo) is warned about with its line, and that image's other labels are
  left unknown rather than read as negatives.
* ``OriginalImage[Width,Height]`` and the pixel spacing are used by nothing but
  ``metadata(i)``, which parses them when asked (a bad cell named by file:line and column).
* A second row for one image (Data_Entry) or a repeated box row is ignored with a warning.
* ``BBox_List_2017.csv`` has a 9-cell header (``Image Index,Finding Label,Bbox [x,y,w,h],,,``:
  the bracket group becomes ``BboxX, BboxY, BboxW, BboxH``) while its rows have 6 fields
  ``name,label,x,y,w,h`` (rows padded with empty fields are accepted too).
* The box list says 'Infiltrate' where Data_Entry says 'Infiltration'.

Boxes are xywh in the space of the released 1024x1024 PNGs, so they are normalised by 1024 (the
``box_space`` option), NOT by ``OriginalImage[Width,Height]``, which is the size of the scan
before NIH resized it. A coordinate that is not a number is a SourceError naming file:line and
column. Boxes partly outside are clipped, empty, inverted or outside ones dropped, each with a
warning naming its line (``clipped_boxes`` / ``dropped_boxes`` count them); this happens once,
at construction. Each box's caption is its finding plus side/zone from its position (see
``boxes.box_position``: the patient's right is the image's left), e.g.
"nodule in the right upper zone". NIH ships no reports: ``report`` is a sentence list built from
the labels ("Cardiomegaly. Pleural effusion." or "No finding.").

Splits: 'train' (= the official train_val_list.txt), 'test' (test_list.txt), 'all'.
"""

from __future__ import annotations

import csv
import os
import re

import numpy as np

from rmc_jax.data import schema
from rmc_jax.data.schema import Example
from rmc_jax.data.sources import tabular
from rmc_jax.data.sources.base import Source, SourceError, warn_places
from rmc_jax.data.sources.boxes import box_position, check_boxes, describe_region, warn_boxes
from rmc_jax.data.sources.images import read_image

NIH_LABELS = (
    "Atelectasis", "Cardiomegaly", "Effusion", "Infiltration", "Mass", "Nodule", "Pneumonia",
    "Pneumothorax", "Consolidation", "Edema", "Emphysema", "Fibrosis", "Pleural_Thickening",
    "Hernia",
)
NO_FINDING = "No Finding"
DATA_ENTRY_FILES = ("Data_Entry_2017_v2020.csv", "Data_Entry_2017.csv")
BBOX_FILE = "BBox_List_2017.csv"
SPLIT_FILES = {"train": "train_val_list.txt", "test": "test_list.txt"}
SPLIT_ALIASES = {"train": "train", "train_val": "train", "trainval": "train", "test": "test",
                 "all": "all"}
LAYOUT = ("NIH ChestX-ray14 layout: <root>/Data_Entry_2017.csv or Data_Entry_2017_v2020.csv, "
          "<root>/BBox_List_2017.csv, <root>/train_val_list.txt, <root>/test_list.txt, images in "
          "<root>/images/ or <root>/images_0XX/images/")
DATA_ENTRY_COLUMNS = ("Image Index", "Finding Labels")
BBOX_COLUMNS = ("Image Index", "Finding Label", "BboxX", "BboxY", "BboxW", "BboxH")
_BBOX_FALLBACK = {"BboxX": ("x",), "BboxY": ("y",), "BboxW": ("w", "width"),
                  "BboxH": ("h", "height")}
_LABEL_ALIASES = {"infiltrate": "Infiltration", "pleural_thickening": "Pleural_Thickening"}
_LABEL_BY_KEY = {schema.normalise_name(name): name for name in NIH_LABELS}
_DISPLAY = {"Effusion": "pleural effusion", "Pleural_Thickening": "pleural thickening"}


def _sub_name(base: str, sub: str) -> str:
    sub = sub.strip()
    return base.strip() + (sub[:1].upper() + sub[1:])


def repair_header(cells: list[str]) -> list[str]:
    """Header cells -> column names with bracket groups expanded ('Base[a,b]' -> BaseA, BaseB).

    Handles both a group split over several cells by an unquoted comma ('OriginalImage[Width',
    'Height]') and a quoted single cell ('OriginalImage[Width,Height]'). Empty cells stay ''.
    """
    names: list[str] = []
    group: list[str] | None = None
    for cell in cells:
        cell = cell.strip()
        if group is not None:
            group.append(cell)
            if "]" in cell:
                text = ",".join(group)
                names.extend(_expand_group(text))
                group = None
            continue
        if "[" in cell and "]" not in cell:
            group = [cell]
        elif "[" in cell:
            names.extend(_expand_group(cell))
        else:
            names.append(cell)
    if group is not None:  # unterminated bracket: keep the cells as they are
        names.extend(group)
    return names


def _expand_group(text: str) -> list[str]:
    match = re.fullmatch(r"\s*([^\[]*)\[([^\]]*)\]\s*", text)
    if not match:
        return [text]
    base, inner = match.groups()
    return [_sub_name(base, sub) for sub in inner.split(",")]


def read_nih_csv(path: str, required=(), what: str = LAYOUT,
                 fallbacks: dict | None = None) -> tuple[list[tabular.Row], list[str]]:
    """Rows (``tabular.Row``) of an NIH CSV keyed by repaired column names (``repair_header``).

    Fields are matched to names by position; trailing fields beyond the names must be empty.
    ``fallbacks`` maps a required name to alternative header names. Raises SourceError naming
    the file and the missing / found columns.
    """
    path = tabular.require_file(path, what)
    try:
        with open(path, "r", encoding="utf-8-sig", newline="") as handle:
            reader = csv.reader(handle)
            header = next(reader, None)
            if header is None:
                raise SourceError(f"{path}: empty CSV file; expected columns {list(required)}")
            names = repair_header(header)
            while names and not names[-1]:
                names.pop()
            found = [n for n in names if n]
            rename = {}
            missing = []
            for name in required:
                if name in found:
                    continue
                alternatives = [a for a in (fallbacks or {}).get(name, ()) if a in found]
                if alternatives:
                    rename[alternatives[0]] = name
                else:
                    missing.append(name)
            if missing:
                raise SourceError(f"{path}: missing required column(s) {missing}; found columns "
                                  f"{found} (raw header {header}); expected {what}")
            rows = []
            for line, cells in tabular.csv_records(reader):
                extra = [c for c in cells[len(names):] if c.strip()]
                if extra:
                    raise SourceError(f"{path}:{line}: {len(cells)} fields but only "
                                      f"{len(names)} columns {names}; unexpected {extra}")
                cells = list(cells[:len(names)]) + [""] * (len(names) - len(cells))
                rows.append(tabular.Row(((rename.get(n, n), c.strip())
                                         for n, c in zip(names, cells) if n), path, line))
    except (OSError, UnicodeDecodeError, csv.Error) as error:
        raise SourceError(f"{path}: cannot read CSV file: {error}") from error
    return rows, [rename.get(n, n) for n in found]


def canonical_label(name: str) -> str | None:
    """'Infiltrate' / 'infiltration' / 'Pleural Thickening' -> the NIH_LABELS spelling or None."""
    key = schema.normalise_name(name)
    return _LABEL_ALIASES.get(key) or _LABEL_BY_KEY.get(key)


def _read_list(path: str) -> list[str]:
    with open(path, "r", encoding="utf-8") as handle:
        return [line.strip() for line in handle if line.strip()]


class NIHChestXray14(Source):
    """NIH ChestX-ray14 as Examples; see the module docstring for layout, quirks and boxes.

    Args:
      root: the dataset folder.
      split: 'train' (official train_val_list.txt), 'test' (test_list.txt) or 'all'.
      box_space: the pixel size boxes are given in (1024, the released PNGs).
      missing_images: 'error' (SourceError at construction) or 'skip' (leave out, warn).
    """

    name = "nih_cxr14"
    label_names = NIH_LABELS

    def __init__(self, root: str, split: str = "train", box_space: float = 1024.0,
                 missing_images: str = "error"):
        if split not in SPLIT_ALIASES:
            raise ValueError(f"NIH ChestX-ray14 split must be one of {sorted(SPLIT_ALIASES)}, "
                             f"got {split!r}")
        if missing_images not in ("error", "skip"):
            raise ValueError(f"missing_images must be 'error' or 'skip', got {missing_images!r}")
        self.root = tabular.require_dir(root, LAYOUT)
        self.split = SPLIT_ALIASES[split]
        self.box_space = float(box_space)
        self.data_entry_path = tabular.find_file(self.root, DATA_ENTRY_FILES, LAYOUT)
        rows, columns = read_nih_csv(self.data_entry_path, DATA_ENTRY_COLUMNS)
        self.sex_column = next((c for c in ("Patient Gender", "Patient Sex") if c in columns), None)

        wanted = None
        if self.split != "all":
            list_path = tabular.require_file(os.path.join(self.root, SPLIT_FILES[self.split]),
                                             f"the official split list ({LAYOUT})")
            wanted = set(_read_list(list_path))

        self.records: list[dict] = []
        unknown, repeats = [], tabular.Repeats("Image Index")
        self._data_entry_names = set()
        for row in rows:
            name = row["Image Index"]
            if not name:
                raise SourceError(f"{row.place}: column 'Image Index' is blank; expected the "
                                  f"image's file name (00000001_000.png)")
            self._data_entry_names.add(name)
            if wanted is not None and name not in wanted:
                continue
            if not repeats.first(name, row, dict(row)):
                continue
            labels = np.zeros(len(NIH_LABELS), np.float32)
            mask = np.ones(len(NIH_LABELS), bool)
            for label in row["Finding Labels"].split("|"):
                label = label.strip()
                if not label or label.lower() == NO_FINDING.lower():
                    continue
                canonical = canonical_label(label)
                if canonical is None:
                    unknown.append(f"{row.place} ({label!r})")
                    mask[:] = False  # which class the label meant is unknown
                    continue
                labels[NIH_LABELS.index(canonical)] = 1.0
            self.records.append({
                "image": name, "labels": labels, "mask": mask | (labels > 0), "row": row,
                "patient_id": row.get("Patient ID", ""), "age": row.get("Patient Age", ""),
                "sex": row.get(self.sex_column, "") if self.sex_column else "",
                "view": row.get("View Position", "").upper(),
                "follow_up": row.get("Follow-up #", ""),
                "boxes": np.zeros((0, 4), np.float32), "box_labels": [],
            })
        repeats.warn("NIH ChestX-ray14: ignored {count} repeated image row(s)")
        if wanted is not None:
            warn_places(f"NIH ChestX-ray14: skipping {{count}} image(s) of {list_path} that are "
                        f"not in {self.data_entry_path}",
                        sorted(wanted - self._data_entry_names))
        warn_places("NIH ChestX-ray14: {count} finding label(s) outside the 14 classes; only "
                    "the known positives of those images are labelled", unknown)

        self._index_images(missing_images)
        self.clipped_boxes = 0
        self.dropped_boxes = 0
        self.unmatched_boxes = 0
        self.bbox_path = os.path.join(self.root, BBOX_FILE)
        if os.path.isfile(self.bbox_path):
            self._read_boxes(self.bbox_path)
        else:
            self.bbox_path = None

    def _index_images(self, missing_images: str) -> None:
        dirs = []
        if os.path.isdir(os.path.join(self.root, "images")):
            dirs.append(os.path.join(self.root, "images"))
        for entry in sorted(os.listdir(self.root)):
            if re.fullmatch(r"images_\d+", entry):
                inner = os.path.join(self.root, entry, "images")
                dirs.append(inner if os.path.isdir(inner) else os.path.join(self.root, entry))
        dirs = [d for d in dirs if os.path.isdir(d)]
        if not dirs:
            raise SourceError(f"no image folder under {self.root}; expected {LAYOUT}")
        self.image_dirs = dirs
        self._paths: dict[str, str] = {}
        for directory in dirs:
            for name in os.listdir(directory):
                self._paths.setdefault(name, os.path.join(directory, name))
        missing = [r["image"] for r in self.records if r["image"] not in self._paths]
        if not missing:
            return
        if missing_images == "error":
            raise SourceError(f"{len(missing)} image(s) listed in {self.data_entry_path} are in "
                              f"none of {dirs}, e.g. {missing[:3]}; pass missing_images='skip' "
                              f"to leave them out")
        warn_places(f"NIH ChestX-ray14: skipping {{count}} image(s) of {self.data_entry_path} "
                    f"found in none of {dirs}", missing)
        self.records = [r for r in self.records if r["image"] in self._paths]

    def _read_boxes(self, path: str) -> None:
        rows, _ = read_nih_csv(path, BBOX_COLUMNS, f"NIH {BBOX_FILE}: Image Index, Finding "
                               f"Label, Bbox [x,y,w,h] in 1024-pixel space", _BBOX_FALLBACK)
        by_name = {r["image"]: r for r in self.records}
        per_image: dict[str, list] = {}
        repeats, strangers, unknown = tabular.Repeats(), [], []
        for row in rows:
            if not repeats.first(tuple(row.values()), row):
                continue
            record = by_name.get(row["Image Index"])
            if record is None:
                if row["Image Index"] not in self._data_entry_names:
                    strangers.append(f"{row.place} ({row['Image Index']!r})")
                self.unmatched_boxes += 1  # an image of another split (or not in Data_Entry)
                continue
            label = row["Finding Label"]
            if canonical_label(label) is None:
                unknown.append(f"{row.place} ({label!r})")
            x, y, w, h = (tabular.cell_float(row, c, expected="a number of pixels")
                          for c in BBOX_COLUMNS[2:])
            per_image.setdefault(record["image"], []).append(
                (canonical_label(label) or label, (x, y, x + w, y + h), row.place))
        repeats.warn("NIH ChestX-ray14: ignored {count} repeated box row(s)")
        warn_places(f"NIH ChestX-ray14: ignored {{count}} box(es) of images not in "
                    f"{self.data_entry_path}", strangers)
        warn_places("NIH ChestX-ray14: {count} box label(s) outside the 14 classes (finding "
                    "id -1)", unknown)
        items = [(name, item) for name, image in per_image.items() for item in image]
        checked = check_boxes([b for _, (_, b, _) in items], (self.box_space,) * 2,
                              [p for _, (_, _, p) in items])
        warn_boxes("NIH ChestX-ray14", checked)
        self.clipped_boxes, self.dropped_boxes = len(checked.clipped), len(checked.dropped)
        kept = iter(checked.boxes)
        for (name, (label, _, _)), keep in zip(items, checked.keep):
            if keep:
                by_name[name]["box_labels"].append(label)
                by_name[name].setdefault("kept", []).append(next(kept))
        for record in by_name.values():
            record["boxes"] = np.array(record.pop("kept", []), np.float32).reshape(-1, 4)

    def split_sizes(self) -> dict:
        return {split: len(_read_list(os.path.join(self.root, name)))
                for split, name in SPLIT_FILES.items()
                if os.path.isfile(os.path.join(self.root, name))}

    def metadata(self, index: int) -> dict:
        """Data_Entry fields of one image (patient id, age, sex, view, original size, pixel
        spacing; the last two parsed here, a bad cell named by file:line and column)."""
        record = self.records[index]
        row = record["row"]
        meta = {k: v for k, v in record.items()
                if k not in ("labels", "mask", "boxes", "box_labels", "row")}
        meta["original_size"] = tuple(tabular.cell_int(row, c) for c in (
            "OriginalImageWidth", "OriginalImageHeight"))
        meta["pixel_spacing"] = tuple(tabular.cell_float(row, c) for c in (
            "OriginalImagePixelSpacingX", "OriginalImagePixelSpacingY"))
        return meta

    def image_path(self, index: int) -> str:
        return self._paths[self.records[index]["image"]]

    def __len__(self) -> int:
        return len(self.records)

    def _regions(self, record: dict):
        """(captions, side ids, zone ids) of an image's boxes."""
        captions, sides, zones = [], [], []
        for box, label in zip(record["boxes"], record["box_labels"]):
            side, zone = box_position(box)
            sides.append(schema.side_id(side))
            zones.append(schema.zone_id(zone))
            captions.append(describe_region(_DISPLAY.get(label, label.lower()), side, zone))
        return tuple(captions), sides, zones

    @staticmethod
    def _report(record: dict) -> str:
        """The label sentences ('Cardiomegaly. Pleural effusion.' or 'No finding.')."""
        positives = [NIH_LABELS[i] for i in np.flatnonzero(record["labels"])]
        sentences = [_DISPLAY.get(p, p.lower().replace("_", " ")) for p in positives]
        return (" ".join(s[:1].upper() + s[1:] + "." for s in sentences)
                if sentences else "No finding.")

    def texts(self, index: int) -> tuple[str, tuple]:
        record = self.records[self._position(index)]
        return self._report(record), self._regions(record)[0]

    def __getitem__(self, index: int) -> Example:
        index = self._position(index)
        record = self.records[index]
        image = read_image(self.image_path(index))
        captions, sides, zones = self._regions(record)
        view = record["view"] if record["view"] in ("PA", "AP") else ""
        return Example(
            example_id=record["image"], image=image, report=self._report(record),
            labels=record["labels"].copy(), label_mask=record["mask"].copy(),
            boxes=record["boxes"].copy(), captions=captions,
            finding_ids=np.array([schema.finding_id(lab) for lab in record["box_labels"]],
                                 np.int32),
            side_ids=np.array(sides, np.int32), zone_ids=np.array(zones, np.int32),
            source=self.name, view=view)

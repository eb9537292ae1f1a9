"""Chest ImaGenome (PhysioNet v1.0.0) silver-dataset scene graphs over MIMIC-CXR-JPG images.

Official layout under ``root`` (the ``chest-imagenome-dataset/1.0.0`` folder)::

    silver_dataset/scene_graph/<dicom_id>_SceneGraph.json   (also accepted one level deeper,
                                                            scene_graph/scene_graph/, as
                                                            scene_graph.zip extracts)
    silver_dataset/splits/train.csv, valid.csv, test.csv    dicom_id [, subject_id, study_id, path]
    silver_dataset/splits/images_to_avoid.csv               dicom_id (gold standard; optional)

and the images under a MIMIC-CXR-JPG root given as ``images_root``:
``<images_root>/files/p1X/p<subject>/s<study>/<dicom_id>.jpg``. The image path comes from the
split CSV's ``path`` column (``files/.../<dicom_id>.dcm`` -> ``.jpg``) when present, else from
its ``subject_id`` / ``study_id``, else from the scene graph's ``patient_id`` (or
``subject_id``) and ``study_id``.

A scene graph (one JSON per image; read lazily in ``__getitem__``) has ``image_id``,
``patient_id``, ``study_id``, ``viewpoint`` and

* ``objects``: one per anatomical region, with ``object_id``, ``bbox_name`` ('right upper lung
  zone', 'left costophrenic angle', 'cardiac silhouette', ...), ``x1, y1, x2, y2, width, height``
  in the 224x224 space of the resized image and ``original_x1, original_y1, original_x2,
  original_y2`` in original image pixels. (``original_width`` / ``original_height`` are the
  BOX's width and height, ``original_x2 - original_x1``, not the image's size.)
* ``attributes``: one per described region, with ``bbox_name``, ``phrases`` (the report
  sentences about it) and ``attributes``: per phrase a list of 'category|yes/no|name' strings
  (e.g. 'anatomicalfinding|yes|lung opacity', 'tubesandlines|yes|endotracheal tube').

Every ``attributes`` entry with at least one phrase and an object of the same ``bbox_name``
becomes one region: its box is the object's ``original_*`` box normalised by the decoded image's
width and height (the JSON has no image size); when those keys are missing, the 224-space
``x1..y2`` divided by 224 (``use_original_coords=False`` forces this). Boxes are converted in
``__getitem__`` (partly outside: clipped, counted in ``clipped_boxes``; empty, inverted,
outside or without coordinates: dropped, counted in ``dropped_boxes``; warned about, naming
the JSON file and object, and counted once per image). A scene graph that is not readable
JSON, lacks its lists, has entries of the wrong type or a coordinate that is not a number
makes its example unreadable (``ExampleError`` naming the file and object; the pipeline skips
and counts it). The caption is the region's phrases (whitespace-cleaned, deduplicated) joined
by a space; ``finding_ids`` the first positive attribute that maps to a canonical finding
(``attribute_finding``), else -1; side and zone come from ``bbox_name`` ('right costophrenic
angle' -> right, basal); size from the caption's wording for regions with a finding.

Labels (``label_names`` = schema.FINDINGS): 1 when any region asserts the finding ('yes'), 0 when
regions only deny it ('no'), unknown (mask False) when no region mentions it.

Report: the MIMIC-CXR report's FINDINGS and IMPRESSION (``reports.study_text``) when
``reports_root`` (a mimic-cxr-reports folder with ``files/p1X/p<subject>/s<study>.txt``) is
given and the file exists, else the scene graph's distinct phrases in order of appearance.

Splits: 'train', 'valid' ('val', 'validate' accepted), 'test'. Images listed in
``images_to_avoid.csv`` (the gold standard) are excluded when ``exclude_gold`` (default); images
whose scene graph is missing are skipped with a warning (``missing_scene_graphs``); a dicom_id
listed twice is one example (warned about).
"""

from __future__ import annotations

import json
import os
import re

import numpy as np

from rmc_jax.data import schema
from rmc_jax.data.schema import Example
from rmc_jax.data.sources import mimic_cxr
from rmc_jax.data.sources import reports as report_lib
from rmc_jax.data.sources import tabular
from rmc_jax.data.sources.base import ExampleError, Source, SourceError, warn_places
from rmc_jax.data.sources.boxes import Checked, CheckedAsRead, check_boxes
from rmc_jax.data.sources.images import ImageDecodeError, image_size, read_image
from rmc_jax.data.sources.tabular import clean_id

LAYOUT = ("Chest ImaGenome layout: <root>/silver_dataset/scene_graph/<dicom_id>_SceneGraph.json "
          "and <root>/silver_dataset/splits/{train,valid,test}.csv (column dicom_id)")
IMAGES_LAYOUT = ("MIMIC-CXR-JPG layout: <images_root>/files/p1X/p<subject>/s<study>/"
                 "<dicom_id>.jpg")
SCENE_GRAPH_SUFFIX = "_SceneGraph.json"
SPLIT_ALIASES = {"train": "train", "valid": "valid", "val": "valid", "validate": "valid",
                 "validation": "valid", "test": "test"}
RESIZED = 224.0
_ORIGINAL_KEYS = ("original_x1", "original_y1", "original_x2", "original_y2")
_RESIZED_KEYS = ("x1", "y1", "x2", "y2")
_FINDING_CATEGORIES = ("anatomicalfinding", "disease", "tubesandlines", "devices")
_DEVICE_CATEGORIES = ("tubesandlines", "devices")

# Chest ImaGenome attribute names (normalised) -> canonical finding (None: no canonical meaning).
_ATTRIBUTE_FINDINGS = {
    "airspace_opacity": "lung_opacity",
    "linear_patchy_atelectasis": "atelectasis",
    "lobar_segmental_collapse": "atelectasis",
    "pulmonary_edema_hazy_opacity": "edema",
    "increased_reticular_markings_ild_pattern": "interstitial_lung_disease",
    "interstitial_lung_disease": "interstitial_lung_disease",
    "costophrenic_angle_blunting": "pleural_other",
    "pleural_parenchymal_scarring": "fibrosis",
    "enlarged_cardiac_silhouette": "cardiomegaly",
    "mediastinal_widening": "enlarged_cardiomediastinum",
    "superior_mediastinal_mass_enlargement": "enlarged_cardiomediastinum",
    "vascular_calcification": "calcification",
    "calcified_nodule": "calcification",
    "hydropneumothorax": "pneumothorax",
    "mass_nodule_not_otherwise_specified": "nodule",
    "multiple_masses_nodules": "nodule",
    "lung_cancer": "mass",
    "rib_fracture": "fracture",
    "spinal_fracture": "fracture",
    "clavicle_fracture": "fracture",
}


def attribute_finding(category: str, name: str) -> int:
    """Index into schema.FINDINGS of an attribute ('anatomicalfinding', 'lung opacity'), or -1."""
    category = category.strip().lower()
    if category in _DEVICE_CATEGORIES:
        return schema.FINDINGS.index("support_device")
    if category not in _FINDING_CATEGORIES:
        return -1
    key = schema.normalise_name(name)
    if key in _ATTRIBUTE_FINDINGS:
        return schema.FINDINGS.index(_ATTRIBUTE_FINDINGS[key])
    return schema.finding_id(name)


def parse_attribute(text: str) -> tuple[str, str, str] | None:
    """'anatomicalfinding|yes|lung opacity' -> ('anatomicalfinding', 'yes', 'lung opacity')."""
    parts = str(text).split("|")
    if len(parts) != 3:
        return None
    return parts[0].strip(), parts[1].strip().lower(), parts[2].strip()


def flatten_attributes(value) -> list[str]:
    """The per-phrase list of lists of attribute strings (or a flat list) -> flat list."""
    if isinstance(value, str):
        return [value]
    flat: list[str] = []
    for item in value or ():
        flat.extend(flatten_attributes(item))
    return flat


def region_position(bbox_name: str) -> tuple[str, str]:
    """(side, zone) named by a Chest ImaGenome region name ('' when none)."""
    words = bbox_name.lower().split()
    side = "right" if "right" in words else "left" if "left" in words else ""
    name = bbox_name.lower()
    zone = ""
    if "apical" in words:
        zone = "apical"
    elif "upper" in words and "lung" in words:
        zone = "upper"
    elif "mid" in words and "lung" in words:
        zone = "middle"
    elif "lower" in words and "lung" in words:
        zone = "lower"
    elif any(w in name for w in ("costophrenic", "cardiophrenic", "hemidiaphragm")):
        zone = "basal"
    elif "hilar" in name:
        zone = "perihilar"
    return side, zone


class ChestImaGenome(CheckedAsRead, Source):
    """Chest ImaGenome silver scene graphs as Examples; see the module docstring.

    Args:
      root: the Chest ImaGenome folder (holding ``silver_dataset/``).
      split: 'train', 'valid' or 'test'.
      images_root: the MIMIC-CXR-JPG folder (holding ``files/``); required.
      reports_root: optional mimic-cxr-reports folder for the full report text.
      exclude_gold: leave out the images of ``splits/images_to_avoid.csv``.
      use_original_coords: normalise ``original_*`` boxes by the image size (else 224-space).
    """

    name = "chest_imagenome"
    label_names = schema.FINDINGS

    def __init__(self, root: str, split: str = "train", images_root: str | None = None,
                 reports_root: str | None = None, exclude_gold: bool = True,
                 use_original_coords: bool = True):
        if split not in SPLIT_ALIASES:
            raise ValueError(f"Chest ImaGenome split must be one of {sorted(SPLIT_ALIASES)}, "
                             f"got {split!r}")
        self.root = tabular.require_dir(root, LAYOUT)
        self.split = SPLIT_ALIASES[split]
        self.use_original_coords = use_original_coords
        silver = os.path.join(self.root, "silver_dataset")
        if not os.path.isdir(silver) and os.path.isdir(os.path.join(self.root, "scene_graph")):
            silver = self.root  # root is the silver_dataset folder itself
        silver = tabular.require_dir(silver, LAYOUT)
        graphs = tabular.require_dir(os.path.join(silver, "scene_graph"), LAYOUT)
        nested = os.path.join(graphs, "scene_graph")
        if os.path.isdir(nested):
            graphs = nested
        self.scene_graph_dir = graphs
        splits_dir = tabular.require_dir(os.path.join(silver, "splits"), LAYOUT)
        self.split_path = tabular.find_file(splits_dir, [f"{self.split}.csv",
                                                         f"{self.split}.csv.gz"], LAYOUT)
        if images_root is None:
            raise SourceError(f"Chest ImaGenome needs images_root=<MIMIC-CXR-JPG folder> for "
                              f"the images of {self.root}; expected {IMAGES_LAYOUT}")
        self.images_root = tabular.require_dir(images_root, IMAGES_LAYOUT)
        tabular.require_dir(os.path.join(self.images_root, "files"), IMAGES_LAYOUT)
        self.reports_root = reports_root
        if reports_root is not None:
            tabular.require_dir(reports_root, mimic_cxr.REPORTS_LAYOUT)

        rows = tabular.read_csv(self.split_path, ("dicom_id",),
                                f"Chest ImaGenome split CSV with a dicom_id column ({LAYOUT})")
        avoid = set()
        avoid_path = os.path.join(splits_dir, "images_to_avoid.csv")
        if exclude_gold and os.path.isfile(avoid_path):
            avoid = {r["dicom_id"].strip() for r in tabular.read_csv(avoid_path, ("dicom_id",))}
        available = {name[:-len(SCENE_GRAPH_SUFFIX)] for name in os.listdir(graphs)
                     if name.endswith(SCENE_GRAPH_SUFFIX)}
        self.records: list[dict] = []
        self.excluded_gold = 0
        missing, repeats = [], tabular.Repeats("dicom_id")
        for row in rows:
            dicom_id = row["dicom_id"].strip()
            if not dicom_id:
                raise SourceError(f"{row.place}: column 'dicom_id' is blank; expected the "
                                  f"MIMIC-CXR dicom_id of an image")
            if not repeats.first(dicom_id, row, dict(row)):
                continue
            if dicom_id in avoid:
                self.excluded_gold += 1
                continue
            if dicom_id not in available:
                missing.append(f"{row.place} ({dicom_id})")
                continue
            path = row.get("path", "").strip()
            self.records.append({
                "dicom_id": dicom_id, "subject_id": clean_id(row.get("subject_id")),
                "study_id": clean_id(row.get("study_id")),
                "path": re.sub(r"\.dcm$", ".jpg", path) if path else ""})
        repeats.warn("Chest ImaGenome: ignored {count} repeated split row(s)")
        self.missing_scene_graphs = len(missing)
        warn_places(f"Chest ImaGenome: skipped {{count}} image(s) without a scene graph in "
                    f"{graphs}", missing)

    def split_sizes(self) -> dict:
        splits = os.path.dirname(self.split_path)
        return {name.split(".")[0]: len(tabular.read_csv(os.path.join(splits, name)))
                for name in sorted(os.listdir(splits))
                if name.split(".")[0] in SPLIT_ALIASES.values()}

    def scene_graph_path(self, index: int) -> str:
        return os.path.join(self.scene_graph_dir,
                            self.records[index]["dicom_id"] + SCENE_GRAPH_SUFFIX)

    def scene_graph(self, index: int) -> dict:
        """The image's scene graph; ExampleError naming the file when it is not a readable
        JSON object with lists of 'objects' and 'attributes' (objects)."""
        path = self.scene_graph_path(index)
        try:
            with open(path, "r", encoding="utf-8") as handle:
                graph = json.load(handle)
        except (OSError, ValueError) as error:
            raise ExampleError(f"cannot read scene graph {path}: {error}") from error
        if not isinstance(graph, dict) or "objects" not in graph or "attributes" not in graph:
            keys = list(graph) if isinstance(graph, dict) else type(graph).__name__
            raise ExampleError(f"{path}: expected a scene graph with 'objects' and "
                               f"'attributes', found {keys}")
        for key in ("objects", "attributes"):
            if not isinstance(graph[key] or [], list) or not all(
                    isinstance(item, dict) for item in graph[key] or []):
                raise ExampleError(f"{path}: {key!r} must be a list of objects, found "
                                   f"{str(graph[key])[:80]}")
        return graph

    def _ids(self, record: dict, graph: dict) -> tuple[str, str]:
        subject = record["subject_id"] or clean_id(graph.get("patient_id",
                                                             graph.get("subject_id")))
        study = record["study_id"] or clean_id(graph.get("study_id"))
        return subject, study

    def image_path(self, index: int, graph: dict | None = None) -> str:
        record = self.records[index]
        if record["path"]:
            return os.path.join(self.images_root, record["path"])
        subject, study = self._ids(record, graph if graph is not None else self.scene_graph(index))
        if not subject or not study:
            raise ExampleError(f"{self.scene_graph_path(index)}: no patient_id/subject_id or "
                               f"study_id to locate the image ({IMAGES_LAYOUT})")
        return mimic_cxr.image_path(self.images_root, subject, study, record["dicom_id"])

    def _report(self, record: dict, graph: dict, phrases: list[str]) -> str:
        if self.reports_root is not None:
            subject, study = self._ids(record, graph)
            path = mimic_cxr.report_path(self.reports_root, subject, study)
            if subject and study and os.path.isfile(path):
                return report_lib.study_text(report_lib.read_report(path))
        return " ".join(dict.fromkeys(phrases))

    def _box(self, obj: dict, size, where: str):
        """(pixel xyxy, (width, height) of its space) of a scene-graph object, or (None, None);
        the space of ``original_*`` boxes is the image's ``size`` (None when unknown). A
        coordinate that is not a number is an ExampleError naming ``where``."""
        if self.use_original_coords and all(obj.get(k) is not None for k in _ORIGINAL_KEYS):
            keys, space = _ORIGINAL_KEYS, size
        elif all(obj.get(k) is not None for k in _RESIZED_KEYS):
            keys, space = _RESIZED_KEYS, (RESIZED, RESIZED)
        else:
            return None, None
        box = []
        for key in keys:
            try:
                box.append(float(obj[key]))
            except (TypeError, ValueError):
                raise ExampleError(f"{where}: {key} is {obj[key]!r}; expected a number of "
                                   f"pixels") from None
        return box, space

    def __len__(self) -> int:
        return len(self.records)

    def _content(self, index: int, graph: dict, size, count: bool) -> dict:
        """``_parse``, with a scene graph whose entries have the wrong types (a phrase that is
        not text, ...) named as an ExampleError rather than a bare TypeError."""
        try:
            return self._parse(index, graph, size, count)
        except ExampleError:
            raise
        except (TypeError, AttributeError, KeyError, ValueError) as error:
            raise ExampleError(f"{self.scene_graph_path(index)}: not a valid scene graph "
                               f"({type(error).__name__}: {error})") from error

    def _parse(self, index: int, graph: dict, size, count: bool) -> dict:
        """Every Example field but the image, from the scene graph and the image's
        ``size`` = (width, height); size None (unknown): regions are kept unless their box is
        inverted or empty in its own coordinates. ``count``: record clipped and dropped boxes
        (warning once per image)."""
        record = self.records[index]
        path = self.scene_graph_path(index)
        objects = {}
        for obj in graph.get("objects") or ():
            objects.setdefault(str(obj.get("bbox_name", "")).strip().lower(), obj)

        labels = np.zeros(len(schema.FINDINGS), np.float32)
        mask = np.zeros(len(schema.FINDINGS), bool)
        all_phrases: list[str] = []
        pixel, spaces, captions, findings, names, uncoordinated = [], [], [], [], [], []
        for entry in graph.get("attributes") or ():
            finding = -1
            for text in flatten_attributes(entry.get("attributes")):
                parsed = parse_attribute(text)
                if parsed is None:
                    continue
                category, value, name = parsed
                fid = attribute_finding(category, name)
                if fid < 0 or value not in ("yes", "no"):
                    continue
                if value == "yes":
                    labels[fid], mask[fid] = 1.0, True
                    finding = fid if finding < 0 else finding
                elif not mask[fid]:
                    mask[fid] = True
            phrases = [report_lib.clean_text(p) for p in entry.get("phrases") or ()]
            phrases = list(dict.fromkeys(p for p in phrases if p))
            all_phrases.extend(phrases)
            bbox_name = str(entry.get("bbox_name", "")).strip()
            obj = objects.get(bbox_name.lower())
            if not phrases or obj is None:
                continue
            box, space = self._box(obj, size, f"{path} object {bbox_name!r}")
            if box is None:
                uncoordinated.append(f"{path} object {bbox_name!r} (no coordinates)")
                continue
            pixel.append(box)
            spaces.append(space)
            captions.append(" ".join(phrases))
            findings.append(finding)
            names.append(bbox_name)

        keep = np.zeros(len(pixel), bool)
        boxes = np.zeros((len(pixel), 4), np.float32)
        clipped, dropped = [], uncoordinated
        for space in dict.fromkeys(spaces):
            rows = np.array([i for i, s in enumerate(spaces) if s == space])
            checked = check_boxes([pixel[i] for i in rows], space,
                                  [f"{path} object {names[i]!r}" for i in rows])
            boxes[rows[checked.keep]] = checked.boxes
            keep[rows[checked.keep]] = True
            clipped, dropped = clipped + checked.clipped, dropped + checked.dropped
        if count:
            self.warn_and_count("Chest ImaGenome", record["dicom_id"],
                                Checked(boxes[keep], keep, clipped, dropped))

        sides, zones, sizes = [], [], []
        for i in np.flatnonzero(keep):
            side, zone = region_position(names[i])
            sides.append(schema.side_id(side))
            zones.append(schema.zone_id(zone))
            sizes.append(schema.size_id(report_lib.parse_size(captions[i]))
                         if findings[i] >= 0 else -1)
        view = str(graph.get("viewpoint", "")).strip().upper()
        view = {"LL": "LATERAL", "LATERAL": "LATERAL"}.get(view, view)
        return dict(
            example_id=record["dicom_id"], report=self._report(record, graph, all_phrases),
            labels=labels, label_mask=mask, boxes=boxes[keep],
            captions=tuple(captions[i] for i in np.flatnonzero(keep)),
            finding_ids=np.array([findings[i] for i in np.flatnonzero(keep)], np.int32),
            side_ids=np.array(sides, np.int32), zone_ids=np.array(zones, np.int32),
            size_ids=np.array(sizes, np.int32), source=self.name,
            view=view if view in ("PA", "AP", "LATERAL") else "")

    def texts(self, index: int) -> tuple[str, tuple]:
        """(report, captions) from the scene graph; the image's size comes from its header
        (which decides whether a box lies entirely outside it), or is left unknown."""
        index = self._position(index)
        graph = self.scene_graph(index)
        try:
            size = image_size(self.image_path(index, graph))
        except (FileNotFoundError, ImageDecodeError):
            size = None
        content = self._content(index, graph, size, count=False)
        return content["report"], content["captions"]

    def __getitem__(self, index: int) -> Example:
        index = self._position(index)
        graph = self.scene_graph(index)
        image = read_image(self.image_path(index, graph))
        height, width = image.shape
        return Example(image=image, **self._content(index, graph, (width, height), count=True))

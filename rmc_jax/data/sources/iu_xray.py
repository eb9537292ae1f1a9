"""IU X-ray (Indiana University Chest X-ray Collection, Open-i), reports with MeSH labels.

Licence: the collection is distributed under CC BY-NC-ND 4.0 (Creative Commons Attribution,
NonCommercial, NoDerivatives); the reports' ``<licenseURL>`` says so. Keep it out of commercial
use and do not redistribute modified copies.

Official layout under ``root`` (the two Open-i downloads, extracted)::

    ecgen-radiology/<n>.xml          one report per file (NLMCXR_reports.tgz)
    NLMCXR_png/<image id>.png        the images (NLMCXR_png.tgz)

A report XML (``<eCitation>``) holds, among other elements::

    <uId id="CXR1"/>
    <MedlineCitation> ... <Abstract>
        <AbstractText Label="COMPARISON">None.</AbstractText>
        <AbstractText Label="INDICATION">Positive TB test</AbstractText>
        <AbstractText Label="FINDINGS">The cardiac silhouette ...</AbstractText>
        <AbstractText Label="IMPRESSION">Normal chest x-XXXX.</AbstractText>
    </Abstract> ... </MedlineCitation>
    <MeSH><major>Cardiomegaly/borderline</major><automatic>...</automatic></MeSH>
    <parentImage id="CXR1_1_IM-0001-3001"> ... </parentImage>   (zero or more)

Elements are found by tag and ``Label`` attribute, never by position. Every parentImage of a
report becomes one Example (``example_id`` = the image id) sharing the report, which is
'FINDINGS: ...\nIMPRESSION: ...' (``reports.sectioned_text``; anonymisation tokens such as
'XXXX' are kept as they are). Reports without images are skipped. There are no boxes.

Labels (``label_names`` = schema.FINDINGS + ('no_finding',)): each MeSH ``major`` term
('Head/qualifier/qualifier', e.g. 'Opacity/lung/base/left/mild') is mapped to a canonical finding
by its head and qualifiers (``mesh_finding``); 'normal' sets 'no_finding'. With at least one
major term, every label the report's terms do not set is a known negative; a report whose terms
are only 'No Indexing' (or that has none) has all labels unknown, and so has (but for its
positives) a report with a major term whose heading is not IU X-ray vocabulary (``mesh_known``:
a typo such as 'Cardiomegally' must not make cardiomegaly a known negative; warned, naming the
file and term). An image listed by two reports belongs to the first (warned). ``automatic``
terms are read (``mesh_automatic``) but only used when ``use_automatic=True`` (they are free
text: one outside the mapping is not checked, so their negatives are less certain).

There is no official split: ``split`` 'train' / 'val' / 'test' is a deterministic split of
the reports (all images of a report together) by an MD5 hash of the report id with fractions
``split_fractions`` (0.7, 0.1, 0.2); 'all' keeps everything.
"""

from __future__ import annotations

import collections
import hashlib
import os
import re
import xml.etree.ElementTree as ET

import numpy as np

from rmc_jax.data import schema
from rmc_jax.data.schema import Example
from rmc_jax.data.sources import reports as report_lib
from rmc_jax.data.sources import tabular
from rmc_jax.data.sources.base import Source, SourceError, warn_places
from rmc_jax.data.sources.images import read_image

LABEL_NAMES = schema.FINDINGS + ("no_finding",)
LAYOUT = ("IU X-ray (Open-i) layout: <root>/ecgen-radiology/<n>.xml reports and "
          "<root>/NLMCXR_png/<image id>.png images")
LICENCE = "CC BY-NC-ND 4.0"
SPLITS = ("train", "val", "test", "all")
SPLIT_ALIASES = {"train": "train", "val": "val", "valid": "val", "validation": "val",
                 "validate": "val", "test": "test", "all": "all"}

# MeSH heading (normalised) -> canonical finding.
_MESH_HEADS = {
    "normal": "no_finding",
    "opacity": "lung_opacity",
    "airspace_disease": "lung_opacity",
    "pulmonary_atelectasis": "atelectasis",
    "atelectasis": "atelectasis",
    "pleural_effusion": "pleural_effusion",
    "effusion": "pleural_effusion",
    "pulmonary_edema": "edema",
    "edema": "edema",
    "infiltrate": "infiltration",
    "pulmonary_fibrosis": "fibrosis",
    "fibrosis": "fibrosis",
    "calcinosis": "calcification",
    "calcified_granuloma": "calcification",
    "lung_diseases_interstitial": "interstitial_lung_disease",
    "fractures_bone": "fracture",
    "rib_fractures": "fracture",
    "catheters_indwelling": "support_device",
    "medical_device": "support_device",
    "implanted_medical_device": "support_device",
    "tube_inserted": "support_device",
    "pacemaker_artificial": "support_device",
    "stents": "support_device",
    "aortic_aneurysm": "aortic_enlargement",
    "pulmonary_disease_chronic_obstructive": None,
    "pneumonia": "pneumonia",
    "consolidation": "consolidation",
    "cardiomegaly": "cardiomegaly",
    "pneumothorax": "pneumothorax",
    "nodule": "nodule",
    "mass": "mass",
    "lung_lesion": "lung_lesion",
}
# (heading, qualifier) combinations.
_MESH_QUALIFIED = {
    ("thickening", "pleura"): "pleural_thickening",
    ("cardiac_shadow", "enlarged"): "cardiomegaly",
    ("heart", "enlarged"): "cardiomegaly",
    ("mediastinum", "enlarged"): "enlarged_cardiomediastinum",
    ("mediastinum", "widened"): "enlarged_cardiomediastinum",
    ("aorta", "enlarged"): "aortic_enlargement",
    ("aorta", "dilatation"): "aortic_enlargement",
    ("aorta_thoracic", "enlarged"): "aortic_enlargement",
    ("aorta_thoracic", "dilatation"): "aortic_enlargement",
}


# Other MeSH headings of the IU X-ray 'major' tags (normalised); they name no canonical finding.
# A heading in none of these tables is not IU vocabulary (a typo, another annotation scheme).
_MESH_OTHER = frozenset((
    "abdomen", "adipose_tissue", "arthritis", "atherosclerosis", "blister", "blood_vessels",
    "bone_and_bones", "bone_diseases_metabolic", "breast_implants", "bronchiectasis",
    "bronchiolitis", "bronchitis", "bullous_emphysema", "cavitation", "cervical_vertebrae",
    "cholelithiasis", "cicatrix", "colonic_interposition", "contrast_media",
    "costophrenic_angle", "cystic_fibrosis", "cysts", "deformity", "density", "diaphragm",
    "diaphragmatic_eventration", "dislocations", "emphysema", "epicardial_fat",
    "expansile_bone_lesions", "foreign_bodies", "funnel_chest", "granuloma",
    "granulomatous_disease", "heart_atria", "heart_failure", "heart_ventricles",
    "hemopneumothorax", "hemothorax", "hernia_diaphragmatic", "hernia_hiatal", "humerus",
    "hydropneumothorax", "hyperostosis_diffuse_idiopathic_skeletal", "hypertension_pulmonary",
    "hypovolemia", "kyphosis", "lucency", "lumbar_vertebrae", "lung", "lung_hyperlucent",
    "lymph_nodes", "markings", "mastectomy", "mediastinal_emphysema", "nipple_shadow",
    "osteophyte", "osteoporosis", "pectus_carinatum", "pericardial_effusion", "pleura",
    "pneumonectomy", "pneumoperitoneum", "pulmonary_artery", "pulmonary_congestion",
    "pulmonary_emphysema", "ribs", "sarcoidosis", "sclerosis", "scoliosis", "shift", "shoulder",
    "spinal_fusion", "spine", "spondylosis", "subcutaneous_emphysema", "sulcus",
    "surgical_instruments", "sutures", "technical_quality_of_image_unsatisfactory",
    "thoracic_vertebrae", "thorax", "trachea", "trachea_carina", "tuberculosis", "volume_loss",
))


def mesh_known(term: str) -> bool:
    """Whether a MeSH term's heading is IU X-ray vocabulary (mapped to a finding or not)."""
    head = schema.normalise_name(term.split("/")[0])
    return (head in _MESH_HEADS or head in _MESH_OTHER or head == "no_indexing"
            or any(head == h for h, _ in _MESH_QUALIFIED) or schema.finding_id(head) >= 0)


def mesh_finding(term: str) -> str | None:
    """A MeSH term ('Pleural Effusion/right/small') -> canonical finding, 'no_finding' or None."""
    parts = [schema.normalise_name(p) for p in term.split("/")]
    head, qualifiers = parts[0], parts[1:]
    for qualifier in qualifiers:
        if (head, qualifier) in _MESH_QUALIFIED:
            return _MESH_QUALIFIED[(head, qualifier)]
    if head in _MESH_HEADS:
        return _MESH_HEADS[head]
    index = schema.finding_id(head)
    return schema.FINDINGS[index] if index >= 0 else None


def _text(element) -> str:
    return re.sub(r"\s+", " ", "".join(element.itertext()) if element is not None else "").strip()


def parse_report(path: str) -> dict:
    """One ecgen-radiology XML -> {uid, sections, findings, impression, mesh_major,
    mesh_automatic, images, licence}. Raises SourceError naming the file when it is not XML."""
    try:
        tree = ET.parse(path)
    except (ET.ParseError, OSError) as error:
        raise SourceError(f"cannot parse IU X-ray report {path}: {error}; expected an Open-i "
                          f"<eCitation> XML ({LAYOUT})") from error
    root = tree.getroot()
    uid_element = root.find(".//uId")
    uid = (uid_element.get("id", "") if uid_element is not None else "") or \
        os.path.splitext(os.path.basename(path))[0]
    sections = {}
    for element in root.iter("AbstractText"):
        label = (element.get("Label") or "").strip().upper()
        if label:
            text = _text(element)
            sections[label] = f"{sections[label]} {text}".strip() if label in sections else text
    mesh_major, mesh_automatic = [], []
    for mesh in root.iter("MeSH"):
        mesh_major += [_text(e) for e in mesh.iter("major") if _text(e)]
        mesh_automatic += [_text(e) for e in mesh.iter("automatic") if _text(e)]
    images = [e.get("id", "").strip() for e in root.iter("parentImage") if e.get("id", "").strip()]
    licence = _text(root.find(".//licenseURL")) or _text(root.find(".//ccLicense"))
    return {"uid": uid, "path": path, "sections": sections,
            "findings": sections.get("FINDINGS", ""), "impression": sections.get("IMPRESSION", ""),
            "mesh_major": mesh_major, "mesh_automatic": mesh_automatic,
            "images": list(dict.fromkeys(images)), "licence": licence}


def split_of(uid: str, fractions=(0.7, 0.1, 0.2)) -> str:
    """Deterministic 'train' / 'val' / 'test' bucket of a report id (MD5 of the id)."""
    total = float(sum(fractions))
    value = int(hashlib.md5(uid.encode("utf-8")).hexdigest()[:8], 16) / 0x100000000
    if value < fractions[0] / total:
        return "train"
    if value < (fractions[0] + fractions[1]) / total:
        return "val"
    return "test"


def _natural_key(name: str):
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", name)]


class IUXray(Source):
    """IU X-ray (Open-i) as Examples; see the module docstring (licence CC BY-NC-ND 4.0).

    Args:
      root: folder with ``ecgen-radiology/`` and ``NLMCXR_png/``.
      split: 'train', 'val', 'test' (hash split of reports, see ``split_of``) or 'all'.
      split_fractions: (train, val, test) fractions.
      use_automatic: also map the MeSH ``automatic`` terms to labels.
      missing_images: 'error' (SourceError at construction) or 'skip' (leave out, warn).
    """

    name = "iu_xray"
    label_names = LABEL_NAMES
    licence = LICENCE

    def __init__(self, root: str, split: str = "train", split_fractions=(0.7, 0.1, 0.2),
                 use_automatic: bool = False, missing_images: str = "error"):
        if split not in SPLIT_ALIASES:
            raise ValueError(f"IU X-ray split must be one of {SPLITS}, got {split!r}")
        if missing_images not in ("error", "skip"):
            raise ValueError(f"missing_images must be 'error' or 'skip', got {missing_images!r}")
        self.root = tabular.require_dir(root, LAYOUT)
        self.split = SPLIT_ALIASES[split]
        self.use_automatic = use_automatic
        self.report_dir = tabular.require_dir(os.path.join(self.root, "ecgen-radiology"), LAYOUT)
        self.image_dir = tabular.require_dir(os.path.join(self.root, "NLMCXR_png"), LAYOUT)
        files = sorted((f for f in os.listdir(self.report_dir) if f.lower().endswith(".xml")),
                       key=_natural_key)
        if not files:
            raise SourceError(f"no report XML in {self.report_dir}; expected {LAYOUT}")
        self.reports: list[dict] = []
        self.items: list[tuple[int, str]] = []   # (report index, image id)
        self._split_sizes: collections.Counter = collections.Counter()
        unknown, owner, repeated = [], {}, []
        for name in files:
            report = parse_report(os.path.join(self.report_dir, name))
            part = split_of(report["uid"], split_fractions)
            self._split_sizes[part] += len(report["images"])
            if (self.split != "all" and part != self.split) or not report["images"]:
                continue
            unknown += [f"{report['path']} ({t!r})" for t in report["mesh_major"]
                        if not mesh_known(t)]
            report["labels"], report["label_mask"] = self._labels(report)
            self.reports.append(report)
            for image_id in report["images"]:
                if image_id in owner:
                    repeated.append(f"{report['path']} ({image_id}, also in {owner[image_id]})")
                    continue
                owner[image_id] = report["path"]
                self.items.append((len(self.reports) - 1, image_id))
        warn_places("IU X-ray: {count} MeSH major term(s) that are not IU X-ray vocabulary; "
                    "those reports' negatives are left unknown", unknown)
        warn_places("IU X-ray: ignored {count} image(s) listed by a second report (the first "
                    "report is used)", repeated)
        present = set(os.listdir(self.image_dir))
        missing = [i for _, i in self.items if f"{i}.png" not in present]
        if missing:
            if missing_images == "error":
                raise SourceError(f"{len(missing)} image(s) referenced by {self.report_dir} are "
                                  f"not in {self.image_dir} (expected <image id>.png), e.g. "
                                  f"{missing[:3]}; pass missing_images='skip' to leave them out")
            warn_places(f"IU X-ray: skipping {{count}} image(s) not in {self.image_dir}",
                        missing)
            missing = set(missing)
            self.items = [item for item in self.items if item[1] not in missing]

    def _labels(self, report: dict):
        terms = list(report["mesh_major"])
        if self.use_automatic:
            terms += report["mesh_automatic"]
        labels = np.zeros(len(LABEL_NAMES), np.float32)
        indexed = [t for t in terms if schema.normalise_name(t) != "no_indexing"]
        for term in indexed:
            finding = mesh_finding(term)
            if finding is not None:
                labels[LABEL_NAMES.index(finding)] = 1.0
        known = bool(indexed) and all(mesh_known(t) for t in report["mesh_major"])
        return labels, np.full(len(LABEL_NAMES), known) | (labels > 0)

    def split_sizes(self) -> dict:
        return dict(self._split_sizes)

    def report_of(self, index: int) -> dict:
        """The parsed report (sections, MeSH terms, image ids) of Example ``index``."""
        return self.reports[self.items[index][0]]

    def image_path(self, index: int) -> str:
        return os.path.join(self.image_dir, f"{self.items[index][1]}.png")

    def __len__(self) -> int:
        return len(self.items)

    def _report_text(self, index: int) -> str:
        report = self.report_of(index)
        return report_lib.sectioned_text(report["findings"], report["impression"])

    def texts(self, index: int) -> tuple[str, tuple]:
        return self._report_text(self._position(index)), ()

    def __getitem__(self, index: int) -> Example:
        index = self._position(index)
        report = self.report_of(index)
        return Example(
            example_id=self.items[index][1], image=read_image(self.image_path(index)),
            report=self._report_text(index),
            labels=report["labels"].copy(), label_mask=report["label_mask"].copy(),
            source=self.name, view="")

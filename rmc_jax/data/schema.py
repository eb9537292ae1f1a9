"""The Example: one schema every data source converts into, once.

An Example is a chest radiograph with its report, multi-label disease targets and localized
regions (boxes with one caption each). Sources translate their native conventions (pixel
xywh, 1024-space boxes, CheXpert -1/blank labels, ...) into this form; nothing downstream
knows which dataset an Example came from.

Conventions (see DESIGN.md):
* image: uint8 [H, W], one channel, original size, origin top-left as stored.
* boxes: float32 [R, 4] normalised (x0, y0, x1, y1) in [0, 1] of that image.
* sides are the **patient's** side: the patient's left is on the image's right.
"""

from __future__ import annotations

import dataclasses
import re

import numpy as np

# Canonical finding vocabulary shared by all sources, captions and evaluation.
FINDINGS = (
    "nodule", "mass", "consolidation", "atelectasis", "pleural_effusion", "pneumothorax",
    "cardiomegaly", "edema", "lung_opacity", "pneumonia", "infiltration", "fibrosis",
    "pleural_thickening", "calcification", "aortic_enlargement", "interstitial_lung_disease",
    "fracture", "support_device", "enlarged_cardiomediastinum", "lung_lesion", "pleural_other",
    "other_lesion",
)
SIDES = ("right", "left", "bilateral")
ZONES = ("upper", "middle", "lower", "apical", "basal", "perihilar", "retrocardiac", "diffuse")
SIZES = ("small", "moderate", "large")  # size for lesions, severity (mild/moderate/severe) else

# Dataset spellings -> canonical finding name (keys compared after normalise_name()).
_FINDING_ALIASES = {
    "effusion": "pleural_effusion",
    "pleural_effusion": "pleural_effusion",
    "infiltrate": "infiltration",
    "infiltration": "infiltration",
    "nodule_mass": "nodule",
    "opacity": "lung_opacity",
    "lung_opacity": "lung_opacity",
    "ild": "interstitial_lung_disease",
    "pulmonary_fibrosis": "fibrosis",
    "other_lesion": "other_lesion",
    "support_devices": "support_device",
    "enlarged_cardiomediastinum": "enlarged_cardiomediastinum",
    "aortic_enlargement": "aortic_enlargement",
}


def normalise_name(name: str) -> str:
    """'Pleural Effusion', 'pleural-effusion', 'Nodule/Mass' -> 'pleural_effusion',
    'nodule_mass'."""
    return re.sub(r"[^a-z0-9]+", "_", name.strip().lower()).strip("_")


def is_no_finding(name: str) -> bool:
    """Whether a label class is 'No Finding' (any spelling: 'no_finding', 'No finding',
    'no-finding'): the class of normal studies, which training and evaluation treat apart."""
    return normalise_name(name) == "no_finding"


def finding_id(name: str) -> int:
    """Index of a dataset's finding name in FINDINGS; -1 when it has no canonical meaning."""
    key = normalise_name(name)
    key = _FINDING_ALIASES.get(key, key)
    return FINDINGS.index(key) if key in FINDINGS else -1


def _index(vocabulary, value) -> int:
    return vocabulary.index(value) if value in vocabulary else -1


side_id = lambda side: _index(SIDES, side)  # noqa: E731
zone_id = lambda zone: _index(ZONES, zone)  # noqa: E731
size_id = lambda size: _index(SIZES, size)  # noqa: E731


@dataclasses.dataclass
class Example:
    """One image-report pair with localized regions.

    Attributes:
      example_id: unique within its source (e.g. a DICOM id).
      image: uint8 [H, W].
      report: findings + impression text ('' when the source has none).
      labels: float32 [C], 1 = present, 0 = absent, for the source's ``label_names``.
      label_mask: bool [C], False where the label is unknown or uncertain.
      boxes: float32 [R, 4] normalised xyxy.
      captions: R strings, one per box.
      finding_ids: int32 [R], index into FINDINGS (-1 unknown).
      side_ids, zone_ids, size_ids: int32 [R] region attributes where known (-1 unknown); they
        let evaluation count a retrieved caption as a semantic match.
      source: dataset name. view: 'PA', 'AP', 'LATERAL' or ''.
    """

    example_id: str
    image: np.ndarray
    report: str
    labels: np.ndarray
    label_mask: np.ndarray
    boxes: np.ndarray = dataclasses.field(
        default_factory=lambda: np.zeros((0, 4), np.float32))
    captions: tuple = ()
    finding_ids: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros((0,), np.int32))
    side_ids: np.ndarray | None = None
    zone_ids: np.ndarray | None = None
    size_ids: np.ndarray | None = None
    source: str = ""
    view: str = ""

    def __post_init__(self):
        r = len(self.captions)
        for name in ("side_ids", "zone_ids", "size_ids"):
            if getattr(self, name) is None:
                setattr(self, name, np.full((r,), -1, np.int32))

    @property
    def num_regions(self) -> int:
        return len(self.captions)

    def validate(self) -> "Example":
        """Check shapes, dtypes and ranges; raise ValueError naming the example and field."""
        where = f"example {self.source}:{self.example_id}"
        if self.image.dtype != np.uint8 or self.image.ndim != 2:
            raise ValueError(f"{where}: image must be uint8 [H, W], got {self.image.dtype} "
                             f"{self.image.shape}")
        if self.labels.shape != self.label_mask.shape or self.labels.ndim != 1:
            raise ValueError(f"{where}: labels {self.labels.shape} and label_mask "
                             f"{self.label_mask.shape} must both be [C]")
        r = len(self.captions)
        if self.boxes.shape != (r, 4):
            raise ValueError(f"{where}: boxes must be [R, 4] with R = {r} captions, "
                             f"got {self.boxes.shape}")
        for name in ("finding_ids", "side_ids", "zone_ids", "size_ids"):
            if getattr(self, name).shape != (r,):
                raise ValueError(f"{where}: {name} must be [R] with R = {r}, "
                                 f"got {getattr(self, name).shape}")
        if r and (np.any(self.boxes < 0) or np.any(self.boxes > 1)
                  or np.any(self.boxes[:, 2:] <= self.boxes[:, :2])):
            raise ValueError(f"{where}: boxes must be normalised xyxy with 0 <= x0 < x1 <= 1 and "
                             f"0 <= y0 < y1 <= 1, got {self.boxes.tolist()}")
        return self

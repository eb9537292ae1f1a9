"""The embedded default dataset: procedural chest radiographs with localized findings.

``SyntheticSource`` makes the training command work anywhere with no files. Every example is
derived from ``(seed, split, index)`` alone, so example ``i`` of a split is identical on every
call and every machine, and the train / validation / test index spaces are disjoint by
construction (the split is part of the ``SeedSequence`` spawn key).

Three layers, each reusable on its own:

* ``sample_case(rng)`` -> ``Case``: the patient's anatomy and projection (``Anatomy``) and the
  list of ``Finding`` objects (canonical name, patient side, zone, size/severity and one or two
  rendered ``Lesion`` parts).  Frequencies, the zone/side mix and sizes are derived from the
  reference figures in ``shared/reference`` (tables and mapping below).
* ``render_case(case, image_size)`` -> ``(image uint8 [H, W], boxes float32 [R, 4])``: a PA
  radiograph (patient's right on the image left) with one tight normalised xyxy box per region
  (``case_regions(case)``), measured on what was actually rendered.
* ``generate_text(case, rng)`` -> ``(report, captions)``: a MIMIC-style report with
  FINDINGS / IMPRESSION sections and one plain-wording caption per region.

Regions. A finding reported once may be drawn as several lesions: "small bilateral pleural
effusions" is one ``Finding`` (side 'bilateral') with a right and a left ``Lesion``; each lesion is
one region with its own box, its own side ('right' / 'left') and a caption naming that side
("small left pleural effusion").  Pulmonary edema is one bilateral region whose box spans both
perihilar regions; cardiomegaly is one region without side or zone (ids -1).

Coordinates.  Rendering works in a *canonical* frame (u right on the image, v down, both in
[0, 1], midline u = 0.5, patient's right at u < 0.5) which the projection (rotation, scale, shift)
maps onto the image.  Lesion geometry is sampled in the canonical frame; boxes are measured in
image space from each lesion's own rendered footprint.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import statistics
from typing import Sequence

import numpy as np

from rmc_jax.data import schema
from rmc_jax.data.sources.base import Source

__all__ = [
    "RENDERED_FINDINGS", "LABEL_NAMES", "SPLIT_SIZES", "Anatomy", "Lesion", "Finding", "Case",
    "Region", "sample_anatomy", "sample_case", "case_regions", "render_case", "generate_text",
    "make_example", "SyntheticSource", "FINDING_TERMS", "NEGATION_CUES", "ZONE_WORDS",
    "SIZE_WORDS", "finding_mix",
]

# =============================================================================================
# Vocabulary
# =============================================================================================
RENDERED_FINDINGS = ("nodule", "mass", "consolidation", "atelectasis", "pleural_effusion",
                     "pneumothorax", "cardiomegaly", "edema")
LABEL_NAMES = RENDERED_FINDINGS + ("no_finding",)
SPLIT_SIZES = {"train": 20000, "validation": 1000, "test": 1000}
_SPLIT_ALIASES = {"train": "train", "training": "train", "validation": "validation",
                  "valid": "validation", "val": "validation", "test": "test"}
_SPLIT_KEY = {"train": 0, "validation": 1, "test": 2}

# Words by which a report may name each finding (lower case substrings).  Every positive sentence
# the generator writes for a finding contains at least one of them, and a sentence that negates
# or normalises something never contains a term of a finding that is present.
FINDING_TERMS = {
    "nodule": ("nodule", "nodular"),
    "mass": ("mass",),
    "consolidation": ("consolidation", "airspace", "opacity", "opacities", "opacification",
                      "infiltrate", "pneumonia"),
    "atelectasis": ("atelecta", "collapse", "volume loss"),
    "pleural_effusion": ("effusion", "pleural fluid", "pleural space", "costophrenic"),
    "pneumothorax": ("pneumothora", "pleural line"),
    "cardiomegaly": ("cardiomegaly", "heart", "cardiac", "cardiomediastinal"),
    "edema": ("edema", "congestion", "vascular", "kerley", "interstitial", "perihilar haz",
              "bat-wing", "batwing"),
}
# A sentence that contains one of these words states an absence or a normal appearance.
NEGATION_CUES = ("no", "not", "without", "negative", "clear", "normal", "unremarkable", "free",
                 "sharp", "resolved", "absent", "none")

# Plain radiology words per zone: captions always use one of these (with an explicit side word),
# so a caption perturber can find and swap them.
ZONE_WORDS = {
    "upper": ("upper zone", "upper lobe", "upper lung"),
    "middle": ("mid zone", "middle lobe", "mid lung"),
    "lower": ("lower zone", "lower lobe", "lower lung"),
    "apical": ("apex", "apical"),
    "basal": ("base", "basilar", "basal"),
    "perihilar": ("perihilar", "hilar"),
    "retrocardiac": ("retrocardiac",),
    "diffuse": ("diffuse",),
}
SIZE_WORDS = {
    "small": ("small", "tiny", "minimal", "mild", "trace", "subtle"),
    "moderate": ("moderate", "moderate-sized", "moderately"),
    "large": ("large", "severe", "extensive", "marked", "massive", "markedly"),
}

# =============================================================================================
# Reference figures (shared/reference) and how they become sampling distributions
# =============================================================================================
# iu_localized_finding_counts.json: (MeSH finding, zone, side, count) over 3,955 IU X-ray reports.
# The rows of the MeSH terms we render are embedded verbatim (tests compare them with the file when
# it is present).  Mapping to our findings:
#   Opacity, Airspace Disease, Consolidation, Infiltrate, Pneumonia, Density -> consolidation
#   Pulmonary Atelectasis -> atelectasis;  Nodule -> nodule;  Mass -> mass
#   Pleural Effusion -> pleural_effusion;  Costophrenic Angle (blunting) -> pleural_effusion, small
#   Pneumothorax -> pneumothorax;  Pulmonary Edema, Pulmonary Congestion -> edema
#   (Calcified Granuloma / Granuloma / Calcinosis / Cicatrix are not rendered.)
# Zones: base, costophrenic angle -> basal; lower lobe -> lower; middle lobe, lingula -> middle;
#   upper lobe -> upper; apex -> apical; hilum -> perihilar; retrocardiac -> retrocardiac;
#   compound tags ('lower lobe/posterior') use their first part; '-' and the anterior/posterior
#   qualifiers carry no zone: the zone is then drawn from the same finding's rows that have one.
#   Effusions always layer at the base (zone basal) on an erect PA film.
# Sides: lingula and retrocardiac are left; '-' is drawn from the finding's rows with a side.
# Edema is rendered bilateral: perihilar (bat-wing) 60 %, basal 25 %, diffuse 15 %; the IU rows
#   (16 reports) only set its frequency.  Cardiomegaly is not a localized tag, so it is absent from
#   the file: we assume 340 reports (~9 % of IU reports), an assumption, not a figure from the file.
_IU_ROWS = (
    ("Opacity", "base", "bilateral", 83), ("Opacity", "base", "left", 78),
    ("Opacity", "base", "right", 33), ("Opacity", "middle lobe", "right", 32),
    ("Opacity", "-", "bilateral", 28), ("Opacity", "lingula", "-", 23),
    ("Opacity", "lower lobe", "right", 22), ("Opacity", "upper lobe", "right", 21),
    ("Opacity", "upper lobe", "left", 21), ("Opacity", "-", "right", 15),
    ("Opacity", "retrocardiac", "-", 13), ("Opacity", "lower lobe", "left", 12),
    ("Opacity", "hilum", "-", 9), ("Opacity", "lower lobe", "bilateral", 9),
    ("Opacity", "middle lobe", "bilateral", 9), ("Opacity", "hilum", "right", 9),
    ("Opacity", "hilum", "left", 9), ("Opacity", "base", "-", 8), ("Opacity", "apex", "right", 8),
    ("Opacity", "-", "left", 8), ("Opacity", "posterior", "-", 6), ("Opacity", "apex", "left", 4),
    ("Opacity", "apex", "bilateral", 4), ("Opacity", "anterior", "-", 3),
    ("Opacity", "costophrenic angle", "right", 3), ("Opacity", "hilum", "bilateral", 2),
    ("Opacity", "upper lobe/hilum", "left", 2), ("Opacity", "retrocardiac", "left", 2),
    ("Opacity", "upper lobe", "bilateral", 2), ("Opacity", "costophrenic angle", "left", 2),
    ("Opacity", "lower lobe", "-", 1), ("Opacity", "costophrenic angle", "bilateral", 1),
    ("Opacity", "lingula/posterior", "-", 1), ("Opacity", "lower lobe/posterior", "left", 1),
    ("Opacity", "posterior", "right", 1), ("Opacity", "upper lobe", "-", 1),
    ("Opacity", "lower lobe/posterior", "right", 1), ("Opacity", "base/retrocardiac", "left", 1),
    ("Opacity", "upper lobe/anterior", "right", 1), ("Opacity", "base/posterior", "-", 1),
    ("Opacity", "upper lobe/posterior", "right", 1), ("Opacity", "costophrenic angle", "-", 1),
    ("Opacity", "anterior", "left", 1),
    ("Airspace Disease", "base", "bilateral", 23), ("Airspace Disease", "base", "right", 22),
    ("Airspace Disease", "base", "left", 21), ("Airspace Disease", "lower lobe", "left", 11),
    ("Airspace Disease", "lower lobe", "right", 11),
    ("Airspace Disease", "middle lobe", "right", 10), ("Airspace Disease", "-", "bilateral", 5),
    ("Airspace Disease", "upper lobe", "right", 4), ("Airspace Disease", "lingula", "-", 4),
    ("Airspace Disease", "-", "left", 3), ("Airspace Disease", "lower lobe", "bilateral", 3),
    ("Airspace Disease", "-", "right", 3), ("Airspace Disease", "base", "-", 2),
    ("Airspace Disease", "apex", "left", 1), ("Airspace Disease", "upper lobe", "left", 1),
    ("Airspace Disease", "retrocardiac", "left", 1),
    ("Airspace Disease", "costophrenic angle", "left", 1),
    ("Airspace Disease", "hilum", "right", 1), ("Airspace Disease", "retrocardiac", "-", 1),
    ("Consolidation", "lower lobe", "left", 5), ("Consolidation", "base", "right", 4),
    ("Consolidation", "base", "left", 3), ("Consolidation", "lower lobe", "right", 3),
    ("Consolidation", "base", "bilateral", 2), ("Consolidation", "upper lobe", "right", 2),
    ("Consolidation", "upper lobe", "left", 2), ("Consolidation", "middle lobe", "right", 2),
    ("Consolidation", "lower lobe", "bilateral", 2), ("Consolidation", "-", "bilateral", 1),
    ("Consolidation", "lower lobe/posterior", "right", 1),
    ("Consolidation", "upper lobe", "bilateral", 1),
    ("Consolidation", "lower lobe/retrocardiac", "left", 1), ("Consolidation", "hilum", "-", 1),
    ("Infiltrate", "base", "left", 12), ("Infiltrate", "base", "bilateral", 11),
    ("Infiltrate", "lower lobe", "right", 10), ("Infiltrate", "lower lobe", "left", 6),
    ("Infiltrate", "upper lobe", "right", 5), ("Infiltrate", "middle lobe", "right", 4),
    ("Infiltrate", "base", "right", 3), ("Infiltrate", "lingula", "-", 3),
    ("Infiltrate", "hilum", "right", 2), ("Infiltrate", "lower lobe", "bilateral", 2),
    ("Infiltrate", "middle lobe", "-", 1), ("Infiltrate", "hilum", "left", 1),
    ("Infiltrate", "upper lobe", "left", 1), ("Infiltrate", "upper lobe", "bilateral", 1),
    ("Infiltrate", "hilum", "-", 1), ("Infiltrate", "-", "bilateral", 1),
    ("Infiltrate", "-", "left", 1),
    ("Pneumonia", "lower lobe", "right", 11), ("Pneumonia", "upper lobe", "right", 8),
    ("Pneumonia", "lower lobe", "left", 7), ("Pneumonia", "upper lobe", "left", 3),
    ("Pneumonia", "middle lobe", "right", 3), ("Pneumonia", "base", "bilateral", 2),
    ("Pneumonia", "lower lobe/anterior", "right", 1), ("Pneumonia", "-", "right", 1),
    ("Pneumonia", "base", "left", 1),
    ("Density", "-", "right", 15), ("Density", "lower lobe", "left", 10),
    ("Density", "base", "left", 9), ("Density", "middle lobe", "right", 8),
    ("Density", "lingula", "-", 7), ("Density", "base", "right", 7), ("Density", "-", "left", 5),
    ("Density", "apex", "right", 4), ("Density", "upper lobe", "right", 4),
    ("Density", "lower lobe", "right", 4), ("Density", "hilum", "right", 4),
    ("Density", "retrocardiac", "-", 4), ("Density", "costophrenic angle", "left", 3),
    ("Density", "-", "bilateral", 3), ("Density", "hilum", "left", 3),
    ("Density", "anterior", "left", 2), ("Density", "costophrenic angle", "right", 2),
    ("Density", "upper lobe", "left", 2), ("Density", "upper lobe/anterior", "right", 1),
    ("Density", "lower lobe", "bilateral", 1), ("Density", "lower lobe", "-", 1),
    ("Density", "base", "bilateral", 1), ("Density", "anterior", "right", 1),
    ("Density", "posterior", "bilateral", 1), ("Density", "costophrenic angle/anterior", "-", 1),
    ("Density", "posterior", "left", 1), ("Density", "retrocardiac", "left", 1),
    ("Density", "posterior", "-", 1), ("Density", "lower lobe/retrocardiac", "left", 1),
    ("Density", "base/retrocardiac", "left", 1),
    ("Pulmonary Atelectasis", "base", "left", 76),
    ("Pulmonary Atelectasis", "base", "bilateral", 72),
    ("Pulmonary Atelectasis", "base", "right", 41), ("Pulmonary Atelectasis", "lingula", "-", 20),
    ("Pulmonary Atelectasis", "middle lobe", "right", 18),
    ("Pulmonary Atelectasis", "base", "-", 13),
    ("Pulmonary Atelectasis", "lower lobe", "right", 12),
    ("Pulmonary Atelectasis", "lower lobe", "left", 12),
    ("Pulmonary Atelectasis", "-", "left", 9), ("Pulmonary Atelectasis", "upper lobe", "left", 8),
    ("Pulmonary Atelectasis", "-", "right", 7), ("Pulmonary Atelectasis", "-", "bilateral", 6),
    ("Pulmonary Atelectasis", "upper lobe", "right", 6),
    ("Pulmonary Atelectasis", "lower lobe", "bilateral", 4),
    ("Pulmonary Atelectasis", "hilum", "right", 3),
    ("Pulmonary Atelectasis", "middle lobe", "-", 1),
    ("Pulmonary Atelectasis", "costophrenic angle", "bilateral", 1),
    ("Pulmonary Atelectasis", "posterior", "-", 1),
    ("Pulmonary Atelectasis", "retrocardiac", "left", 1),
    ("Pulmonary Atelectasis", "costophrenic angle", "right", 1),
    ("Pulmonary Atelectasis", "base/posterior", "-", 1),
    ("Pulmonary Atelectasis", "apex", "right", 1),
    ("Pleural Effusion", "-", "bilateral", 60), ("Pleural Effusion", "-", "right", 45),
    ("Pleural Effusion", "-", "left", 38), ("Pleural Effusion", "base", "left", 7),
    ("Pleural Effusion", "posterior", "-", 4), ("Pleural Effusion", "posterior", "bilateral", 3),
    ("Pleural Effusion", "costophrenic angle", "left", 2),
    ("Pleural Effusion", "base", "bilateral", 2), ("Pleural Effusion", "lower lobe", "left", 1),
    ("Pleural Effusion", "hilum", "right", 1), ("Pleural Effusion", "upper lobe", "right", 1),
    ("Pleural Effusion", "middle lobe", "right", 1), ("Pleural Effusion", "base", "right", 1),
    ("Costophrenic Angle", "-", "bilateral", 27), ("Costophrenic Angle", "-", "right", 21),
    ("Costophrenic Angle", "-", "left", 17), ("Costophrenic Angle", "posterior", "-", 3),
    ("Costophrenic Angle", "posterior", "bilateral", 2),
    ("Costophrenic Angle", "posterior", "right", 2),
    ("Costophrenic Angle", "lower lobe", "bilateral", 1),
    ("Costophrenic Angle", "posterior", "left", 1),
    ("Nodule", "lower lobe", "left", 12), ("Nodule", "lingula", "-", 11),
    ("Nodule", "upper lobe", "right", 11), ("Nodule", "lower lobe", "right", 11),
    ("Nodule", "-", "bilateral", 10), ("Nodule", "upper lobe", "left", 7),
    ("Nodule", "-", "left", 6), ("Nodule", "middle lobe", "right", 6),
    ("Nodule", "-", "right", 5), ("Nodule", "hilum", "right", 5), ("Nodule", "base", "left", 4),
    ("Nodule", "apex", "right", 4), ("Nodule", "base", "right", 4),
    ("Nodule", "upper lobe", "bilateral", 4), ("Nodule", "lower lobe", "bilateral", 2),
    ("Nodule", "hilum", "left", 2), ("Nodule", "apex", "bilateral", 2),
    ("Nodule", "hilum", "-", 1), ("Nodule", "lower lobe/posterior", "left", 1),
    ("Nodule", "lower lobe/anterior", "right", 1), ("Nodule", "upper lobe/hilum", "right", 1),
    ("Nodule", "base", "-", 1), ("Nodule", "hilum", "bilateral", 1),
    ("Nodule", "retrocardiac", "right", 1),
    ("Mass", "-", "right", 3), ("Mass", "middle lobe", "right", 2),
    ("Mass", "lower lobe", "left", 1), ("Mass", "-", "left", 1),
    ("Mass", "upper lobe", "right", 1), ("Mass", "upper lobe/posterior", "right", 1),
    ("Mass", "lingula", "-", 1), ("Mass", "upper lobe/anterior", "right", 1),
    ("Mass", "base", "left", 1), ("Mass", "base", "right", 1), ("Mass", "-", "bilateral", 1),
    ("Mass", "hilum", "right", 1), ("Mass", "apex", "right", 1),
    ("Pneumothorax", "apex", "right", 8), ("Pneumothorax", "-", "right", 7),
    ("Pneumothorax", "-", "left", 4), ("Pneumothorax", "upper lobe", "left", 1),
    ("Pneumothorax", "apex", "left", 1),
    ("Pulmonary Edema", "base", "bilateral", 3),
    ("Pulmonary Edema", "lower lobe", "bilateral", 3), ("Pulmonary Edema", "-", "bilateral", 2),
    ("Pulmonary Edema", "base", "-", 1), ("Pulmonary Edema", "middle lobe", "bilateral", 1),
    ("Pulmonary Congestion", "-", "bilateral", 3), ("Pulmonary Congestion", "-", "right", 1),
    ("Pulmonary Congestion", "upper lobe", "-", 1),
    ("Pulmonary Congestion", "hilum", "bilateral", 1),
)
IU_MESH_TO_FINDING = {
    "Opacity": "consolidation", "Airspace Disease": "consolidation",
    "Consolidation": "consolidation", "Infiltrate": "consolidation",
    "Pneumonia": "consolidation", "Density": "consolidation",
    "Pulmonary Atelectasis": "atelectasis", "Pleural Effusion": "pleural_effusion",
    "Costophrenic Angle": "pleural_effusion", "Nodule": "nodule", "Mass": "mass",
    "Pneumothorax": "pneumothorax", "Pulmonary Edema": "edema", "Pulmonary Congestion": "edema",
}
_CARDIOMEGALY_ASSUMED_COUNT = 340
_IU_ZONE = {"base": "basal", "costophrenic angle": "basal", "lower lobe": "lower",
            "middle lobe": "middle", "lingula": "middle", "upper lobe": "upper",
            "apex": "apical", "hilum": "perihilar", "retrocardiac": "retrocardiac"}
# Frequencies are tempered (count ** 0.5) so that rare findings (mass, pneumothorax, edema: 16-21
# reports) still appear in a few % of images while the ranking of the real mix is kept.
FREQUENCY_TEMPERATURE = 0.5
NORMAL_FRACTION = 0.30
# Number of distinct findings in an abnormal image (IU / MIMIC abnormal studies mostly list 1-2).
_NUM_FINDINGS_P = (0.58, 0.29, 0.10, 0.03)


def _map_iu_zone(zone: str) -> str | None:
    for part in zone.split("/"):
        if part in _IU_ZONE:
            return _IU_ZONE[part]
    return None


@functools.lru_cache(maxsize=None)
def finding_mix() -> dict:
    """Derived sampling tables: {'counts', 'weights', 'combos'} from the embedded IU rows.

    ``combos[finding]`` is a tuple of ((zone, side, forced_size_or_None), probability).
    """
    counts = {f: 0 for f in RENDERED_FINDINGS}
    raw: dict = {f: {} for f in RENDERED_FINDINGS}
    for mesh, zone, side, n in _IU_ROWS:
        f = IU_MESH_TO_FINDING[mesh]
        counts[f] += n
        forced = "small" if mesh == "Costophrenic Angle" else None
        z = "basal" if f == "pleural_effusion" else _map_iu_zone(zone)
        if zone in ("lingula", "retrocardiac") or zone.startswith("lingula"):
            side = "left" if side in ("-", "left") else side
        s = None if side == "-" else side
        key = (z, s, forced)
        raw[f][key] = raw[f].get(key, 0) + n
    counts["cardiomegaly"] = _CARDIOMEGALY_ASSUMED_COUNT
    combos = {}
    for f in RENDERED_FINDINGS:
        if f == "cardiomegaly":
            combos[f] = (((None, None, None), 1.0),)
            continue
        if f == "edema":
            combos[f] = ((("perihilar", "bilateral", None), 0.60),
                         (("basal", "bilateral", None), 0.25),
                         (("diffuse", "bilateral", None), 0.15))
            continue
        rows = raw[f]
        zone_known = {}
        side_known = {}
        for (z, s, _), n in rows.items():
            if z is not None:
                zone_known[(z, s)] = zone_known.get((z, s), 0) + n
            if s is not None:
                side_known[s] = side_known.get(s, 0) + n
        out: dict = {}
        for (z, s, forced), n in rows.items():
            sides = [(s, 1.0)] if s is not None else [
                (k, v / sum(side_known.values())) for k, v in side_known.items()]
            for s2, ps in sides:
                if z is not None:
                    zones = [(z, 1.0)]
                else:
                    same = {k[0]: v for k, v in zone_known.items() if k[1] == s2}
                    if not same:
                        same = {}
                        for k, v in zone_known.items():
                            same[k[0]] = same.get(k[0], 0) + v
                    tot = sum(same.values())
                    zones = [(k, v / tot) for k, v in same.items()]
                for z2, pz in zones:
                    key = (z2, s2, forced)
                    out[key] = out.get(key, 0.0) + n * ps * pz
        total = sum(out.values())
        combos[f] = tuple(sorted(((k, v / total) for k, v in out.items()),
                                 key=lambda kv: -kv[1]))
    weights = {f: counts[f] ** FREQUENCY_TEMPERATURE for f in RENDERED_FINDINGS}
    total = sum(weights.values())
    weights = {f: w / total for f, w in weights.items()}
    return {"counts": counts, "weights": weights, "combos": combos}


# box_stats.json: normalised box sizes (p10, p50, p90) per class.  Sizes are drawn from a
# log-normal through p50 and p90 (sigma = ln(p90 / p50) / 1.2816), split into size classes by
# quantile bands so that the mixture over classes reproduces the reference distribution.
#   nodule <- NIH 'Nodule'; mass <- NIH 'Mass'; consolidation <- RSNA lung opacity (9,555 boxes);
#   atelectasis <- NIH 'Atelectasis'; pleural effusion <- NIH 'Effusion'; pneumothorax <- NIH
#   'Pneumothorax'; cardiomegaly <- NIH 'Cardiomegaly' (heart box; CTR = width / thoracic width).
# Centres come from the zone mix above; the zone bands in the canonical frame were set so that
# box centres match the NIH / RSNA centre percentiles (tests check medians).  Edema has no boxes
# in the reference: its box is the rendered perihilar haze (an assumption).
BOX_STATS = {  # class: {"w": (p10, p50, p90), "h": ..., "cx": ..., "cy": ...}
    "nodule": {"w": (0.0466, 0.0688, 0.0984), "h": (0.0444, 0.0667, 0.0995),
               "cx": (0.2154, 0.6275, 0.8056), "cy": (0.2896, 0.4672, 0.6963)},
    "mass": {"w": (0.0739, 0.1175, 0.3075), "h": (0.0758, 0.1376, 0.3623),
             "cx": (0.261, 0.4383, 0.779), "cy": (0.3089, 0.4455, 0.602)},
    "consolidation": {"w": (0.1387, 0.2119, 0.2881), "h": (0.1426, 0.291, 0.5469),
                      "cx": (0.2622, 0.4053, 0.7427), "cy": (0.3765, 0.5186, 0.6621)},
    "atelectasis": {"w": (0.0985, 0.1673, 0.3205), "h": (0.0632, 0.1149, 0.2224),
                    "cx": (0.247, 0.4998, 0.7815), "cy": (0.4288, 0.572, 0.707)},
    "pleural_effusion": {"w": (0.0991, 0.2032, 0.31), "h": (0.0871, 0.2709, 0.5879),
                         "cx": (0.1686, 0.3762, 0.8236), "cy": (0.4182, 0.5603, 0.7124)},
    "pneumothorax": {"w": (0.0853, 0.1967, 0.3096), "h": (0.0828, 0.2011, 0.5172),
                     "cx": (0.2131, 0.3403, 0.7188), "cy": (0.1452, 0.2532, 0.6091)},
    "cardiomegaly": {"w": (0.4031, 0.4664, 0.5349), "h": (0.2971, 0.3732, 0.4413),
                     "cx": (0.5236, 0.5744, 0.6323), "cy": (0.4911, 0.5658, 0.6465)},
}
# Quantile bands of the size distribution per size class, and the class probabilities (= band
# widths, so the mixture is the reference distribution truncated to [0.03, 0.97]).
_SIZE_BANDS = {"small": (0.03, 0.35), "moderate": (0.35, 0.75), "large": (0.75, 0.97)}
_NORMAL = statistics.NormalDist()


def _lognormal_quantile(p10_50_90, q):
    _, p50, p90 = p10_50_90
    sigma = math.log(p90 / p50) / 1.2816
    return p50 * math.exp(sigma * _NORMAL.inv_cdf(q))


def _sample_size_class(rng, forced=None):
    if forced is not None:
        return forced
    probs = np.array([b - a for a, b in _SIZE_BANDS.values()])
    return schema.SIZES[int(rng.choice(3, p=probs / probs.sum()))]


def _band_quantile(rng, size):
    lo, hi = _SIZE_BANDS[size]
    return float(rng.uniform(lo, hi))


# =============================================================================================
# Case model
# =============================================================================================
@dataclasses.dataclass(frozen=True)
class Anatomy:
    """Patient anatomy, projection and exposure; all lengths in canonical units (see module doc)."""

    # projection: image = shift + centre + scale * R(rotation) (canonical - centre)
    rotation: float = 0.0
    scale: float = 1.0
    shift_x: float = 0.0
    shift_y: float = 0.0
    # lungs (s = distance from the midline; per side: index 0 = patient right, 1 = left)
    apex: tuple = (0.14, 0.135)           # v of the lung apices
    lateral: tuple = (0.395, 0.40)        # s of the lateral lung wall at the base
    apex_width: tuple = (0.22, 0.22)      # s of the lateral wall at apex level
    widening: float = 0.12                # how fast the lung widens below the apex
    dome: tuple = (0.67, 0.695)           # v of the top of each hemidiaphragm (right higher)
    sulcus: float = 0.09                  # costophrenic angle depth below the dome
    medial: float = 0.03                  # s of the medial lung edge (behind the mediastinum)
    # heart and mediastinum
    ctr: float = 0.45                     # cardiothoracic ratio of the heart silhouette
    heart_right_frac: float = 0.32        # share of heart width right of the midline
    heart_height: float = 0.13            # vertical semi-axis
    heart_tilt: float = 0.6               # radians; long axis down towards the image right
    mediastinum: float = 0.055            # half-width of the upper mediastinum
    knob: float = 0.032                   # aortic knob radius
    # bones and soft tissue
    rib_spacing: float = 0.066
    rib_phase: float = 0.0
    rib_rise: float = 0.6
    rib_fall: float = 1.9
    clavicle_v: float = 0.19
    clavicle_slope: float = -0.24
    body_width: float = 0.465
    breasts: float = 0.0                  # breast shadow density (0 = none)
    soft: float = 1.0                     # soft-tissue thickness factor
    # exposure
    kvp: float = 1.2                      # attenuation -> intensity steepness
    gamma: float = 1.0
    black: float = 0.04
    white: float = 0.97
    noise: float = 0.02
    texture_seed: int = 0


@dataclasses.dataclass(frozen=True)
class Lesion:
    """One rendered part of a finding: one region, one box."""

    side: str | None          # 'right' | 'left' | 'bilateral' (edema) | None (cardiomegaly)
    size: str                 # schema.SIZES
    params: tuple = ()        # ((name, value), ...) geometry in the canonical frame

    def p(self, name, default=None):
        return dict(self.params).get(name, default)


@dataclasses.dataclass(frozen=True)
class Finding:
    """A finding as a report states it: name, patient side, zone, size and its lesions."""

    name: str                 # one of RENDERED_FINDINGS (schema.FINDINGS names)
    side: str | None          # 'right' | 'left' | 'bilateral' | None
    zone: str | None          # schema.ZONES or None
    size: str                 # schema.SIZES (severity for cardiomegaly / edema)
    lesions: tuple = ()


@dataclasses.dataclass(frozen=True)
class Case:
    anatomy: Anatomy
    findings: tuple = ()

    @property
    def normal(self) -> bool:
        return not self.findings


@dataclasses.dataclass(frozen=True)
class Region:
    finding: str
    side: str | None
    zone: str | None
    size: str
    lesion: Lesion
    finding_index: int        # index into case.findings


def case_regions(case: Case) -> list:
    """The regions of a case, in box / caption order: one per lesion."""
    out = []
    for i, f in enumerate(case.findings):
        for lesion in f.lesions:
            out.append(Region(f.name, lesion.side, f.zone, lesion.size, lesion, i))
    return out


# =============================================================================================
# Sampling
# =============================================================================================
def sample_anatomy(rng: np.random.Generator) -> Anatomy:
    """A patient, a projection and an exposure."""
    u = rng.uniform
    insp = u(-0.035, 0.035)               # inspiration depth: deeper breath -> lower domes
    dome_r = 0.67 + insp
    apex = 0.14 + u(-0.012, 0.012)
    lateral = 0.395 + u(-0.02, 0.02)
    return Anatomy(
        rotation=float(np.clip(rng.normal(0.0, 0.025), -0.06, 0.06)),
        scale=u(0.93, 1.05),
        shift_x=float(np.clip(rng.normal(0.0, 0.012), -0.03, 0.03)),
        shift_y=float(np.clip(rng.normal(0.0, 0.012), -0.03, 0.03)),
        apex=(apex + u(-0.006, 0.006), apex + u(-0.006, 0.006)),
        lateral=(lateral + u(-0.01, 0.01), lateral + u(-0.01, 0.01)),
        apex_width=(u(0.2, 0.24), u(0.2, 0.24)),
        widening=u(0.1, 0.14),
        dome=(dome_r, dome_r + u(0.012, 0.04)),
        sulcus=u(0.075, 0.1),
        medial=u(0.025, 0.035),
        ctr=u(0.39, 0.48),
        heart_right_frac=u(0.27, 0.36),
        heart_height=u(0.12, 0.145),
        heart_tilt=u(0.45, 0.7),
        mediastinum=u(0.048, 0.064),
        knob=u(0.026, 0.038),
        rib_spacing=u(0.06, 0.07),
        rib_phase=u(0.0, 1.0),
        rib_rise=u(0.5, 0.7),
        rib_fall=u(1.7, 2.1),
        clavicle_v=u(0.17, 0.21),
        clavicle_slope=u(-0.3, -0.18),
        body_width=u(0.45, 0.49),
        breasts=float(u(0.08, 0.16)) if rng.random() < 0.4 else 0.0,
        soft=u(0.9, 1.1),
        kvp=u(1.0, 1.4),
        gamma=u(0.8, 1.25),
        black=u(0.0, 0.08),
        white=u(0.93, 1.02),
        noise=u(0.012, 0.03),
        texture_seed=int(rng.integers(0, 2**31 - 1)),
    )


# Vertical zone bands as fractions of the apex -> dome distance of each lung, and the hila.  Set
# so that box centres match the NIH / RSNA centre percentiles (see test_synthetic).
_ZONE_BANDS = {"apical": (0.04, 0.16), "upper": (0.2, 0.45), "middle": (0.45, 0.68),
               "lower": (0.68, 0.9), "basal": (0.86, 1.0), "diffuse": (0.3, 0.85)}
_HILUM_B = (0.44, 0.40)            # right, left: the left hilum sits higher


def _sidx(side):
    return 0 if side == "right" else 1


def _lat_s(anat: Anatomy, i: int, v: float) -> float:
    t = max(v - anat.apex[i], 0.0)
    return anat.lateral[i] - (anat.lateral[i] - anat.apex_width[i]) * math.exp(-t / anat.widening)


def _heart_geometry(anat: Anatomy, ctr: float | None = None):
    """Heart ellipse (cx, cy, ax, ay, tilt) for a cardiothoracic ratio."""
    ctr = anat.ctr if ctr is None else ctr
    thoracic = anat.lateral[0] + anat.lateral[1]
    width = ctr * thoracic
    half = width / 2
    ay = anat.heart_height * (1.0 + 2.5 * max(ctr - 0.48, 0.0))
    c, s = math.cos(anat.heart_tilt), math.sin(anat.heart_tilt)
    # horizontal half-extent of a rotated ellipse = sqrt(ax^2 c^2 + ay^2 s^2)
    ax = math.sqrt(max(half ** 2 - (ay * s) ** 2, (0.6 * half) ** 2)) / c
    cx = 0.5 - anat.heart_right_frac * width + half
    cy = anat.dome[1] - 0.5 * ay
    return cx, cy, ax, ay, anat.heart_tilt


def _heart_s_range(anat: Anatomy, v: float, geom=None):
    """(s_right, s_left): how far the heart reaches from the midline on each side at level v."""
    cx, cy, ax, ay, tilt = geom or _heart_geometry(anat)
    us = np.linspace(0.2, 0.8, 241)
    c, s = math.cos(tilt), math.sin(tilt)
    dx, dy = us - cx, v - cy
    xr, yr = c * dx + s * dy, -s * dx + c * dy
    inside = (xr / ax) ** 2 + (yr / ay) ** 2 <= 1.0
    if not inside.any():
        return 0.0, 0.0
    return max(0.5 - us[inside].min(), 0.0), max(us[inside].max() - 0.5, 0.0)


def _zone_point(rng, anat: Anatomy, side: str, zone: str, margin: float = 0.0):
    """A canonical (u, v) inside the lung of ``side`` in ``zone`` (patient side)."""
    i = _sidx(side)
    apex, dome = anat.apex[i], anat.dome[i]
    span = dome - apex
    hilum_v = apex + _HILUM_B[i] * span
    bands = _ZONE_BANDS
    if zone == "perihilar":
        v = hilum_v + rng.uniform(-0.05, 0.06)
        a_lo, a_hi = 0.08, 0.35
    elif zone == "retrocardiac":
        v = apex + rng.uniform(0.72, 0.92) * span
        hr = _heart_s_range(anat, v)
        s_hi = max(min(hr[1] - 0.03, 0.16), anat.medial + 0.04)
        s = rng.uniform(anat.medial + 0.035, s_hi)
        u = 0.5 - s if side == "right" else 0.5 + s
        return float(u), float(v)
    else:
        lo, hi = bands.get(zone, bands["diffuse"])
        v = apex + rng.uniform(lo, hi) * span
        a_lo, a_hi = (0.25, 0.8) if zone != "apical" else (0.3, 0.7)
    s_lat = _lat_s(anat, i, v) - margin - 0.01
    hr = _heart_s_range(anat, v)
    s_med = max(anat.medial + 0.05, (hr[i] + 0.02) if zone != "perihilar" else 0.0,
                anat.mediastinum + 0.02)
    s_med = min(s_med, s_lat - 0.02)
    s = s_med + rng.uniform(a_lo, a_hi) * max(s_lat - s_med, 0.0)
    if zone == "apical":
        v = max(v, anat.apex[i] + 3.0 * (s - 0.17) ** 2 + margin + 0.01)
    u = 0.5 - s if side == "right" else 0.5 + s
    return float(u), float(v)


def _pairs(**kw):
    return tuple(sorted((k, float(v) if isinstance(v, (int, float, np.floating)) else v)
                        for k, v in kw.items()))


def _sample_lesion(rng, anat: Anatomy, name: str, side: str, zone: str, size: str) -> Lesion:
    seed = int(rng.integers(0, 2**31 - 1))
    q = _band_quantile(rng, size)
    st = BOX_STATS.get(name)
    if name in ("nodule", "mass"):
        d = _lognormal_quantile(st["w"], q) * rng.uniform(0.9, 1.1)
        if name == "mass":
            d = max(d, 0.085)
        else:
            d = min(d, 0.1)
        r = d / 2
        u, v = _zone_point(rng, anat, side, zone, margin=r)
        return Lesion(side, size, _pairs(u=u, v=v, r=r, ecc=rng.uniform(0.85, 1.15),
                                         angle=rng.uniform(0, math.pi), seed=seed,
                                         amp=rng.uniform(0.32, 0.5) if name == "nodule"
                                         else rng.uniform(0.38, 0.55),
                                         calcified=float(name == "nodule" and rng.random() < 0.15)))
    if name == "consolidation":
        w = _lognormal_quantile(st["w"], q) * rng.uniform(0.85, 1.15)
        h = _lognormal_quantile(st["h"], min(max(q + rng.normal(0, 0.1), 0.02), 0.98))
        h = min(max(h, 0.7 * w), 1.9 * w)
        u, v = _zone_point(rng, anat, side, zone, margin=0.3 * w)
        return Lesion(side, size, _pairs(u=u, v=v, rx=w / 2, ry=h / 2, seed=seed,
                                         amp=rng.uniform(0.3, 0.5),
                                         bronchograms=float(size != "small" and rng.random() < 0.6)))
    if name == "atelectasis":
        w = _lognormal_quantile(st["w"], q) * rng.uniform(0.9, 1.1)
        h = _lognormal_quantile(st["h"], q)
        kind = {"small": "plate", "moderate": "segmental", "large": "lobar"}[size]
        if kind == "plate":
            w = min(w, 0.2)
        u, v = _zone_point(rng, anat, side, zone, margin=0.25 * w)
        return Lesion(side, size, _pairs(u=u, v=v, w=w, h=h, kind=kind, seed=seed,
                                         angle=rng.uniform(-0.25, 0.25),
                                         lines=float(rng.integers(1, 3)),
                                         amp=rng.uniform(0.3, 0.45)))
    if name == "pleural_effusion":
        i = _sidx(side)
        # fluid height above the costophrenic angle ~ box height: NIH 'Effusion' h quantiles
        height = min(max(_lognormal_quantile(st["h"], q), 0.07), 0.5)
        return Lesion(side, size, _pairs(height=height, meniscus=rng.uniform(0.025, 0.05),
                                         layer=rng.uniform(0.025, 0.04),
                                         amp=rng.uniform(0.85, 0.95), seed=seed,
                                         level=anat.dome[i] + anat.sulcus - height))
    if name == "pneumothorax":
        i = _sidx(side)
        span = anat.dome[i] - anat.apex[i]
        depth = {"small": rng.uniform(0.018, 0.03), "moderate": rng.uniform(0.035, 0.06),
                 "large": rng.uniform(0.07, 0.12)}[size]
        if size == "large":
            extent = rng.uniform(0.75, 1.0)
        elif zone == "apical":
            extent = rng.uniform(0.12, 0.3) if size == "small" else rng.uniform(0.25, 0.45)
        else:
            extent = rng.uniform(0.3, 0.5) if size == "small" else rng.uniform(0.45, 0.7)
        return Lesion(side, size, _pairs(depth=depth, v_end=anat.apex[i] + extent * span,
                                         seed=seed))
    if name == "cardiomegaly":
        ctr = {"small": rng.uniform(0.52, 0.56), "moderate": rng.uniform(0.56, 0.62),
               "large": rng.uniform(0.62, 0.7)}[size]
        return Lesion(None, size, _pairs(ctr=ctr))
    if name == "edema":
        amp = {"small": rng.uniform(0.12, 0.16), "moderate": rng.uniform(0.17, 0.23),
               "large": rng.uniform(0.24, 0.32)}[size]
        return Lesion("bilateral", size, _pairs(amp=amp, seed=seed,
                                                kerley=float(size != "small" and rng.random() < 0.6),
                                                spread=rng.uniform(0.9, 1.15)))
    raise ValueError(f"cannot render finding {name!r}")


def _sample_finding(rng, anat: Anatomy, name: str) -> Finding:
    combos = finding_mix()["combos"][name]
    probs = np.array([p for _, p in combos])
    (zone, side, forced), _ = combos[int(rng.choice(len(combos), p=probs / probs.sum()))]
    size = _sample_size_class(rng, forced)
    if name == "cardiomegaly":
        return Finding(name, None, None, size, (_sample_lesion(rng, anat, name, None, None, size),))
    if name == "edema":
        return Finding(name, "bilateral", zone, size,
                       (_sample_lesion(rng, anat, name, "bilateral", zone, size),))
    if zone == "retrocardiac":
        side = "left"
    if side == "bilateral":
        sizes = [size, size]
        if rng.random() < 0.35 and forced is None:   # 'moderate right and small left effusions'
            sizes[int(rng.integers(2))] = _sample_size_class(rng)
        lesions = tuple(_sample_lesion(rng, anat, name, s, zone, sz)
                        for s, sz in zip(("right", "left"), sizes))
        size = max(sizes, key=schema.SIZES.index)
    else:
        lesions = (_sample_lesion(rng, anat, name, side, zone, size),)
    return Finding(name, side, zone, size, lesions)


def sample_case(rng: np.random.Generator, normal_fraction: float = NORMAL_FRACTION,
                findings: Sequence[str] | None = None) -> Case:
    """Sample a patient and its findings.

    ``normal_fraction`` of cases have no finding.  Otherwise 1-4 distinct findings are drawn
    without replacement with the tempered IU weights (``finding_mix()['weights']``); pulmonary
    edema brings cardiomegaly (50 %) and bilateral effusions (40 %) with it, as in heart failure.
    ``findings`` forces exactly those finding names (attributes still sampled); findings are
    always listed in ``RENDERED_FINDINGS`` order.
    """
    anat = sample_anatomy(rng)
    if findings is None:
        if rng.random() < normal_fraction:
            return Case(anat, ())
        mix = finding_mix()["weights"]
        names = list(RENDERED_FINDINGS)
        w = np.array([mix[n] for n in names])
        k = 1 + int(rng.choice(len(_NUM_FINDINGS_P), p=_NUM_FINDINGS_P))
        picked = list(rng.choice(len(names), size=k, replace=False, p=w / w.sum()))
        chosen = [names[j] for j in sorted(picked)]
        if "edema" in chosen:
            if "cardiomegaly" not in chosen and rng.random() < 0.5:
                chosen.append("cardiomegaly")
            if "pleural_effusion" not in chosen and rng.random() < 0.4:
                chosen.append("pleural_effusion")
        chosen = [n for n in RENDERED_FINDINGS if n in chosen]
    else:
        unknown = [n for n in findings if n not in RENDERED_FINDINGS]
        if unknown:
            raise ValueError(f"synthetic: cannot render {unknown}; known: {RENDERED_FINDINGS}")
        chosen = [n for n in RENDERED_FINDINGS if n in findings]
    out = []
    for name in chosen:
        f = _sample_finding(rng, anat, name)
        if name == "pleural_effusion" and "edema" in chosen and findings is None and len(f.lesions) == 1:
            sz = f.size
            f = Finding(name, "bilateral", "basal", sz,
                        tuple(_sample_lesion(rng, anat, name, s, "basal", sz)
                              for s in ("right", "left")))
        out.append(f)
    return Case(anat, tuple(out))


# =============================================================================================
# Rendering
# =============================================================================================
def _sig(x):
    """Logistic function (float32), via tanh."""
    return 0.5 + 0.5 * np.tanh(0.5 * x)


def _ramp(x):
    return np.clip(x, 0.0, 1.0)


@functools.lru_cache(maxsize=8)
def _grid(size: int):
    c = ((np.arange(size, dtype=np.float32) + 0.5) / size)
    return c[None, :].repeat(size, 0), c[:, None].repeat(size, 1)


def _gaussian_tile(n: int, sigma_px: float, seed: int) -> np.ndarray:
    """Periodic smooth noise of unit std on an n x n tile (FFT filtered white noise)."""
    white = np.random.default_rng(seed).standard_normal((n, n))
    f = np.fft.fftfreq(n)
    k2 = f[:, None] ** 2 + f[None, :] ** 2
    tile = np.fft.ifft2(np.fft.fft2(white) * np.exp(-2 * (math.pi * sigma_px) ** 2 * k2)).real
    tile /= tile.std() + 1e-12
    return tile.astype(np.float32)


@functools.lru_cache(maxsize=8)
def _tiles(size: int) -> dict:
    """Cached noise tiles (2x the image) from fixed seeds: crops at random offsets give each image
    its own texture at the price of a slice.  Scales are relative to the image size."""
    n = 2 * size
    return {
        "grain": _gaussian_tile(n, 0.6, 11),
        "fine": _gaussian_tile(n, size / 90, 12),
        "mid": _gaussian_tile(n, size / 40, 13),
        "coarse": _gaussian_tile(n, size / 14, 14),
    }


def _crop(size, kind, rng_or_seed, shape=None, window=None):
    tile = _tiles(size)[kind]
    rng = np.random.default_rng(rng_or_seed) if not isinstance(rng_or_seed, np.random.Generator) \
        else rng_or_seed
    oy, ox = (int(x) for x in rng.integers(0, size, 2))
    if window is not None:
        sy, sx = window
        return tile[oy + sy.start: oy + sy.stop, ox + sx.start: ox + sx.stop]
    return tile[oy: oy + size, ox: ox + size]


class _Ctx:
    """Per-image arrays shared by the anatomy and the findings."""

    def __init__(self, anat: Anatomy, size: int):
        self.anat, self.size = anat, size
        X, Y = _grid(size)
        c, s = math.cos(anat.rotation), math.sin(anat.rotation)
        dx = X - (0.5 + anat.shift_x)
        dy = Y - (0.5 + anat.shift_y)
        inv = 1.0 / anat.scale
        self.u = (0.5 + (c * dx + s * dy) * inv).astype(np.float32)
        self.v = (0.5 + (-s * dx + c * dy) * inv).astype(np.float32)
        self.px = inv / size                       # one pixel in canonical units
        self.c, self.s = c, s

    def window(self, u0, v0, u1, v1):
        """Pixel slices covering a canonical rectangle (with a 2 px margin)."""
        a = self.anat
        xs, ys = [], []
        for uu in (u0, u1):
            for vv in (v0, v1):
                du, dv = (uu - 0.5) * a.scale, (vv - 0.5) * a.scale
                xs.append(0.5 + a.shift_x + self.c * du - self.s * dv)
                ys.append(0.5 + a.shift_y + self.s * du + self.c * dv)
        n = self.size
        x0 = int(np.clip(math.floor(min(xs) * n) - 2, 0, n - 1))
        x1 = int(np.clip(math.ceil(max(xs) * n) + 2, x0 + 1, n))
        y0 = int(np.clip(math.floor(min(ys) * n) - 2, 0, n - 1))
        y1 = int(np.clip(math.ceil(max(ys) * n) + 2, y0 + 1, n))
        return slice(y0, y1), slice(x0, x1)


def _box_from_mask(mask: np.ndarray, window, size: int):
    """Tight normalised xyxy box of a boolean mask computed on ``window``; None if empty."""
    rows = np.flatnonzero(mask.any(1))
    cols = np.flatnonzero(mask.any(0))
    if rows.size == 0:
        return None
    sy, sx = window
    y0, y1 = rows[0] + sy.start, rows[-1] + 1 + sy.start
    x0, x1 = cols[0] + sx.start, cols[-1] + 1 + sx.start
    return np.array([x0 / size, y0 / size, x1 / size, y1 / size], np.float32)


def _lung_fields(ctx: _Ctx, heart_ctr: float):
    """Lung signed fields and the heart / mediastinum masks."""
    a = ctx.anat
    u, v = ctx.u, ctx.v
    left = (u > 0.5).astype(np.float32)
    s = np.abs(u - 0.5)
    def per(pair):
        return pair[0] + left * (pair[1] - pair[0])
    apex, lat, apw, dome = per(a.apex), per(a.lateral), per(a.apex_width), per(a.dome)
    t = np.maximum(v - apex, 0.0)
    s_lat = lat - (lat - apw) * np.exp(-t / a.widening)
    d_lat = s_lat - s
    d_top = (v - apex) - 5.0 * (s - 0.17) ** 2
    ds = s - 0.19
    k_lat = a.sulcus / (lat - 0.19) ** 2
    dome_v = dome + ds * ds * (0.9 + (ds > 0) * (k_lat - 0.9))
    d_dia = dome_v - v
    d_med = s - a.medial
    d_lt = np.minimum(d_lat, d_top)
    d_lung = np.minimum(np.minimum(d_lt, d_dia), d_med)
    eps = 0.9 * ctx.px
    lung = _sig(d_lung / eps)

    # heart: tilted ellipse, bottom hidden by the diaphragm / abdomen
    cx, cy, ax, ay, tilt = _heart_geometry(a, heart_ctr)
    c, sn = math.cos(tilt), math.sin(tilt)
    hx, hy = u - cx, v - cy
    yr = (-sn * hx + c * hy) / ay
    xr = (c * hx + sn * hy) / (ax * (1.0 + 0.15 * yr))     # wider towards the diaphragm
    rho = np.sqrt(xr * xr + yr * yr)
    heart = _sig((1.0 - rho) * min(ax, ay) / eps) * _sig((dome_v + 0.03 - v) / 0.02)
    # mediastinum: a band around the midline (trachea, vessels), aortic knob on the image right
    med_w = a.mediastinum * (1.0 + 0.35 * _sig((v - 0.36) / 0.03))
    med = _sig((med_w - np.abs(u - 0.5 - 0.008)) / (1.5 * eps)) * _sig((0.72 - v) / 0.02)
    kx, ky = 0.5 + a.mediastinum - 0.008, a.apex[1] + 0.2
    knob = _sig((a.knob - np.sqrt((u - kx) ** 2 + ((v - ky) * 1.2) ** 2)) / eps)
    occ = np.maximum(np.maximum(heart, med), knob)
    return dict(left=left, s=s, lung=lung, d_lung=d_lung, d_lt=d_lt, dome_v=dome_v, s_lat=s_lat,
                heart=heart, occ=occ, heart_geom=(cx, cy, ax, ay, tilt), eps=eps)


def _segment(u, v, p0, p1, width, eps):
    """Soft tube around the segment p0-p1."""
    d0, d1 = p1[0] - p0[0], p1[1] - p0[1]
    L2 = d0 * d0 + d1 * d1
    t = np.clip(((u - p0[0]) * d0 + (v - p0[1]) * d1) / L2, 0.0, 1.0)
    px, py = u - (p0[0] + t * d0), v - (p0[1] + t * d1)
    return _sig((width - np.sqrt(px * px + py * py)) / eps)


def _render_anatomy(ctx: _Ctx, f: dict):
    """Attenuation components of the normal chest (before findings)."""
    a, u, v, s, eps = ctx.anat, ctx.u, ctx.v, f["s"], f["eps"]
    size = ctx.size
    rng = np.random.default_rng(a.texture_seed)

    # ---- body outline: neck, shoulders, chest wall; arms beyond
    shoulder = 0.11 + 0.42 * _sig((v - 0.085) / 0.025)
    wall = a.body_width + 0.012 * np.cos(6.0 * v)
    body_w = np.minimum(shoulder, wall + 0.06 * _sig((0.2 - v) / 0.04))
    body = _sig((body_w - s) / (2.5 * eps))
    thick = a.soft * (0.62 + 0.16 * _ramp(1.0 - (s / 0.5) ** 4)) * body
    arms = 0.45 * _sig((s - body_w - 0.025) / (3 * eps)) * _sig((v - 0.06) / 0.04)
    arms = arms * _sig((0.9 - v) / 0.05)
    abdomen = 0.2 * _sig((v - f["dome_v"] - 0.01) / 0.03) * body
    soft = thick + arms + abdomen
    # breast shadows over the lower zones
    if a.breasts > 0:
        bd = np.sqrt(((s - 0.28) / 0.2) ** 2 + ((v - 0.68) / 0.14) ** 2)
        soft = soft + a.breasts * _sig((1.0 - bd) / 0.06) * _sig((v - 0.6) / 0.05)

    # ---- bones
    # spine: vertebral bodies with end plates, pedicles (computed in a window around the midline)
    bones = np.zeros_like(u)
    w = ctx.window(0.44, -0.1, 0.56, 1.1)
    uw, vw = u[w], v[w]
    sp_w = 0.028 + 0.012 * vw
    spine = _sig((sp_w - np.abs(uw - 0.5)) / (1.5 * eps))
    disc = np.cos(2 * math.pi * (vw - 0.05) / (0.04 + 0.02 * vw))
    ped = np.exp(-(((np.abs(uw - 0.5) - 0.7 * sp_w) / 0.007) ** 2)) * _sig((disc - 0.3) * 5)
    bones[w] = spine * (0.045 + 0.015 * disc + 0.04 * ped)
    # posterior ribs: arcs rising from the spine then falling laterally; anterior ribs fainter
    in_chest = (_sig((f["s_lat"] + 0.03 - s) / (2 * eps)) * _sig((s - 0.035) / 0.01)
                * _sig((0.86 - v) / 0.03))
    g = -a.rib_rise * s + a.rib_fall * s * s
    ph = (v - g - 0.075 - 0.3 * a.rib_phase * a.rib_spacing) / (a.rib_spacing * (1.0 + 0.25 * v))
    cph = np.cos(2 * math.pi * ph)
    band = _sig((cph - 0.25) / 0.1)
    rib = band * (0.55 + 0.45 * _sig((-np.sin(2 * math.pi * ph) - 0.75) / 0.06))
    bones += 0.095 * rib * in_chest * _sig((ph + 0.25) / 0.1)
    pha = (v + 0.6 * s - 0.27) / (1.1 * a.rib_spacing)
    arib = _sig((np.cos(2 * math.pi * pha) - 0.55) / 0.1) * _sig((s - 0.17) / 0.04)
    bones += 0.035 * arib * in_chest * _sig((v - 0.2) / 0.05)
    # clavicles
    w = ctx.window(0.12, a.clavicle_v - 0.14, 0.88, a.clavicle_v + 0.04)
    sw, vw = s[w], v[w]
    sc = sw - 0.045
    cv = a.clavicle_v + a.clavicle_slope * sc + 0.5 * sc * sc - 0.8 * sc * sc * sc
    clav = (_sig((0.0115 - np.abs(vw - cv)) / (1.2 * eps)) * _sig((sw - 0.045) / 0.006)
            * _sig((0.33 - sw) / 0.012))
    bones[w] += 0.16 * clav
    # scapular edges over the lateral upper zones
    w = ctx.window(0.0, 0.12, 1.0, 0.62)
    sw, vw = s[w], v[w]
    scap = (np.exp(-(((sw - (0.36 + 0.25 * (vw - 0.2))) / 0.005) ** 2)) * _sig((vw - 0.2) / 0.03)
            * _sig((0.5 - vw) / 0.04))
    bones[w] += 0.04 * scap

    # ---- airways: trachea and main bronchi
    carina = (0.505, a.apex[0] + 0.21)
    air_ways = np.zeros_like(u)
    w = ctx.window(0.43, -0.05, 0.585, carina[1] + 0.09)
    uw, vw = u[w], v[w]
    trachea = _sig((0.016 - np.abs(uw - 0.505)) / (1.5 * eps)) * _sig((carina[1] - vw) / 0.01)
    bronchi = _segment(uw, vw, carina, (0.505 - 0.045, carina[1] + 0.07), 0.01, 1.5 * eps)
    bronchi = np.maximum(bronchi, _segment(uw, vw, carina, (0.505 + 0.06, carina[1] + 0.055),
                                           0.009, 1.5 * eps))
    air_ways[w] = 0.16 * np.maximum(trachea, bronchi) * _sig((vw - 0.03) / 0.02)

    # ---- lung markings: hila and vessels radiating from them
    hv = tuple(a.apex[i] + _HILUM_B[i] * (a.dome[i] - a.apex[i]) for i in (0, 1))
    left = f["left"]
    hxp = 0.5 - 0.085 + left * 0.17
    hyp = hv[0] + left * (hv[1] - hv[0])
    dx, dy = u - hxp, v - hyp
    r = np.sqrt(dx * dx + dy * dy) + 1e-4
    theta = np.arctan2(dy, dx)
    fine = _crop(size, "fine", rng)
    w1 = np.cos(26 * theta + 2.0 * fine + 16 * r)
    w2 = np.cos(13 * theta - 1.6 * fine - 9 * r + 1.3)
    vessels = (_sig((w1 - 0.55 - 2.0 * r) / 0.06) + 1.2 * _sig((w2 - 0.55 - 1.2 * r) / 0.06))
    taper = np.exp(-r / 0.12) * _sig((r - 0.035) / 0.01)
    hilum = np.exp(-((dx / 0.028) ** 2 + (dy / 0.055) ** 2))
    markings = 0.09 * vessels * taper + 0.14 * hilum
    paren = 0.015 * _crop(size, "mid", rng) + 0.015 * fine

    # gastric bubble under the left dome
    gb_u, gb_v = 0.5 + 0.17, a.dome[1] + 0.055
    bubble = np.zeros_like(u)
    w = ctx.window(gb_u - 0.08, gb_v - 0.05, gb_u + 0.08, gb_v + 0.05)
    uw, vw = u[w], v[w]
    bub = _sig((1.0 - np.sqrt(((uw - gb_u) / 0.055) ** 2 + ((vw - gb_v) / 0.03) ** 2)) / 0.12)
    bubble[w] = bub * _sig((vw - gb_v + 0.012) / (1.5 * eps)) * (0.1 + 0.15 * rng.random())
    return dict(soft=soft, body=body, bones=bones, air_ways=air_ways, markings=markings,
                paren=paren, bubble=bubble, rng=rng)


# ---- findings ---------------------------------------------------------------------------------
def _lesion_mask_box(field, thr, window, size):
    """Box of ``field > thr``; at very low resolution, of the field's upper half instead."""
    box = _box_from_mask(field > thr, window, size)
    if box is None and field.size and field.max() > 0:
        box = _box_from_mask(field >= 0.5 * field.max(), window, size)
    return box


def _render_round(ctx, f, les: Lesion, lobulated: bool):
    u0, v0, r = les.p("u"), les.p("v"), les.p("r")
    ext = 1.35 * r + 4 * ctx.px
    win = ctx.window(u0 - ext, v0 - ext, u0 + ext, v0 + ext)
    u, v = ctx.u[win], ctx.v[win]
    ca, sa = math.cos(les.p("angle")), math.sin(les.p("angle"))
    du, dv = u - u0, v - v0
    x = (ca * du + sa * dv) / (r * les.p("ecc"))
    y = (-sa * du + ca * dv) * les.p("ecc") / r
    rho = np.sqrt(x * x + y * y)
    if lobulated:
        rng = np.random.default_rng(int(les.p("seed")))
        phi = np.arctan2(y, x)
        p = rng.uniform(0, 2 * math.pi, 3)
        lob = 1.0 + 0.1 * np.cos(3 * phi + p[0]) + 0.07 * np.cos(5 * phi + p[1]) \
            + 0.03 * np.cos(11 * phi + p[2])
        rho = rho / lob
    edge = max(0.12, 2.0 * ctx.px / r)
    body = _sig((1.0 - rho) / (0.45 * edge))
    core = 0.85 + 0.15 * _ramp(1.0 - rho)
    amp = les.p("amp") * (1.6 if les.p("calcified") else 1.0)
    field = amp * body * core * (0.35 + 0.65 * f["lung"][win])
    return win, field, _lesion_mask_box(field, 0.3 * amp, win, ctx.size)


def _render_consolidation(ctx, f, les: Lesion):
    u0, v0, rx, ry = les.p("u"), les.p("v"), les.p("rx"), les.p("ry")
    win = ctx.window(u0 - 1.3 * rx, v0 - 1.3 * ry, u0 + 1.3 * rx, v0 + 1.3 * ry)
    u, v = ctx.u[win], ctx.v[win]
    rng = np.random.default_rng(int(les.p("seed")))
    rho = np.sqrt(((u - u0) / rx) ** 2 + ((v - v0) / ry) ** 2)
    env = _ramp(1.25 - rho) / 1.25
    n1 = _crop(ctx.size, "mid", rng, window=win)
    n2 = _crop(ctx.size, "fine", rng, window=win)
    patch = _sig((2.2 * env - 0.45 + 0.35 * n1 + 0.15 * n2) / 0.12) * _sig((1.0 - rho) / 0.12)
    lung = f["lung"][win]
    dens = les.p("amp") * (0.3 * _ramp(1.6 * env) + 0.7 * patch) * lung
    if les.p("bronchograms"):
        # air bronchograms: thin tortuous lucent tubes (ridges of a smooth field) in the dense core
        n3 = _crop(ctx.size, "mid", rng, window=win)
        br = np.exp(-(n3 / 0.14) ** 2) * _sig((patch - 0.8) / 0.06) * _sig((0.75 - rho) / 0.1)
        dens = dens * (1.0 - 0.3 * br)
    return win, dens, _lesion_mask_box(dens, 0.3 * les.p("amp"), win, ctx.size)


def _render_atelectasis(ctx, f, les: Lesion):
    u0, v0, w, h = les.p("u"), les.p("v"), les.p("w"), les.p("h")
    kind = les.p("kind")
    amp = les.p("amp")
    ext = 0.6 * max(w, h) + 0.03
    win = ctx.window(u0 - ext, v0 - ext, u0 + ext, v0 + ext)
    u, v = ctx.u[win], ctx.v[win]
    lung = f["lung"][win]
    rng = np.random.default_rng(int(les.p("seed")))
    ca, sa = math.cos(les.p("angle")), math.sin(les.p("angle"))
    du, dv = u - u0, v - v0
    par = ca * du + sa * dv
    perp = -sa * du + ca * dv
    if kind == "plate":
        dens = np.zeros_like(u)
        n = int(les.p("lines"))
        offs = [0.0] if n == 1 else [-0.25 * h, 0.25 * h]
        for k, off in enumerate(offs):
            half = 0.5 * w * (1.0 if k == 0 else rng.uniform(0.6, 0.9))
            t = max(0.006, 0.12 * h) + 0.5 * ctx.px
            line = np.exp(-((perp - off + 0.04 * (par / max(w, 1e-3)) ** 2) / t) ** 2)
            shift = rng.uniform(-0.1, 0.1) * w
            dens = np.maximum(dens, line * _sig((half - np.abs(par - shift)) / 0.008))
        dens = amp * 1.1 * dens * lung
    elif kind == "segmental":
        rho = np.sqrt((par / (0.5 * w)) ** 2 + (perp / (0.5 * h)) ** 2)
        n1 = _crop(ctx.size, "fine", rng, window=win)
        dens = amp * _sig((1.0 - rho + 0.12 * n1) / 0.1) * lung
    else:  # lobar collapse: dense triangle with its apex towards the hilum
        toward_mid = 1.0 if les.side == "right" else -1.0
        # triangle: base along the lateral/lower side of the box, apex at the medial-upper corner
        p_apex = (u0 + toward_mid * 0.5 * w, v0 - 0.5 * h)
        p_b1 = (u0 - toward_mid * 0.5 * w, v0 + 0.5 * h)
        p_b2 = (u0 + toward_mid * 0.5 * w, v0 + 0.5 * h)
        d = None
        pts = [p_apex, p_b1, p_b2]
        cxm, cym = sum(p[0] for p in pts) / 3, sum(p[1] for p in pts) / 3
        for (x0, y0), (x1, y1) in zip(pts, pts[1:] + pts[:1]):
            nx, ny = y1 - y0, -(x1 - x0)
            ln = math.hypot(nx, ny)
            nx, ny = nx / ln, ny / ln
            if (cxm - x0) * nx + (cym - y0) * ny < 0:
                nx, ny = -nx, -ny
            di = (u - x0) * nx + (v - y0) * ny
            d = di if d is None else np.minimum(d, di)
        dens = 1.1 * amp * _sig(d / (2 * ctx.px)) * lung
    return win, dens, _lesion_mask_box(dens, 0.3 * amp, win, ctx.size)


def _render_effusion(ctx, f, les: Lesion):
    a = ctx.anat
    i = _sidx(les.side)
    level, men, amp = les.p("level"), les.p("meniscus"), les.p("amp")
    bottom = a.dome[i] + a.sulcus + 0.02
    top = level - men - 0.03
    if i == 0:
        win = ctx.window(0.5 - a.lateral[0] - 0.03, top, 0.5, bottom)
    else:
        win = ctx.window(0.5, top, 0.5 + a.lateral[1] + 0.03, bottom)
    u, v = ctx.u[win], ctx.v[win]
    s = f["s"][win]
    x = _ramp((s - a.medial) / (a.lateral[i] - a.medial))
    surf = level + men * (1.0 - x * x * x)
    # the fluid also layers over the lateral part of the dome (blunting, subpulmonic rim)
    surf = np.minimum(surf, f["dome_v"][win] - les.p("layer") * x * x)
    side = _sig((u - 0.5) / ctx.px) if i == 1 else _sig((0.5 - u) / ctx.px)
    fluid = _sig((v - surf) / 0.012) * (0.75 + 0.25 * _ramp((v - surf) / 0.12)) * side
    lung = f["lung"][win]
    fl = amp * fluid
    visible = fl * lung * (1.0 - f["occ"][win])      # fluid seen against aerated lung
    return win, fl, _lesion_mask_box(visible, 0.35, win, ctx.size)


def _render_pneumothorax(ctx, f, les: Lesion):
    a = ctx.anat
    i = _sidx(les.side)
    depth, v_end = max(les.p("depth"), 3.0 * ctx.px), les.p("v_end")
    if i == 0:
        win = ctx.window(0.5 - a.lateral[0] - 0.02, a.apex[0] - 0.03, 0.5, v_end + 0.06)
    else:
        win = ctx.window(0.5, a.apex[1] - 0.03, 0.5 + a.lateral[1] + 0.02, v_end + 0.06)
    u, v = ctx.u[win], ctx.v[win]
    side = _sig((u - 0.5) / ctx.px) if i == 1 else _sig((0.5 - u) / ctx.px)
    lung = f["lung"][win] * side
    s = f["s"][win]
    delta = depth * _sig((v_end - v) / 0.025) * _sig((s - 0.14) / 0.025)   # apicolateral
    d_lt = f["d_lt"][win]
    ptx = lung * _sig((delta - d_lt) / ctx.px) * _sig((delta - 0.004) / 0.002)
    line = np.exp(-((d_lt - delta) / (0.9 * ctx.px)) ** 2) * _sig((delta - 0.006) / 0.003) * lung
    return win, (ptx, line), _lesion_mask_box(ptx, 0.5, win, ctx.size)


def _render_edema(ctx, f, les: Lesion, zone: str | None):
    a = ctx.anat
    amp, spread = les.p("amp"), les.p("spread")
    top = min(a.apex) + 0.05
    bottom = max(a.dome) + 0.02
    win = ctx.window(0.5 - a.lateral[0], top, 0.5 + a.lateral[1], bottom)
    u, v = ctx.u[win], ctx.v[win]
    left = f["left"][win]
    lung = f["lung"][win]
    rng = np.random.default_rng(int(les.p("seed")))
    span = a.dome[0] - a.apex[0]
    hy = a.apex[0] + (_HILUM_B[0] if zone != "basal" else 0.68) * span
    hx = 0.5 - 0.14 + 0.28 * left
    sx = (0.12 if zone != "diffuse" else 0.2) * spread
    sy = (0.15 if zone != "diffuse" else 0.26) * spread
    g = np.exp(-(((u - hx) / sx) ** 2 + ((v - hy) / sy) ** 2))
    n1 = _crop(ctx.size, "mid", rng, window=win)
    haze = amp * g * (0.85 + 0.25 * n1) * lung
    if les.p("kerley"):
        s = f["s"][win]
        s_lat = f["s_lat"][win]
        kl = _sig((np.cos(2 * math.pi * v / 0.014) - 0.8) / 0.06) * _sig((s - s_lat + 0.035) / 0.004)
        kl = kl * _sig((v - (a.dome[0] - 0.16)) / 0.01)
        haze = haze + 0.1 * kl * lung
    visible = haze * (1.0 - f["occ"][win])            # the haze seen over aerated lung
    return win, haze, _lesion_mask_box(visible, 0.35 * amp, win, ctx.size)


def render_case(case: Case, image_size: int = 256, regions: list | None = None):
    """Render a case: ``(image uint8 [H, W], boxes float32 [R, 4])``, R = len(case_regions(case)).

    Deterministic in ``case`` alone: background textures come from ``case.anatomy.texture_seed``
    and each lesion's from its own seed, so removing a finding leaves every other pixel's
    inputs unchanged.
    """
    size = int(image_size)
    a = case.anatomy
    ctx = _Ctx(a, size)
    regions = case_regions(case) if regions is None else regions
    ctr = a.ctr
    for reg in regions:
        if reg.finding == "cardiomegaly":
            ctr = reg.lesion.p("ctr")
    f = _lung_fields(ctx, ctr)
    anat = _render_anatomy(ctx, f)
    lung, occ = f["lung"], f["occ"]

    air = lung * (1.0 - 0.85 * occ)          # lung air seen through the heart / mediastinum
    extra = np.zeros_like(lung)               # added density from findings
    markings = anat["markings"] * lung
    ptx_air = None
    boxes = []
    for reg in regions:
        les = reg.lesion
        box = None
        if reg.finding in ("nodule", "mass"):
            win, dens, box = _render_round(ctx, f, les, reg.finding == "mass")
            extra[win] += dens * (1.0 - 0.4 * occ[win])
        elif reg.finding == "consolidation":
            win, dens, box = _render_consolidation(ctx, f, les)
            extra[win] += dens * (1.0 - 0.4 * occ[win])
        elif reg.finding == "atelectasis":
            win, dens, box = _render_atelectasis(ctx, f, les)
            extra[win] += dens * (1.0 - 0.4 * occ[win])
        elif reg.finding == "pleural_effusion":
            win, fl, box = _render_effusion(ctx, f, les)
            air[win] *= (1.0 - fl)
            markings[win] *= (1.0 - fl)
            extra[win] += 0.06 * fl * lung[win]
        elif reg.finding == "pneumothorax":
            win, (ptx, line), box = _render_pneumothorax(ctx, f, les)
            markings[win] *= (1.0 - ptx)
            if ptx_air is None:
                ptx_air = np.zeros_like(lung)
            ptx_air[win] += 0.14 * ptx
            extra[win] += 0.16 * line
        elif reg.finding == "edema":
            win, haze, box = _render_edema(ctx, f, les, reg.zone)
            extra[win] += haze * (1.0 - 0.4 * occ[win])
        elif reg.finding == "cardiomegaly":
            heart = f["heart"]
            mask = (heart > 0.5) & (ctx.v < f["dome_v"] + 0.015)
            box = _box_from_mask(mask, (slice(0, size), slice(0, size)), size)
        if box is None:   # nothing visible (should not happen): a minimal box at the centre
            box = np.array([0.49, 0.49, 0.51, 0.51], np.float32)
        boxes.append(box)

    T = (anat["soft"] + 0.2 * occ * anat["body"] + anat["bones"] + markings + anat["paren"] * lung
         - 0.58 * air - anat["air_ways"] - anat["bubble"] + extra)
    if ptx_air is not None:
        T -= ptx_air
    # exposure: attenuation -> film density, window, gamma, grain
    img = 1.0 - np.exp(-a.kvp * np.maximum(T, 0.0))
    lo = a.black
    hi = (1.0 - math.exp(-a.kvp * 1.45)) * a.white
    img = _ramp((img - lo) / (hi - lo))
    if a.gamma != 1.0:
        img = img ** a.gamma
    rng = anat["rng"]
    img = img + a.noise * _crop(size, "grain", rng) + 0.02 * _crop(size, "coarse", rng)
    out = np.clip(img * 255.0 + 0.5, 0, 255).astype(np.uint8)
    boxes = np.stack(boxes).astype(np.float32) if boxes else np.zeros((0, 4), np.float32)
    return out, np.clip(boxes, 0.0, 1.0)


# =============================================================================================
# Text: reports and region captions
# =============================================================================================
def _pick(rng, options):
    return options[int(rng.integers(len(options)))]


def _cap(text: str) -> str:
    return text[:1].upper() + text[1:] if text else text


def _article(phrase: str) -> str:
    return "an" if phrase[:1].lower() in "aeiou" else "a"


_SIDE_NOUN_ZONE = {  # zone -> noun phrases (with determiner) with {s} = side word, report style
    "upper": ("the {s} upper lobe", "the {s} upper zone", "the {s} upper lung",
              "the {s} upper lung zone", "the upper {s} lung"),
    "middle": ("the {s} mid lung", "the {s} midlung zone", "the {s} mid zone",
               "the {s} middle lung zone"),
    "lower": ("the {s} lower lobe", "the {s} lower zone", "the {s} lower lung",
              "the {s} lower lung zone"),
    "apical": ("the {s} apex", "the {s} lung apex", "the {s} apical region",
               "the apex of the {s} lung"),
    "basal": ("the {s} base", "the {s} lung base", "the {s} basilar region", "the {s} basal lung"),
    "perihilar": ("the {s} perihilar region", "the {s} hilar region", "the {s} perihilar lung",
                  "the {s} infrahilar region"),
    "retrocardiac": ("the left retrocardiac region", "the retrocardiac left lower lobe",
                     "the retrocardiac region"),
    "diffuse": ("the {s} lung", "the {s} hemithorax"),
}
_SIDE_ADJ_ZONE = {  # zone -> adjectival forms placed before the finding noun
    "upper": ("{s} upper lobe", "{s} upper zone", "{s} upper lung"),
    "middle": ("{s} mid lung", "{s} midlung"),
    "lower": ("{s} lower lobe", "{s} lower zone", "{s} lower lung"),
    "apical": ("{s} apical",),
    "basal": ("{s} basilar", "{s} basal", "{s} base"),
    "perihilar": ("{s} perihilar", "{s} hilar"),
    "retrocardiac": ("left retrocardiac", "retrocardiac"),
    "diffuse": ("diffuse {s}", "{s}"),
}
_BILATERAL_NOUN_ZONE = {
    "upper": ("both upper lobes", "the bilateral upper zones", "both upper lungs"),
    "middle": ("both mid lungs", "the bilateral mid zones"),
    "lower": ("both lower lobes", "the bilateral lower zones", "both lower lungs"),
    "apical": ("both apices", "the bilateral apices", "both lung apices"),
    "basal": ("both lung bases", "the bilateral bases", "the lung bases bilaterally"),
    "perihilar": ("both perihilar regions", "the bilateral perihilar regions"),
    "retrocardiac": ("the retrocardiac region",),
    "diffuse": ("both lungs", "the bilateral lungs"),
}
_BILATERAL_ADJ_ZONE = {
    "upper": ("bilateral upper lobe", "bilateral upper zone"),
    "middle": ("bilateral mid lung",),
    "lower": ("bilateral lower lobe", "bilateral lower zone"),
    "apical": ("bilateral apical", "biapical"),
    "basal": ("bibasilar", "bilateral basilar", "bilateral basal"),
    "perihilar": ("bilateral perihilar",),
    "retrocardiac": ("retrocardiac",),
    "diffuse": ("diffuse bilateral", "bilateral"),
}
# caption (plain) zone forms: noun (after 'in the {side} ...') and adjective
_CAP_ZONE_NOUN = {
    "upper": ("upper zone", "upper lobe", "upper lung"), "middle": ("mid zone", "mid lung"),
    "lower": ("lower zone", "lower lobe", "lower lung"), "apical": ("apex",),
    "basal": ("base", "lung base"), "perihilar": ("perihilar region", "hilar region"),
    "retrocardiac": ("retrocardiac region",), "diffuse": ("lung",),
}
_CAP_ZONE_ADJ = {
    "upper": ("upper zone", "upper lobe", "upper lung"), "middle": ("mid zone", "mid lung"),
    "lower": ("lower zone", "lower lobe", "lower lung"), "apical": ("apical",),
    "basal": ("basilar", "basal", "base"), "perihilar": ("perihilar", "hilar"),
    "retrocardiac": ("retrocardiac",), "diffuse": ("diffuse",),
}


def _zone_noun(rng, zone, side):
    if side == "bilateral":
        return _pick(rng, _BILATERAL_NOUN_ZONE[zone])
    opts = _SIDE_NOUN_ZONE[zone]
    if zone == "middle" and side == "right":
        opts = opts + ("the right middle lobe", "the right middle lobe")
    if zone == "middle" and side == "left":
        opts = opts + ("the lingula",)
    return _pick(rng, opts).format(s=side)


def _zone_adj(rng, zone, side):
    if side == "bilateral":
        return _pick(rng, _BILATERAL_ADJ_ZONE[zone])
    opts = _SIDE_ADJ_ZONE[zone]
    if zone == "middle" and side == "right":
        opts = opts + ("right middle lobe", "right middle lobe")
    if zone == "middle" and side == "left":
        opts = opts + ("lingular",)
    return _pick(rng, opts).format(s=side)


_HEDGES = ("likely", "probably", "possibly", "which may represent", "compatible with",
           "concerning for", "suggestive of", "consistent with", "most likely",
           "which could reflect")
_LOBE = {("right", "upper"): "right upper lobe", ("left", "upper"): "left upper lobe",
         ("right", "middle"): "right middle lobe", ("left", "middle"): "lingula",
         ("right", "lower"): "right lower lobe", ("left", "lower"): "left lower lobe",
         ("right", "basal"): "right lower lobe", ("left", "basal"): "left lower lobe",
         ("left", "retrocardiac"): "left lower lobe", ("right", "apical"): "right upper lobe",
         ("left", "apical"): "left upper lobe", ("right", "perihilar"): "right middle lobe",
         ("left", "perihilar"): "left upper lobe", ("right", "diffuse"): "right lower lobe",
         ("left", "diffuse"): "left lower lobe", ("right", "retrocardiac"): "right lower lobe"}


def _lesion_cm(finding: Finding) -> float:
    les = finding.lesions[0]
    d = 2.0 * (les.p("r") or 0.02)
    return round(d * (28.0 if finding.name == "nodule" else 35.0), 1)


_AREA_PHRASES = {
    "small": ("small focus of consolidation", "small area of airspace opacity"),
    "moderate": ("area of consolidation", "region of airspace opacity"),
    "large": ("large area of consolidation", "extensive area of airspace opacity"),
}
_OPACITY_WORDS = ("opacity", "opacification", "increased opacity")
_OPACITY_VERBS = ("may represent", "is concerning for", "likely reflects", "is consistent with")
_ATEL_OPACITIES = ("linear opacities", "streaky opacities", "hazy opacity", "opacity")
_ATEL_HEDGES = ("likely", "most likely", "compatible with", "consistent with", "suggestive of")
_NODULE_TAILS = ("is new", "is again seen", "warrants further evaluation with CT",
                 "is incompletely characterized")
_MASS_TAILS = ("concerning for malignancy", "suspicious for neoplasm", "likely neoplastic")
_BILATERAL_EFFUSION_TAILS = ("layering", "with blunting of both costophrenic angles",
                             "obscuring the hemidiaphragms")
_PNEUMONIA_TAILS = ("concerning for pneumonia", "likely pneumonia",
                    "compatible with pneumonia in the appropriate clinical setting",
                    "possibly infectious")
_CT_TAILS = ("recommend CT for further characterization", "CT chest recommended",
             "further evaluation with chest CT is suggested")


def _desc(rng, f: Finding, plural: bool = False):
    """(pre, noun, adjectival): size / quality words and the head noun phrase of a finding.

    ``adjectival`` is False for phrases such as 'small focus of consolidation' that cannot take
    a zone adjective between ``pre`` and ``noun``.
    """
    sz = f.size
    s = "s" if plural else ""
    ies = "ies" if plural else "y"
    if f.name == "nodule":
        cm = _lesion_cm(f)
        pre = _pick(rng, {"small": ("small", "tiny", "subcentimeter" if cm < 1.1 else "small"),
                          "moderate": ("", f"{cm} cm", "moderate-sized"),
                          "large": ("large", f"{cm} cm")}[sz])
        noun = _pick(rng, (f"nodule{s}", f"pulmonary nodule{s}", f"nodular opacit{ies}",
                           f"rounded nodule{s}"))
        if f.lesions[0].p("calcified"):
            noun = f"calcified nodule{s}"
        return pre, noun, True
    if f.name == "mass":
        cm = _lesion_cm(f)
        es = "es" if plural else ""
        pre = _pick(rng, {"small": ("", f"{cm} cm"), "moderate": (f"{cm} cm", "", "moderate-sized"),
                          "large": ("large", f"{cm} cm", "large lobulated")}[sz])
        noun = _pick(rng, (f"mass{es}", f"masslike opacit{ies}", f"lobulated mass{es}",
                           f"soft tissue mass{es}"))
        if pre.endswith("lobulated") and noun.startswith("lobulated"):
            noun = noun[len("lobulated "):]
        return pre, noun, True
    if f.name == "consolidation":
        if rng.random() < 0.25:
            phrase = _pick(rng, _AREA_PHRASES[sz])
            if plural:
                for one, many in (("focus", "foci"), ("area", "areas"), ("region", "regions")):
                    phrase = phrase.replace(one, many)
            return "", phrase, False
        pre = _pick(rng, {"small": ("patchy", "subtle", "minimal", "faint", "mild", "small"),
                          "moderate": ("", "patchy", "moderate", "focal"),
                          "large": ("dense", "extensive", "confluent", "large")}[sz])
        noun = _pick(rng, ("consolidation", f"airspace opacit{ies}", "airspace consolidation",
                           "airspace disease", f"opacit{ies}"))
        return pre, noun, True
    if f.name == "atelectasis":
        pre, noun = _pick(rng, {"small": (("plate-like", "atelectasis"), ("linear", "atelectasis"),
                                          ("subsegmental", "atelectasis"), ("minimal", "atelectasis"),
                                          ("discoid", "atelectasis"), ("mild", "atelectasis")),
                                "moderate": (("", "atelectasis"), ("segmental", "atelectasis"),
                                             ("moderate", "atelectasis"),
                                             ("", "atelectasis with mild volume loss")),
                                "large": (("lobar", "collapse"), ("lobar", "atelectasis"),
                                          ("extensive", "atelectasis"),
                                          ("", "atelectasis with marked volume loss"))}[sz])
        return pre, noun, True
    raise ValueError(f.name)


def _join(*words):
    return " ".join(w for w in words if w)


def _is_plural(noun):
    return noun.endswith(("ies", "nodules", "masses", "foci", "areas", "regions"))


def _uncountable(noun):
    return noun.endswith(("consolidation", "disease", "atelectasis", "collapse", "volume loss"))


def _lesion_sentence(rng, f: Finding, zone_side: str) -> str:
    """Positive sentence for nodule / mass / consolidation / atelectasis."""
    plural = zone_side == "bilateral" and f.name in ("nodule", "mass", "consolidation")
    pre, noun, adj_ok = _desc(rng, f, plural)
    d = _join(pre, noun)
    many = _is_plural(noun)
    be = "are" if many else "is"
    a = "" if many or _uncountable(noun) else _article(d) + " "
    loc = _zone_noun(rng, f.zone, zone_side)
    adj = _zone_adj(rng, f.zone, zone_side)
    prep = _pick(rng, ("in", "within", "at", "involving")) if f.zone != "basal" else \
        _pick(rng, ("at", "in", "at"))
    verb = _pick(rng, ("seen", "noted", "present", "demonstrated", "identified", "visualized"))
    demo = "demonstrate" if zone_side == "bilateral" else "demonstrates"
    lobe = _LOBE.get((zone_side, f.zone))
    templates = [
        f"There {be} {a}{d} {prep} {loc}.",
        f"{_cap(a + d)} {be} {verb} {prep} {loc}.",
        f"{_cap(loc)} {demo} {a}{d}.",
        f"{_cap(prep)} {loc}, there {be} {a}{d}.",
    ]
    if adj_ok:
        ad = _join(pre, adj, noun)
        templates += [f"{_cap(ad)}.", f"{_cap(ad)} {be} {verb}.",
                      f"There {be} {'' if many or _uncountable(noun) else _article(ad) + ' '}{ad}."]
    if f.name == "consolidation":
        dx = _pick(rng, ("pneumonia", "infection", "aspiration", "an infectious process"))
        bron = f.lesions[0].p("bronchograms")
        extra = " with air bronchograms" if bron and rng.random() < 0.7 else ""
        hedge = _pick(rng, _HEDGES)
        templates += [
            f"There {be} {a}{d} {prep} {loc}{extra}, {hedge} {dx}.",
            f"{_cap(_pick(rng, _OPACITY_WORDS))} {prep} {loc}{extra} {_pick(rng, _OPACITY_VERBS)} "
            f"{_pick(rng, ('pneumonia', 'consolidation', 'airspace disease'))}.",
        ]
        if adj_ok:
            templates += [f"{_cap(_join(pre, adj, noun))}{extra}, {hedge} {dx}."]
    if f.name == "atelectasis":
        templates += [
            f"{_cap(_pick(rng, _ATEL_OPACITIES))} {prep} {loc}, {_pick(rng, _ATEL_HEDGES)} "
            f"{_pick(rng, ('atelectasis', 'subsegmental atelectasis', 'atelectasis'))}.",
        ]
        if f.size == "large" and lobe and zone_side != "bilateral":
            templates += [f"There is collapse of the {lobe}.",
                          f"Opacification {prep} {loc} with volume loss, consistent with {lobe} collapse."]
    if f.name in ("nodule", "mass"):
        templates += [
            f"{_cap(a + d)} {prep} {loc} {_pick(rng, _NODULE_TAILS)}.",
        ]
        if f.name == "mass":
            templates += [f"{_cap(a + d)} {prep} {loc}, {_pick(rng, _MASS_TAILS)}."]
        if f.lesions[0].p("calcified"):
            templates += [f"{_cap(a + d)} {prep} {loc}, likely a granuloma."]
    return _pick(rng, templates)


def _sizeword(rng, size, kind="lesion"):
    if kind == "cardiac":
        return _pick(rng, {"small": ("mild",), "moderate": ("moderate",),
                           "large": ("severe", "marked")}[size])
    if kind == "severity":
        return _pick(rng, {"small": ("mild", "mild", "mild"), "moderate": ("moderate",),
                           "large": ("severe", "marked", "extensive")}[size])
    return _pick(rng, {"small": ("small", "small", "tiny",
                                 "trace" if kind in ("effusion", "ptx") else "small"),
                       "moderate": ("moderate", "moderate-sized", "moderate"),
                       "large": ("large", "large", "massive" if kind == "effusion" else "large")}[size])


def _effusion_sentence(rng, f: Finding) -> str:
    sides = {les.side: les.size for les in f.lesions}
    if len(sides) == 2:
        sr, sl = sides["right"], sides["left"]
        if sr == sl:
            w = _sizeword(rng, sr, "effusion")
            return _pick(rng, (f"{_cap(w)} bilateral pleural effusions.",
                               f"There are {w} bilateral pleural effusions.",
                               f"{_cap(w)} bilateral pleural effusions are present.",
                               f"{_cap(w)} pleural effusions are seen bilaterally.",
                               f"{_cap(w)} bilateral effusions, "
                               f"{_pick(rng, _BILATERAL_EFFUSION_TAILS)}."))
        wr, wl = _sizeword(rng, sr, "effusion"), _sizeword(rng, sl, "effusion")
        return _pick(rng, (f"{_cap(wr)} right and {wl} left pleural effusions.",
                           f"Bilateral pleural effusions, {wr} on the right and {wl} on the left.",
                           f"There are bilateral pleural effusions, {wr} on the right and {wl} on the left."))
    side, size = next(iter(sides.items()))
    w = _sizeword(rng, size, "effusion")
    opts = [f"{_cap(w)} {side} pleural effusion.",
            f"There is {_article(w)} {w} {side} pleural effusion.",
            f"There is {_article(w)} {w} {side}-sided pleural effusion.",
            f"{_cap(_article(w))} {w} {side} pleural effusion is present.",
            f"{_cap(w)} {side} effusion is seen.",
            f"{_cap(_article(w))} {w} amount of fluid is seen in the {side} pleural space.",
            f"{_cap(w)} amount of {side} pleural fluid."]
    if size == "small":
        opts += [f"Blunting of the {side} costophrenic angle is consistent with a small "
                 f"pleural effusion.",
                 f"Mild blunting of the {side} costophrenic angle suggests a small effusion."]
    if size == "large":
        opts += [f"Large {side} pleural effusion obscures the {side} hemidiaphragm.",
                 f"Large {side} pleural effusion with a meniscus extending to the {side} mid lung."]
    if size == "moderate":
        opts += [f"Moderate {side} pleural effusion layers at the {side} base with a meniscus."]
    return _pick(rng, opts)


def _pneumothorax_sentence(rng, f: Finding) -> str:
    les = f.lesions[0]
    side, w = les.side, _sizeword(rng, les.size, "ptx")
    zone = "apical" if f.zone == "apical" else _pick(rng, ("apicolateral", "upper lateral"))
    loc = _zone_noun(rng, f.zone, side)
    opts = [f"There is {_article(w)} {w} {side} {zone} pneumothorax.",
            f"{_cap(w)} {side} pneumothorax.",
            f"{_cap(w)} {side} {zone} pneumothorax.",
            f"{_cap(_article(w))} {w} {side} pneumothorax is present, with the visceral "
            f"pleural line seen in {loc}.",
            f"{_cap(side)} {zone} pneumothorax, {w} in size.",
            f"A visceral pleural line in {loc} indicates {_article(w)} {w} pneumothorax."]
    if les.size == "small":
        opts += [f"A thin pleural line is visible at the {side} apex, consistent with a small "
                 f"pneumothorax."]
    if les.size == "large":
        opts += [f"Large {side} pneumothorax with partial collapse of the {side} lung."]
    return _pick(rng, opts)


def _cardiomegaly_sentence(rng, f: Finding) -> str:
    adv = {"small": "mildly", "moderate": "moderately", "large": _pick(rng, ("markedly", "severely"))}[f.size]
    sev = _sizeword(rng, f.size, "cardiac")
    opts = [f"{_cap(sev)} cardiomegaly.", f"The heart is {adv} enlarged.",
            f"Heart size is {adv} enlarged.", f"{_cap(sev)} enlargement of the cardiac silhouette.",
            f"The cardiac silhouette is {adv} enlarged.", f"There is {sev} cardiomegaly."]
    if rng.random() < 0.25:
        ctr = f.lesions[0].p("ctr")
        opts = [o[:-1] + f", with a cardiothoracic ratio of approximately {ctr:.2f}." for o in opts]
    return _pick(rng, opts)


def _edema_sentence(rng, f: Finding) -> str:
    sev = _sizeword(rng, f.size, "severity")
    dist = {"perihilar": ("in a perihilar distribution", "with bilateral perihilar haziness",
                          "in a bat-wing distribution", "centered at the hila"),
            "basal": ("predominantly at the lung bases", "most pronounced at both bases"),
            "diffuse": ("diffusely in both lungs", "throughout both lungs")}[f.zone or "perihilar"]
    kind = _pick(rng, ("pulmonary edema", "interstitial edema", "pulmonary edema",
                       "interstitial pulmonary edema") if f.size != "large" else
                 ("pulmonary edema", "alveolar pulmonary edema", "pulmonary edema"))
    d = _pick(rng, dist)
    opts = [f"{_cap(sev)} {kind} {d}.", f"There is {sev} {kind} {d}.",
            f"{_cap(sev)} bilateral {kind}.",
            f"Bilateral perihilar haziness and indistinct vascular markings, consistent with "
            f"{sev} {kind}.",
            f"Findings are consistent with {sev} {kind} {d}.",
            f"{_cap(sev)} pulmonary vascular congestion with {kind} {d}."]
    if f.zone != "perihilar":
        opts = [o for o in opts if "perihilar" not in o] or opts
    out = _pick(rng, opts)
    if f.lesions[0].p("kerley") and rng.random() < 0.6:
        out += " " + _pick(rng, ("Kerley B lines are present at the lung bases.",
                                 "Septal lines are seen at both bases, compatible with "
                                 "interstitial edema."))
    return out


def _positive_sentence(rng, f: Finding) -> str:
    if f.name == "pleural_effusion":
        return _effusion_sentence(rng, f)
    if f.name == "pneumothorax":
        return _pneumothorax_sentence(rng, f)
    if f.name == "cardiomegaly":
        return _cardiomegaly_sentence(rng, f)
    if f.name == "edema":
        return _edema_sentence(rng, f)
    if f.side == "bilateral" and len(f.lesions) == 2 and f.lesions[0].size != f.lesions[1].size \
            and rng.random() < 0.5:
        # 'Bilateral basilar atelectasis, greater on the right.'
        big = max(f.lesions, key=lambda l: schema.SIZES.index(l.size)).side
        base = _lesion_sentence(rng, f, "bilateral")
        return base[:-1] + f", {_pick(rng, ('greater', 'more pronounced', 'worse'))} on the {big}."
    return _lesion_sentence(rng, f, f.side)


def _impression_item(rng, f: Finding) -> str:
    if f.name in ("nodule", "mass", "consolidation", "atelectasis"):
        pre, noun, adj_ok = _desc(rng, f, f.side == "bilateral" and f.name != "atelectasis")
        if adj_ok:
            item = _cap(_join(pre, _zone_adj(rng, f.zone, f.side), noun))
        else:
            item = _cap(f"{_join(pre, noun)} in {_zone_noun(rng, f.zone, f.side)}")
        if f.name == "consolidation" and rng.random() < 0.5:
            item += f", {_pick(rng, _PNEUMONIA_TAILS)}"
        if f.name in ("nodule", "mass") and rng.random() < 0.5:
            item += f"; {_pick(rng, _CT_TAILS)}"
        return item + "."
    if f.name == "pleural_effusion":
        return _effusion_sentence(rng, f)
    if f.name == "pneumothorax":
        les = f.lesions[0]
        return f"{_cap(_sizeword(rng, les.size, 'ptx'))} {les.side} pneumothorax."
    if f.name == "cardiomegaly":
        return _pick(rng, (f"{_cap(_sizeword(rng, f.size, 'cardiac'))} cardiomegaly.",
                           "Cardiomegaly.", "Enlarged cardiac silhouette."))
    if f.name == "edema":
        return _pick(rng, (f"{_cap(_sizeword(rng, f.size, 'severity'))} pulmonary edema.",
                           "Pulmonary edema.", f"Findings of {_sizeword(rng, f.size, 'severity')} pulmonary edema."))
    raise ValueError(f.name)


_NEG = {
    "pneumothorax": ("No pneumothorax.", "There is no pneumothorax.", "No evidence of pneumothorax.",
                     "No pneumothorax is seen.", "Pneumothorax is not seen."),
    "pleural_effusion": ("No pleural effusion.", "There is no pleural effusion.", "No effusion.",
                         "No pleural effusions.", "The costophrenic angles are sharp.",
                         "No evidence of pleural effusion."),
    "consolidation": ("No focal consolidation.", "There is no focal consolidation.",
                      "No focal airspace opacity.", "No consolidation to suggest pneumonia.",
                      "No airspace disease."),
    "edema": ("No pulmonary edema.", "There is no pulmonary edema.",
              "No evidence of pulmonary edema.", "Pulmonary vascularity is normal.",
              "No pulmonary vascular congestion."),
    "cardiomegaly": ("Heart size is normal.", "The heart is normal in size.", "Normal heart size.",
                     "The cardiac silhouette is within normal limits.",
                     "Cardiomediastinal silhouette is normal.", "Heart size is within normal limits.",
                     "The cardiomediastinal and hilar contours are normal."),
    "nodule": ("No suspicious pulmonary nodules.", "No pulmonary nodules.", "No focal nodule."),
    "mass": ("No pulmonary mass.", "No suspicious mass.", "No mass is identified."),
    "atelectasis": ("No atelectasis.", "There is no atelectasis."),
}
_NEG_NAME = {"pneumothorax": ("pneumothorax",), "pleural_effusion": ("pleural effusion", "effusion"),
             "consolidation": ("focal consolidation", "consolidation"),
             "edema": ("pulmonary edema", "edema")}
_NORMAL_IMPRESSION = ("No acute cardiopulmonary process.", "No acute cardiopulmonary abnormality.",
                      "Normal chest radiograph.", "No acute intrathoracic process.",
                      "No radiographic evidence of acute cardiopulmonary disease.")
_INDICATIONS = ("Cough.", "Shortness of breath.", "Fever.", "Chest pain.", "Dyspnea.",
                "Preoperative evaluation.", "Follow-up.", "Weakness.", "Hypoxia.",
                "___ year old with cough and fever.", "History: ___ with dyspnea.")
_LUNG_FINDINGS = ("nodule", "mass", "consolidation", "atelectasis", "edema", "pneumothorax")


def _negatives(rng, present: set, case: Case) -> list:
    """Negated / normal statements about absent findings (never about a present one)."""
    absent = [n for n in RENDERED_FINDINGS if n not in present]
    out = []
    # combined 'No focal consolidation, pleural effusion, or pneumothorax.'
    combinable = [n for n in ("consolidation", "pleural_effusion", "pneumothorax", "edema")
                  if n in absent]
    used = set()
    if len(combinable) >= 2 and rng.random() < 0.6:
        k = int(rng.integers(2, len(combinable) + 1))
        idx = sorted(rng.choice(len(combinable), size=k, replace=False))
        names = [combinable[j] for j in idx]
        words = [_pick(rng, _NEG_NAME[n]) for n in names]
        if len(words) == 2:
            lst = f"{words[0]} or {words[1]}"
        else:
            lst = ", ".join(words[:-1]) + f"{_pick(rng, (',', ''))} or {words[-1]}"
        out.append(_pick(rng, (f"No {lst}.", f"There is no {lst}.", f"No {lst} is seen.",
                               f"No evidence of {lst}.")))
        used.update(names)
    hilar_ok = not any(f.zone == "perihilar" for f in case.findings)
    for n in absent:
        if n in used:
            continue
        p = {"pneumothorax": 0.7, "pleural_effusion": 0.7, "consolidation": 0.6, "edema": 0.35,
             "cardiomegaly": 0.75, "nodule": 0.15, "mass": 0.1, "atelectasis": 0.05}[n]
        if rng.random() < p:
            opts = [o for o in _NEG[n] if hilar_ok or "hilar" not in o]
            out.append(_pick(rng, opts))
    negated = " ".join(out).lower()
    if "nodule" in absent and "mass" in absent and "nodul" not in negated \
            and "mass" not in negated and rng.random() < 0.15:
        out.append(_pick(rng, ("No pulmonary nodules or masses.", "No suspicious nodules or masses.")))
    # side-specific negation of a one-sided pleural finding ('No left effusion.')
    for f in case.findings:
        if f.name in ("pleural_effusion", "pneumothorax") and f.side in ("right", "left") \
                and rng.random() < 0.25:
            other = "left" if f.side == "right" else "right"
            noun = "effusion" if f.name == "pleural_effusion" else "pneumothorax"
            out.append(f"No {other} {noun}.")
    return out


def generate_text(case: Case, rng: np.random.Generator):
    """(report, captions) for a case; captions align with ``case_regions(case)``."""
    present = {f.name for f in case.findings}
    lung_findings = present & set(_LUNG_FINDINGS)
    positives = [(_positive_sentence(rng, f), f.name) for f in case.findings]
    negatives = _negatives(rng, present, case)

    fillers = []
    if not lung_findings:
        if "pleural_effusion" not in present:
            fillers.append(_pick(rng, ("The lungs are clear.", "Lungs are clear bilaterally.",
                                       "The lungs are well expanded and clear.",
                                       "Clear lungs.", "The lungs are clear without focal abnormality.")))
        elif rng.random() < 0.6:
            fillers.append(_pick(rng, ("The lungs are otherwise clear.", "Lungs are otherwise clear.")))
    elif "edema" not in present and rng.random() < 0.35:
        fillers.append(_pick(rng, ("The lungs are otherwise clear.", "Elsewhere, the lungs are clear.")))
    if rng.random() < 0.5 and not any(f.zone == "perihilar" for f in case.findings):
        fillers.append(_pick(rng, ("The mediastinal and hilar contours are unremarkable.",
                                   "Mediastinal contours are normal.",
                                   "The hilar contours are within normal limits.")))
    if rng.random() < 0.4:
        fillers.append(_pick(rng, ("No acute osseous abnormality.", "Osseous structures are intact.",
                                   "The visualized osseous structures are unremarkable.",
                                   "No free air below the diaphragm.",
                                   "The visualized upper abdomen is unremarkable.")))

    # order: lungs, pleura, heart, other; shuffled within each group, sometimes across
    def group(sentence_or_name):
        n = sentence_or_name
        if n in ("pleural_effusion", "pneumothorax"):
            return 1
        if n == "cardiomegaly":
            return 2
        return 0

    items = [(group(n), s) for s, n in positives]
    for s in negatives:
        low = s.lower()
        g = 1 if ("effusion" in low or "pneumothorax" in low or "costophrenic" in low) else \
            2 if ("heart" in low or "cardiac" in low or "cardiomediastinal" in low) else 0
        items.append((g, s))
    items += [(3 if ("osseous" in s.lower() or "abdomen" in s.lower() or "free air" in s.lower())
               else 0 if "lung" in s.lower() else 2, s) for s in fillers]
    keys = rng.random(len(items))
    if rng.random() < 0.8:
        keys = keys + np.array([g for g, _ in items], dtype=np.float64) * 2.0
    sentences = [items[j][1] for j in np.argsort(keys, kind="stable")]
    findings_text = " ".join(sentences)

    if case.findings:
        imp = [_impression_item(rng, f) for f in case.findings]
        order = rng.permutation(len(imp)) if rng.random() < 0.3 else np.arange(len(imp))
        imp = [imp[j] for j in order]
        if len(imp) > 1 and rng.random() < 0.5:
            impression = " ".join(f"{k + 1}. {s}" for k, s in enumerate(imp))
        else:
            impression = " ".join(imp)
        if "pneumothorax" not in present and rng.random() < 0.2:
            impression += " No pneumothorax."
    else:
        impression = _pick(rng, _NORMAL_IMPRESSION)

    parts = []
    if rng.random() < 0.3:
        parts.append("EXAMINATION: " + _pick(rng, ("Chest radiograph, PA view.", "CHEST (PA)",
                                                     "Chest PA.", "Single frontal view of the chest.")))
        parts.append("INDICATION: " + _pick(rng, _INDICATIONS))
        parts.append("COMPARISON: " + _pick(rng, ("None.", "None available.", "___.")))
    if rng.random() < 0.15:
        findings_text = _pick(rng, ("PA view of the chest provided. ", "Frontal view of the chest. ",
                                    "Single PA radiograph of the chest. ")) + findings_text
    parts.append("FINDINGS: " + findings_text)
    parts.append("IMPRESSION: " + impression)
    report = _pick(rng, ("\n", "\n\n", " ")).join(parts)
    captions = tuple(_region_caption(rng, r) for r in case_regions(case))
    return report, captions


def _region_caption(rng, r: Region) -> str:
    """Plain caption: explicit side word, plain zone word, canonical finding word, size word."""
    side, zone, size, name = r.side, r.zone, r.size, r.finding
    use_size = rng.random() < 0.75
    if name == "cardiomegaly":
        sev = _sizeword(rng, size, "cardiac")
        return _pick(rng, (f"{sev} cardiomegaly", f"{sev} enlargement of the cardiac silhouette",
                           "cardiomegaly", f"{sev} cardiomegaly", "enlarged cardiac silhouette"))
    if name == "edema":
        sev = _sizeword(rng, size, "severity")
        zw = {"perihilar": "perihilar", "basal": "basilar", "diffuse": "diffuse"}.get(zone, "perihilar")
        return _pick(rng, (f"{sev} bilateral {zw} edema", f"bilateral {zw} pulmonary edema",
                           f"{sev} pulmonary edema, bilateral {zw}",
                           f"{sev} bilateral {zw} pulmonary edema"))
    noun = {"nodule": ("nodule", "pulmonary nodule", "nodule"),
            "mass": ("mass", "mass", "lung mass"),
            "consolidation": ("consolidation", "airspace opacity", "airspace disease", "consolidation",
                              "opacity"),
            "atelectasis": ("atelectasis",),
            "pleural_effusion": ("pleural effusion", "effusion", "pleural effusion"),
            "pneumothorax": ("pneumothorax",)}[name]
    noun = _pick(rng, noun)
    if name == "atelectasis" and size == "small" and rng.random() < 0.5:
        noun = _pick(rng, ("plate-like atelectasis", "linear atelectasis", "subsegmental atelectasis"))
    if name == "atelectasis" and size == "large" and rng.random() < 0.4:
        noun = "lobar collapse" if rng.random() < 0.5 else "lobar atelectasis"
    kind = "severity" if name in ("consolidation", "atelectasis") and rng.random() < 0.5 else \
        ("effusion" if name == "pleural_effusion" else "lesion")
    sw = _sizeword(rng, size, kind)
    if kind == "lesion" and size == "moderate" and name in ("nodule", "mass"):
        sw = _pick(rng, ("moderate", "moderate-sized", "medium"))
    sw = (sw + " ") if use_size else ""
    if name == "pleural_effusion":
        return _pick(rng, (f"{sw}{side} {noun}", f"{sw}{side} {noun} at the {side} base",
                           f"{sw}{side} {noun}", f"{sw}{side} basal {noun}",
                           f"{sw}{noun} in the {side} pleural space"))
    if name == "pneumothorax":
        zw = "apical" if zone == "apical" else "upper zone"
        return _pick(rng, (f"{sw}{side} {zw} {noun}", f"{sw}{side} {noun}",
                           f"{sw}{noun} at the {side} apex" if zone == "apical" else
                           f"{sw}{noun} in the {side} upper zone"))
    zn = _pick(rng, _CAP_ZONE_NOUN[zone])
    za = _pick(rng, _CAP_ZONE_ADJ[zone])
    if zone == "retrocardiac":
        return _pick(rng, (f"{sw}{side} retrocardiac {noun}",
                           f"{sw}{noun} in the {side} retrocardiac region",
                           f"{sw}retrocardiac {noun} in the {side} lower lobe"))
    return _pick(rng, (f"{sw}{side} {za} {noun}", f"{sw}{noun} in the {side} {zn}",
                       f"{sw}{side} {za} {noun}", f"{sw}{noun} at the {side} {zn}"
                       if zone in ("basal", "apical") else f"{sw}{noun} in the {side} {zn}"))


# =============================================================================================
# Source
# =============================================================================================
def _split_name(split: str) -> str:
    key = str(split).lower()
    if key not in _SPLIT_ALIASES:
        raise ValueError(f"synthetic: unknown split {split!r}; expected one of "
                         f"{sorted(set(_SPLIT_ALIASES))}")
    return _SPLIT_ALIASES[key]


def example_rngs(seed: int, split: str, index: int):
    """(case rng, text rng) for one example: a function of (seed, split, index) only.

    The split is part of the SeedSequence spawn key, so splits never share a random stream.
    """
    split = _split_name(split)
    root = np.random.SeedSequence(entropy=int(seed), spawn_key=(_SPLIT_KEY[split], int(index)))
    case_seq, text_seq = root.spawn(2)
    return np.random.default_rng(case_seq), np.random.default_rng(text_seq)


def make_example(case: Case, text_rng: np.random.Generator, image_size: int = 256,
                 example_id: str = "", source: str = "synthetic") -> schema.Example:
    """Render a case and write its text: a complete, validated ``Example``."""
    image, boxes = render_case(case, image_size)
    report, captions = generate_text(case, text_rng)
    regions = case_regions(case)
    labels = np.zeros(len(LABEL_NAMES), np.float32)
    for f in case.findings:
        labels[LABEL_NAMES.index(f.name)] = 1.0
    if not case.findings:
        labels[LABEL_NAMES.index("no_finding")] = 1.0
    ids = lambda fn, vals: np.array([fn(x) if x is not None else -1 for x in vals], np.int32)  # noqa: E731
    return schema.Example(
        example_id=example_id, image=image, report=report, labels=labels,
        label_mask=np.ones(len(LABEL_NAMES), bool), boxes=boxes.reshape(-1, 4),
        captions=captions,
        finding_ids=ids(schema.finding_id, [r.finding for r in regions]),
        side_ids=ids(schema.side_id, [r.side for r in regions]),
        zone_ids=ids(schema.zone_id, [r.zone for r in regions]),
        size_ids=ids(schema.size_id, [r.size for r in regions]),
        source=source, view="PA")


class SyntheticSource(Source):
    """Procedural chest radiographs with reports and region captions; needs no files.

    Args:
      root: ignored (accepted so that ``get_source('synthetic', root, ...)`` works).
      split: 'train', 'validation' ('val', 'valid') or 'test'.
      size: number of examples (default ``SPLIT_SIZES[split]``).
      seed: dataset seed; example ``i`` depends on (seed, split, i) only.
      image_size: H = W of the rendered images.
      normal_fraction: share of normal studies.
    """

    name = "synthetic"
    label_names = LABEL_NAMES

    def __init__(self, root=None, split: str = "train", size: int | None = None, seed: int = 0,
                 image_size: int = 256, normal_fraction: float = NORMAL_FRACTION):
        del root
        self.split = _split_name(split)
        self.size = SPLIT_SIZES[self.split] if size is None else int(size)
        if self.size < 0:
            raise ValueError(f"synthetic: size must be >= 0, got {size}")
        if int(seed) < 0:
            raise ValueError(f"synthetic: seed must be >= 0, got {seed}")
        self.seed = int(seed)
        self.image_size = int(image_size)
        self.normal_fraction = float(normal_fraction)

    def __len__(self) -> int:
        return self.size

    def case(self, index: int) -> Case:
        """The sampled case behind example ``index`` (findings with their attributes)."""
        return sample_case(self._rngs(index)[0], self.normal_fraction)

    def _rngs(self, index: int):
        index = int(index)
        if index < 0:
            index += self.size
        if not 0 <= index < self.size:
            raise IndexError(f"synthetic {self.split}: index {index} out of range [0, {self.size})")
        return example_rngs(self.seed, self.split, index)

    def texts(self, index: int) -> tuple[str, tuple]:
        """(report, captions) of example ``index`` without rendering its image (fast corpus)."""
        case_rng, text_rng = self._rngs(index)
        return generate_text(sample_case(case_rng, self.normal_fraction), text_rng)

    def __getitem__(self, index: int) -> schema.Example:
        index = int(index)
        if index < 0:
            index += self.size
        case_rng, text_rng = self._rngs(index)
        case = sample_case(case_rng, self.normal_fraction)
        return make_example(case, text_rng, self.image_size,
                            example_id=f"{self.split}-{self.seed}-{index:06d}", source=self.name)

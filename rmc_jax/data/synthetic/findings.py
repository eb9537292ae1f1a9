"""What a synthetic study shows: its findings, drawn from real frequencies, places and sizes.

A ``Case`` is a patient (``anatomy.Anatomy``) and the findings a report would state, each a
``Finding`` (canonical name, patient side, zone, size or severity) drawn as one or two
``Lesion`` parts; every lesion is one region with its own box and caption (``case_regions``).
"Small bilateral pleural effusions" is one finding with a right and a left lesion; pulmonary
edema is one bilateral region over both perihilar regions; cardiomegaly one region without side
or zone.

``sample_case`` draws a case: which findings (``finding_mix``: the IU X-ray frequencies and their
zone/side mix), how large (log-normal sizes through the NIH / RSNA box percentiles) and where
(``anatomy.zone_point``). The reference figures are in ``reference_figures.json``.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import statistics
from typing import Sequence

import numpy as np

from rmc_jax.data import schema
from rmc_jax.data.synthetic.anatomy import Anatomy, sample_anatomy, side_index, zone_point
from rmc_jax.data.synthetic.tables import load_table
from rmc_jax.data.synthetic.vocabulary import RENDERED_FINDINGS

# =============================================================================================
# Case model
# =============================================================================================
@dataclasses.dataclass(frozen=True)
class Lesion:
    """One rendered part of a finding: one region, one box."""

    side: str | None          # 'right' | 'left' | 'bilateral' (edema) | None (cardiomegaly)
    size: str                 # schema.SIZES
    params: tuple = ()        # ((name, value), ...) geometry in the canonical frame

    def param(self, name, default=None):
        """The geometry value ``name`` (``default`` when this kind of lesion has none)."""
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
    """One study: the patient and the findings its report states (none: a normal study)."""

    anatomy: Anatomy
    findings: tuple = ()

    @property
    def normal(self) -> bool:
        """True for a study without findings."""
        return not self.findings


@dataclasses.dataclass(frozen=True)
class Region:
    """One lesion as a region: its finding's name and zone, its own side and size."""

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
_REFERENCE = load_table("reference_figures")
# (MeSH finding, zone, side, count) rows of the findings we render, as in the file.
IU_ROWS = _REFERENCE["iu_rows"]
IU_MESH_TO_FINDING = _REFERENCE["iu_mesh_to_finding"]
IU_ZONES = _REFERENCE["iu_zones"]            # IU zone tag -> schema zone
CARDIOMEGALY_ASSUMED_COUNT = 340
# Frequencies are tempered (count ** 0.5) so that rare findings (mass, pneumothorax, edema: 16-21
# reports) still appear in a few % of images while the ranking of the real mix is kept.
FREQUENCY_TEMPERATURE = 0.5
NORMAL_FRACTION = 0.30
# Number of distinct findings in an abnormal image (IU / MIMIC abnormal studies mostly list 1-2).
FINDINGS_PER_IMAGE_P = (0.58, 0.29, 0.10, 0.03)


def _zone_of_iu_tag(zone: str) -> str | None:
    """The zone of an IU zone tag ('lower lobe/posterior' -> 'lower'); None when it has none."""
    for part in zone.split("/"):
        if part in IU_ZONES:
            return IU_ZONES[part]
    return None


@functools.lru_cache(maxsize=None)
def finding_mix() -> dict:
    """Derived sampling tables: {'counts', 'weights', 'combos'} from the embedded IU rows.

    ``combos[finding]`` is a tuple of ((zone, side, forced_size_or_None), probability).
    """
    counts = {f: 0 for f in RENDERED_FINDINGS}
    raw: dict = {f: {} for f in RENDERED_FINDINGS}
    for mesh, zone, side, n in IU_ROWS:
        f = IU_MESH_TO_FINDING[mesh]
        counts[f] += n
        forced = "small" if mesh == "Costophrenic Angle" else None
        z = "basal" if f == "pleural_effusion" else _zone_of_iu_tag(zone)
        if zone in ("lingula", "retrocardiac") or zone.startswith("lingula"):
            side = "left" if side in ("-", "left") else side
        s = None if side == "-" else side
        key = (z, s, forced)
        raw[f][key] = raw[f].get(key, 0) + n
    counts["cardiomegaly"] = CARDIOMEGALY_ASSUMED_COUNT
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
BOX_STATS = _REFERENCE["box_stats"]  # class: {"w": (p10, p50, p90), "h": ..., "cx", "cy"}
# Quantile bands of the size distribution per size class, and the class probabilities (= band
# widths, so the mixture is the reference distribution truncated to [0.03, 0.97]).
SIZE_BANDS = {"small": (0.03, 0.35), "moderate": (0.35, 0.75), "large": (0.75, 0.97)}
_STANDARD_NORMAL = statistics.NormalDist()


def _lognormal_quantile(p10_50_90, q):
    """Quantile ``q`` of the log-normal through the p50 and p90 of ``(p10, p50, p90)``."""
    _, p50, p90 = p10_50_90
    sigma = math.log(p90 / p50) / 1.2816
    return p50 * math.exp(sigma * _STANDARD_NORMAL.inv_cdf(q))


def _sample_size_class(rng, forced=None):
    """A size class with the probabilities of SIZE_BANDS (``forced`` when given)."""
    if forced is not None:
        return forced
    probs = np.array([b - a for a, b in SIZE_BANDS.values()])
    return schema.SIZES[int(rng.choice(3, p=probs / probs.sum()))]


def _size_quantile(rng, size):
    """A uniform quantile inside the band of ``size``: where in the size distribution to draw."""
    lo, hi = SIZE_BANDS[size]
    return float(rng.uniform(lo, hi))


# =============================================================================================
# Sampling
# =============================================================================================
def _lesion_params(**kw):
    """``Lesion.params``: the keywords as sorted (name, value) pairs, numbers as floats."""
    return tuple(sorted((k, float(v) if isinstance(v, (int, float, np.floating)) else v)
                        for k, v in kw.items()))


def _sample_lesion(rng, anat: Anatomy, name: str, side: str, zone: str, size: str) -> Lesion:
    """The geometry of one lesion of finding ``name``, sized from its reference box statistics
    (``BOX_STATS``) and placed in ``zone`` of the lung on ``side``."""
    seed = int(rng.integers(0, 2**31 - 1))
    q = _size_quantile(rng, size)
    st = BOX_STATS.get(name)
    if name in ("nodule", "mass"):
        d = _lognormal_quantile(st["w"], q) * rng.uniform(0.9, 1.1)
        if name == "mass":
            d = max(d, 0.085)
        else:
            d = min(d, 0.1)
        r = d / 2
        u, v = zone_point(rng, anat, side, zone, margin=r)
        return Lesion(side, size, _lesion_params(
            u=u, v=v, r=r, ecc=rng.uniform(0.85, 1.15), angle=rng.uniform(0, math.pi), seed=seed,
            amp=rng.uniform(0.32, 0.5) if name == "nodule" else rng.uniform(0.38, 0.55),
            calcified=float(name == "nodule" and rng.random() < 0.15)))
    if name == "consolidation":
        w = _lognormal_quantile(st["w"], q) * rng.uniform(0.85, 1.15)
        h = _lognormal_quantile(st["h"], min(max(q + rng.normal(0, 0.1), 0.02), 0.98))
        h = min(max(h, 0.7 * w), 1.9 * w)
        u, v = zone_point(rng, anat, side, zone, margin=0.3 * w)
        return Lesion(side, size, _lesion_params(
            u=u, v=v, rx=w / 2, ry=h / 2, seed=seed, amp=rng.uniform(0.3, 0.5),
            bronchograms=float(size != "small" and rng.random() < 0.6)))
    if name == "atelectasis":
        w = _lognormal_quantile(st["w"], q) * rng.uniform(0.9, 1.1)
        h = _lognormal_quantile(st["h"], q)
        kind = {"small": "plate", "moderate": "segmental", "large": "lobar"}[size]
        if kind == "plate":
            w = min(w, 0.2)
        u, v = zone_point(rng, anat, side, zone, margin=0.25 * w)
        return Lesion(side, size, _lesion_params(
            u=u, v=v, w=w, h=h, kind=kind, seed=seed, angle=rng.uniform(-0.25, 0.25),
            lines=float(rng.integers(1, 3)), amp=rng.uniform(0.3, 0.45)))
    if name == "pleural_effusion":
        i = side_index(side)
        # fluid height above the costophrenic angle ~ box height: NIH 'Effusion' h quantiles
        height = min(max(_lognormal_quantile(st["h"], q), 0.07), 0.5)
        return Lesion(side, size, _lesion_params(
            height=height, meniscus=rng.uniform(0.025, 0.05), layer=rng.uniform(0.025, 0.04),
            amp=rng.uniform(0.85, 0.95), seed=seed, level=anat.dome[i] + anat.sulcus - height))
    if name == "pneumothorax":
        i = side_index(side)
        span = anat.dome[i] - anat.apex[i]
        depth = {"small": rng.uniform(0.018, 0.03), "moderate": rng.uniform(0.035, 0.06),
                 "large": rng.uniform(0.07, 0.12)}[size]
        if size == "large":
            extent = rng.uniform(0.75, 1.0)
        elif zone == "apical":
            extent = rng.uniform(0.12, 0.3) if size == "small" else rng.uniform(0.25, 0.45)
        else:
            extent = rng.uniform(0.3, 0.5) if size == "small" else rng.uniform(0.45, 0.7)
        return Lesion(side, size, _lesion_params(depth=depth, v_end=anat.apex[i] + extent * span,
                                                 seed=seed))
    if name == "cardiomegaly":
        ctr = {"small": rng.uniform(0.52, 0.56), "moderate": rng.uniform(0.56, 0.62),
               "large": rng.uniform(0.62, 0.7)}[size]
        return Lesion(None, size, _lesion_params(ctr=ctr))
    if name == "edema":
        amp = {"small": rng.uniform(0.12, 0.16), "moderate": rng.uniform(0.17, 0.23),
               "large": rng.uniform(0.24, 0.32)}[size]
        return Lesion("bilateral", size, _lesion_params(
            amp=amp, seed=seed, kerley=float(size != "small" and rng.random() < 0.6),
            spread=rng.uniform(0.9, 1.15)))
    raise ValueError(f"cannot render finding {name!r}")


def _sample_finding(rng, anat: Anatomy, name: str) -> Finding:
    """One finding of ``name``: its zone, side and size from ``finding_mix``, then its lesions
    (two, one per side, for a bilateral finding; sizes may differ between the sides)."""
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
        k = 1 + int(rng.choice(len(FINDINGS_PER_IMAGE_P), p=FINDINGS_PER_IMAGE_P))
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
        if (name == "pleural_effusion" and "edema" in chosen and findings is None
                and len(f.lesions) == 1):
            sz = f.size
            f = Finding(name, "bilateral", "basal", sz,
                        tuple(_sample_lesion(rng, anat, name, s, "basal", sz)
                              for s in ("right", "left")))
        out.append(f)
    return Case(anat, tuple(out))


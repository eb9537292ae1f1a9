"""The patient: anatomy, projection and exposure, and where each lung zone lies.

``Anatomy`` holds every length in the *canonical frame*: u runs right across the image and v
down, both in [0, 1]; the midline is u = 0.5 and the patient's right lies at u < 0.5 (a PA
film). The projection (rotation, scale, shift) maps that frame onto the image when rendering.
Per-side pairs are indexed by ``side_index``: 0 for the patient's right lung, 1 for the left.

The helpers below place things in the frame: the lateral lung wall at a given level, the heart
silhouette, and ``zone_point``, a random point of a lung zone where a lesion can sit.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

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
ZONE_BANDS = {"apical": (0.04, 0.16), "upper": (0.2, 0.45), "middle": (0.45, 0.68),
              "lower": (0.68, 0.9), "basal": (0.86, 1.0), "diffuse": (0.3, 0.85)}
HILUM_LEVEL = (0.44, 0.40)            # right, left: the left hilum sits higher


def side_index(side: str | None) -> int:
    """Index of a patient side in the per-side pairs of ``Anatomy``: 0 right, 1 left."""
    return 0 if side == "right" else 1


def lateral_wall(anat: Anatomy, i: int, v: float) -> float:
    """Distance from the midline of the lateral wall of lung ``i`` at level ``v``: the lung
    widens from ``apex_width`` below its apex towards ``lateral`` at the base."""
    t = max(v - anat.apex[i], 0.0)
    return anat.lateral[i] - (anat.lateral[i] - anat.apex_width[i]) * math.exp(-t / anat.widening)


def heart_geometry(anat: Anatomy, ctr: float | None = None):
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


def heart_extent(anat: Anatomy, v: float, geom=None):
    """(s_right, s_left): how far the heart reaches from the midline on each side at level v."""
    cx, cy, ax, ay, tilt = geom or heart_geometry(anat)
    us = np.linspace(0.2, 0.8, 241)
    c, s = math.cos(tilt), math.sin(tilt)
    dx, dy = us - cx, v - cy
    xr, yr = c * dx + s * dy, -s * dx + c * dy
    inside = (xr / ax) ** 2 + (yr / ay) ** 2 <= 1.0
    if not inside.any():
        return 0.0, 0.0
    return max(0.5 - us[inside].min(), 0.0), max(us[inside].max() - 0.5, 0.0)


def zone_point(rng, anat: Anatomy, side: str, zone: str, margin: float = 0.0):
    """A random canonical (u, v) inside the lung of ``side`` (the patient's) in ``zone``, at
    least ``margin`` inside the lateral wall and clear of the heart and mediastinum."""
    i = side_index(side)
    apex, dome = anat.apex[i], anat.dome[i]
    span = dome - apex
    hilum_v = apex + HILUM_LEVEL[i] * span
    bands = ZONE_BANDS
    if zone == "perihilar":
        v = hilum_v + rng.uniform(-0.05, 0.06)
        a_lo, a_hi = 0.08, 0.35
    elif zone == "retrocardiac":
        v = apex + rng.uniform(0.72, 0.92) * span
        hr = heart_extent(anat, v)
        s_hi = max(min(hr[1] - 0.03, 0.16), anat.medial + 0.04)
        s = rng.uniform(anat.medial + 0.035, s_hi)
        u = 0.5 - s if side == "right" else 0.5 + s
        return float(u), float(v)
    else:
        lo, hi = bands.get(zone, bands["diffuse"])
        v = apex + rng.uniform(lo, hi) * span
        a_lo, a_hi = (0.25, 0.8) if zone != "apical" else (0.3, 0.7)
    s_lat = lateral_wall(anat, i, v) - margin - 0.01
    hr = heart_extent(anat, v)
    s_med = max(anat.medial + 0.05, (hr[i] + 0.02) if zone != "perihilar" else 0.0,
                anat.mediastinum + 0.02)
    s_med = min(s_med, s_lat - 0.02)
    s = s_med + rng.uniform(a_lo, a_hi) * max(s_lat - s_med, 0.0)
    if zone == "apical":
        v = max(v, anat.apex[i] + 3.0 * (s - 0.17) ** 2 + margin + 0.01)
    u = 0.5 - s if side == "right" else 0.5 + s
    return float(u), float(v)


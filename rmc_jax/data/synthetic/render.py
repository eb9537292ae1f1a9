"""Rendering: a case's findings drawn over its normal chest, and one box per region.

``render_case(case, image_size)`` -> ``(image uint8 [H, W], boxes float32 [R, 4])``: a PA
radiograph (the patient's right on the image's left) and one tight normalised xyxy box per
region (``findings.case_regions``), measured on what was actually drawn: each lesion renderer
returns its pixel window, its density (or air) field there and the box of its visible part.
"""

from __future__ import annotations

import math

import numpy as np

from rmc_jax.data.synthetic.anatomy import HILUM_LEVEL, side_index
from rmc_jax.data.synthetic.chest import (ImageFrame, anatomy_attenuation, box_from_mask, clip01,
                                          lung_fields, noise_crop, sigmoid)
from rmc_jax.data.synthetic.findings import Case, Lesion, case_regions


def _lesion_box(field, thr, window, size):
    """Box of ``field > thr``; at very low resolution, of the field's upper half instead."""
    box = box_from_mask(field > thr, window, size)
    if box is None and field.size and field.max() > 0:
        box = box_from_mask(field >= 0.5 * field.max(), window, size)
    return box


# Each lesion renderer returns (pixel window, its field(s) on the window, box of the visible part).
def _render_round(frame, fields, lesion: Lesion, lobulated: bool):
    """Nodule or (lobulated) mass: a soft-edged ellipse, denser when calcified."""
    u0, v0, r = lesion.param("u"), lesion.param("v"), lesion.param("r")
    ext = 1.35 * r + 4 * frame.px
    win = frame.window(u0 - ext, v0 - ext, u0 + ext, v0 + ext)
    u, v = frame.u[win], frame.v[win]
    ca, sa = math.cos(lesion.param("angle")), math.sin(lesion.param("angle"))
    du, dv = u - u0, v - v0
    x = (ca * du + sa * dv) / (r * lesion.param("ecc"))
    y = (-sa * du + ca * dv) * lesion.param("ecc") / r
    rho = np.sqrt(x * x + y * y)
    if lobulated:
        rng = np.random.default_rng(int(lesion.param("seed")))
        phi = np.arctan2(y, x)
        p = rng.uniform(0, 2 * math.pi, 3)
        lob = 1.0 + 0.1 * np.cos(3 * phi + p[0]) + 0.07 * np.cos(5 * phi + p[1]) \
            + 0.03 * np.cos(11 * phi + p[2])
        rho = rho / lob
    edge = max(0.12, 2.0 * frame.px / r)
    body = sigmoid((1.0 - rho) / (0.45 * edge))
    core = 0.85 + 0.15 * clip01(1.0 - rho)
    amp = lesion.param("amp") * (1.6 if lesion.param("calcified") else 1.0)
    field = amp * body * core * (0.35 + 0.65 * fields["lung"][win])
    return win, field, _lesion_box(field, 0.3 * amp, win, frame.size)


def _render_consolidation(frame, fields, lesion: Lesion):
    """Patchy airspace density inside an ellipse, with air bronchograms when the lesion has them."""
    u0, v0, rx, ry = lesion.param("u"), lesion.param("v"), lesion.param("rx"), lesion.param("ry")
    win = frame.window(u0 - 1.3 * rx, v0 - 1.3 * ry, u0 + 1.3 * rx, v0 + 1.3 * ry)
    u, v = frame.u[win], frame.v[win]
    rng = np.random.default_rng(int(lesion.param("seed")))
    rho = np.sqrt(((u - u0) / rx) ** 2 + ((v - v0) / ry) ** 2)
    env = clip01(1.25 - rho) / 1.25
    n1 = noise_crop(frame.size, "mid", rng, window=win)
    n2 = noise_crop(frame.size, "fine", rng, window=win)
    patch = sigmoid((2.2 * env - 0.45 + 0.35 * n1 + 0.15 * n2) / 0.12) * sigmoid((1.0 - rho) / 0.12)
    lung = fields["lung"][win]
    dens = lesion.param("amp") * (0.3 * clip01(1.6 * env) + 0.7 * patch) * lung
    if lesion.param("bronchograms"):
        # air bronchograms: thin tortuous lucent tubes (ridges of a smooth field) in the dense core
        n3 = noise_crop(frame.size, "mid", rng, window=win)
        br = np.exp(-(n3 / 0.14) ** 2) * sigmoid((patch - 0.8) / 0.06) * sigmoid((0.75 - rho) / 0.1)
        dens = dens * (1.0 - 0.3 * br)
    return win, dens, _lesion_box(dens, 0.3 * lesion.param("amp"), win, frame.size)


def _render_atelectasis(frame, fields, lesion: Lesion):
    """Plate-like lines, a segmental ellipse or a lobar collapse triangle, by the lesion's kind."""
    u0, v0, w, h = lesion.param("u"), lesion.param("v"), lesion.param("w"), lesion.param("h")
    kind = lesion.param("kind")
    amp = lesion.param("amp")
    ext = 0.6 * max(w, h) + 0.03
    win = frame.window(u0 - ext, v0 - ext, u0 + ext, v0 + ext)
    u, v = frame.u[win], frame.v[win]
    lung = fields["lung"][win]
    rng = np.random.default_rng(int(lesion.param("seed")))
    ca, sa = math.cos(lesion.param("angle")), math.sin(lesion.param("angle"))
    du, dv = u - u0, v - v0
    par = ca * du + sa * dv
    perp = -sa * du + ca * dv
    if kind == "plate":
        dens = np.zeros_like(u)
        n = int(lesion.param("lines"))
        offs = [0.0] if n == 1 else [-0.25 * h, 0.25 * h]
        for k, off in enumerate(offs):
            half = 0.5 * w * (1.0 if k == 0 else rng.uniform(0.6, 0.9))
            t = max(0.006, 0.12 * h) + 0.5 * frame.px
            line = np.exp(-((perp - off + 0.04 * (par / max(w, 1e-3)) ** 2) / t) ** 2)
            shift = rng.uniform(-0.1, 0.1) * w
            dens = np.maximum(dens, line * sigmoid((half - np.abs(par - shift)) / 0.008))
        dens = amp * 1.1 * dens * lung
    elif kind == "segmental":
        rho = np.sqrt((par / (0.5 * w)) ** 2 + (perp / (0.5 * h)) ** 2)
        n1 = noise_crop(frame.size, "fine", rng, window=win)
        dens = amp * sigmoid((1.0 - rho + 0.12 * n1) / 0.1) * lung
    else:  # lobar collapse: dense triangle with its apex towards the hilum
        toward_mid = 1.0 if lesion.side == "right" else -1.0
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
        dens = 1.1 * amp * sigmoid(d / (2 * frame.px)) * lung
    return win, dens, _lesion_box(dens, 0.3 * amp, win, frame.size)


def _render_effusion(frame, fields, lesion: Lesion):
    """Pleural fluid layering from the costophrenic angle up to a meniscus; the box covers the
    fluid seen against aerated lung."""
    a = frame.anat
    i = side_index(lesion.side)
    level, men, amp = lesion.param("level"), lesion.param("meniscus"), lesion.param("amp")
    bottom = a.dome[i] + a.sulcus + 0.02
    top = level - men - 0.03
    if i == 0:
        win = frame.window(0.5 - a.lateral[0] - 0.03, top, 0.5, bottom)
    else:
        win = frame.window(0.5, top, 0.5 + a.lateral[1] + 0.03, bottom)
    u, v = frame.u[win], frame.v[win]
    s = fields["s"][win]
    x = clip01((s - a.medial) / (a.lateral[i] - a.medial))
    surf = level + men * (1.0 - x * x * x)
    # the fluid also layers over the lateral part of the dome (blunting, subpulmonic rim)
    surf = np.minimum(surf, fields["dome_v"][win] - lesion.param("layer") * x * x)
    side = sigmoid((u - 0.5) / frame.px) if i == 1 else sigmoid((0.5 - u) / frame.px)
    fluid = sigmoid((v - surf) / 0.012) * (0.75 + 0.25 * clip01((v - surf) / 0.12)) * side
    lung = fields["lung"][win]
    fl = amp * fluid
    visible = fl * lung * (1.0 - fields["occ"][win])      # fluid seen against aerated lung
    return win, fl, _lesion_box(visible, 0.35, win, frame.size)


def _render_pneumothorax(frame, fields, lesion: Lesion):
    """Apicolateral air without lung markings and the visceral pleural line: (air, line)."""
    a = frame.anat
    i = side_index(lesion.side)
    depth, v_end = max(lesion.param("depth"), 3.0 * frame.px), lesion.param("v_end")
    if i == 0:
        win = frame.window(0.5 - a.lateral[0] - 0.02, a.apex[0] - 0.03, 0.5, v_end + 0.06)
    else:
        win = frame.window(0.5, a.apex[1] - 0.03, 0.5 + a.lateral[1] + 0.02, v_end + 0.06)
    u, v = frame.u[win], frame.v[win]
    side = sigmoid((u - 0.5) / frame.px) if i == 1 else sigmoid((0.5 - u) / frame.px)
    lung = fields["lung"][win] * side
    s = fields["s"][win]
    delta = depth * sigmoid((v_end - v) / 0.025) * sigmoid((s - 0.14) / 0.025)   # apicolateral
    d_lt = fields["d_lt"][win]
    ptx = lung * sigmoid((delta - d_lt) / frame.px) * sigmoid((delta - 0.004) / 0.002)
    line = (np.exp(-((d_lt - delta) / (0.9 * frame.px)) ** 2) * sigmoid((delta - 0.006) / 0.003)
            * lung)
    return win, (ptx, line), _lesion_box(ptx, 0.5, win, frame.size)


def _render_edema(frame, fields, lesion: Lesion, zone: str | None):
    """Bilateral haze around the hila (or the bases, or diffuse), with Kerley lines when the
    lesion has them; the box covers the haze seen over aerated lung."""
    a = frame.anat
    amp, spread = lesion.param("amp"), lesion.param("spread")
    top = min(a.apex) + 0.05
    bottom = max(a.dome) + 0.02
    win = frame.window(0.5 - a.lateral[0], top, 0.5 + a.lateral[1], bottom)
    u, v = frame.u[win], frame.v[win]
    left = fields["left"][win]
    lung = fields["lung"][win]
    rng = np.random.default_rng(int(lesion.param("seed")))
    span = a.dome[0] - a.apex[0]
    hy = a.apex[0] + (HILUM_LEVEL[0] if zone != "basal" else 0.68) * span
    hx = 0.5 - 0.14 + 0.28 * left
    sx = (0.12 if zone != "diffuse" else 0.2) * spread
    sy = (0.15 if zone != "diffuse" else 0.26) * spread
    g = np.exp(-(((u - hx) / sx) ** 2 + ((v - hy) / sy) ** 2))
    n1 = noise_crop(frame.size, "mid", rng, window=win)
    haze = amp * g * (0.85 + 0.25 * n1) * lung
    if lesion.param("kerley"):
        s = fields["s"][win]
        s_lat = fields["s_lat"][win]
        kl = (sigmoid((np.cos(2 * math.pi * v / 0.014) - 0.8) / 0.06)
              * sigmoid((s - s_lat + 0.035) / 0.004))
        kl = kl * sigmoid((v - (a.dome[0] - 0.16)) / 0.01)
        haze = haze + 0.1 * kl * lung
    visible = haze * (1.0 - fields["occ"][win])            # the haze seen over aerated lung
    return win, haze, _lesion_box(visible, 0.35 * amp, win, frame.size)


def render_case(case: Case, image_size: int = 256, regions: list | None = None):
    """Render a case: ``(image uint8 [H, W], boxes float32 [R, 4])``, R = len(case_regions(case)).

    Deterministic in ``case`` alone: background textures come from ``case.anatomy.texture_seed``
    and each lesion's from its own seed, so removing a finding leaves every other pixel's
    inputs unchanged.
    """
    size = int(image_size)
    a = case.anatomy
    frame = ImageFrame(a, size)
    regions = case_regions(case) if regions is None else regions
    ctr = a.ctr
    for reg in regions:
        if reg.finding == "cardiomegaly":
            ctr = reg.lesion.param("ctr")
    fields = lung_fields(frame, ctr)
    chest = anatomy_attenuation(frame, fields)
    lung, occ = fields["lung"], fields["occ"]

    air = lung * (1.0 - 0.85 * occ)          # lung air seen through the heart / mediastinum
    extra = np.zeros_like(lung)               # added density from findings
    markings = chest["markings"] * lung
    ptx_air = None
    boxes = []
    for reg in regions:
        lesion = reg.lesion
        box = None
        if reg.finding in ("nodule", "mass"):
            win, dens, box = _render_round(frame, fields, lesion, reg.finding == "mass")
            extra[win] += dens * (1.0 - 0.4 * occ[win])
        elif reg.finding == "consolidation":
            win, dens, box = _render_consolidation(frame, fields, lesion)
            extra[win] += dens * (1.0 - 0.4 * occ[win])
        elif reg.finding == "atelectasis":
            win, dens, box = _render_atelectasis(frame, fields, lesion)
            extra[win] += dens * (1.0 - 0.4 * occ[win])
        elif reg.finding == "pleural_effusion":
            win, fl, box = _render_effusion(frame, fields, lesion)
            air[win] *= (1.0 - fl)
            markings[win] *= (1.0 - fl)
            extra[win] += 0.06 * fl * lung[win]
        elif reg.finding == "pneumothorax":
            win, (ptx, line), box = _render_pneumothorax(frame, fields, lesion)
            markings[win] *= (1.0 - ptx)
            if ptx_air is None:
                ptx_air = np.zeros_like(lung)
            ptx_air[win] += 0.14 * ptx
            extra[win] += 0.16 * line
        elif reg.finding == "edema":
            win, haze, box = _render_edema(frame, fields, lesion, reg.zone)
            extra[win] += haze * (1.0 - 0.4 * occ[win])
        elif reg.finding == "cardiomegaly":
            heart = fields["heart"]
            mask = (heart > 0.5) & (frame.v < fields["dome_v"] + 0.015)
            box = box_from_mask(mask, (slice(0, size), slice(0, size)), size)
        if box is None:   # nothing visible (should not happen): a minimal box at the centre
            box = np.array([0.49, 0.49, 0.51, 0.51], np.float32)
        boxes.append(box)

    T = (chest["soft"] + 0.2 * occ * chest["body"] + chest["bones"] + markings
         + chest["paren"] * lung - 0.58 * air - chest["air_ways"] - chest["bubble"] + extra)
    if ptx_air is not None:
        T -= ptx_air
    # exposure: attenuation -> film density, window, gamma, grain
    img = 1.0 - np.exp(-a.kvp * np.maximum(T, 0.0))
    lo = a.black
    hi = (1.0 - math.exp(-a.kvp * 1.45)) * a.white
    img = clip01((img - lo) / (hi - lo))
    if a.gamma != 1.0:
        img = img ** a.gamma
    rng = chest["rng"]
    img = img + a.noise * noise_crop(size, "grain", rng) + 0.02 * noise_crop(size, "coarse", rng)
    out = np.clip(img * 255.0 + 0.5, 0, 255).astype(np.uint8)
    boxes = np.stack(boxes).astype(np.float32) if boxes else np.zeros((0, 4), np.float32)
    return out, np.clip(boxes, 0.0, 1.0)


"""The normal chest on the image grid: canonical coordinates, noise, lung fields, attenuation.

``ImageFrame`` gives every pixel of one image its canonical (u, v) (``anatomy`` module: the
projection's rotation, scale and shift undone) and maps a canonical rectangle back to a pixel
window, so that a lesion is computed on the few pixels it can reach. ``lung_fields`` computes
the signed lung field (positive inside the aerated lung), the heart and mediastinum masks;
``anatomy_attenuation`` the soft tissue, bones, airways, vessels and gastric bubble, each as an
attenuation map that ``render.render_case`` sums with the findings before exposure.

Noise comes from tiles cached per image size (``noise_crop``), filtered from fixed seeds: an
image's texture is a random offset into them.
"""

from __future__ import annotations

import functools
import math

import numpy as np

from rmc_jax.data.synthetic.anatomy import HILUM_LEVEL, Anatomy, heart_geometry


def sigmoid(x):
    """Logistic function (float32), via tanh."""
    return 0.5 + 0.5 * np.tanh(0.5 * x)


def clip01(x):
    """``x`` clipped to [0, 1]."""
    return np.clip(x, 0.0, 1.0)


@functools.lru_cache(maxsize=8)
def _pixel_centres(size: int):
    """(x, y) of every pixel centre of a size x size image, normalised to [0, 1]."""
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
def _noise_tiles(size: int) -> dict:
    """Cached noise tiles (2x the image) from fixed seeds: crops at random offsets give each image
    its own texture at the price of a slice.  Scales are relative to the image size."""
    n = 2 * size
    return {
        "grain": _gaussian_tile(n, 0.6, 11),
        "fine": _gaussian_tile(n, size / 90, 12),
        "mid": _gaussian_tile(n, size / 40, 13),
        "coarse": _gaussian_tile(n, size / 14, 14),
    }


def noise_crop(size, kind, rng_or_seed, window=None):
    """A size x size crop (or only its ``window`` of pixel slices) of the ``kind`` noise tile
    ('grain', 'fine', 'mid' or 'coarse') at an offset drawn from ``rng_or_seed``."""
    tile = _noise_tiles(size)[kind]
    rng = np.random.default_rng(rng_or_seed) if not isinstance(rng_or_seed, np.random.Generator) \
        else rng_or_seed
    oy, ox = (int(x) for x in rng.integers(0, size, 2))
    if window is not None:
        sy, sx = window
        return tile[oy + sy.start: oy + sy.stop, ox + sx.start: ox + sx.stop]
    return tile[oy: oy + size, ox: ox + size]


class ImageFrame:
    """The canonical coordinates of one image's pixels, shared by the anatomy and the findings.

    ``u``, ``v``: float32 [size, size], the canonical position of every pixel; ``px``: one
    pixel in canonical units; ``window(u0, v0, u1, v1)``: the pixel slices of a rectangle.
    """

    def __init__(self, anat: Anatomy, size: int):
        self.anat, self.size = anat, size
        X, Y = _pixel_centres(size)
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


def box_from_mask(mask: np.ndarray, window, size: int):
    """Tight normalised xyxy box of a boolean mask computed on ``window``; None if empty."""
    rows = np.flatnonzero(mask.any(1))
    cols = np.flatnonzero(mask.any(0))
    if rows.size == 0:
        return None
    sy, sx = window
    y0, y1 = rows[0] + sy.start, rows[-1] + 1 + sy.start
    x0, x1 = cols[0] + sx.start, cols[-1] + 1 + sx.start
    return np.array([x0 / size, y0 / size, x1 / size, y1 / size], np.float32)


def lung_fields(frame: ImageFrame, heart_ctr: float) -> dict:
    """Per-pixel fields of the chest with a heart of cardiothoracic ratio ``heart_ctr``: the
    soft lung mask ``lung`` and its signed distances (``d_lung``, ``d_lt``: to the lateral and
    top walls), the diaphragm level ``dome_v``, the lateral wall ``s_lat``, the heart, the
    occluding mediastinum ``occ``, ``left`` (1 on the patient's left), ``s`` (distance from the
    midline) and ``eps`` (the edge softness)."""
    a = frame.anat
    u, v = frame.u, frame.v
    left = (u > 0.5).astype(np.float32)
    s = np.abs(u - 0.5)

    def per(pair):  # a per-side pair of Anatomy as a field: [0] on the right, [1] on the left
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
    eps = 0.9 * frame.px
    lung = sigmoid(d_lung / eps)

    # heart: tilted ellipse, bottom hidden by the diaphragm / abdomen
    cx, cy, ax, ay, tilt = heart_geometry(a, heart_ctr)
    c, sn = math.cos(tilt), math.sin(tilt)
    hx, hy = u - cx, v - cy
    yr = (-sn * hx + c * hy) / ay
    xr = (c * hx + sn * hy) / (ax * (1.0 + 0.15 * yr))     # wider towards the diaphragm
    rho = np.sqrt(xr * xr + yr * yr)
    heart = sigmoid((1.0 - rho) * min(ax, ay) / eps) * sigmoid((dome_v + 0.03 - v) / 0.02)
    # mediastinum: a band around the midline (trachea, vessels), aortic knob on the image right
    med_w = a.mediastinum * (1.0 + 0.35 * sigmoid((v - 0.36) / 0.03))
    med = sigmoid((med_w - np.abs(u - 0.5 - 0.008)) / (1.5 * eps)) * sigmoid((0.72 - v) / 0.02)
    kx, ky = 0.5 + a.mediastinum - 0.008, a.apex[1] + 0.2
    knob = sigmoid((a.knob - np.sqrt((u - kx) ** 2 + ((v - ky) * 1.2) ** 2)) / eps)
    occ = np.maximum(np.maximum(heart, med), knob)
    return dict(left=left, s=s, lung=lung, d_lung=d_lung, d_lt=d_lt, dome_v=dome_v, s_lat=s_lat,
                heart=heart, occ=occ, heart_geom=(cx, cy, ax, ay, tilt), eps=eps)


def _tube(u, v, p0, p1, width, eps):
    """Soft tube of half-width ``width`` around the segment p0-p1."""
    d0, d1 = p1[0] - p0[0], p1[1] - p0[1]
    L2 = d0 * d0 + d1 * d1
    t = np.clip(((u - p0[0]) * d0 + (v - p0[1]) * d1) / L2, 0.0, 1.0)
    px, py = u - (p0[0] + t * d0), v - (p0[1] + t * d1)
    return sigmoid((width - np.sqrt(px * px + py * py)) / eps)


def anatomy_attenuation(frame: ImageFrame, fields: dict) -> dict:
    """Attenuation maps of the normal chest before findings: ``soft`` tissue, ``body`` mask,
    ``bones``, ``air_ways``, vessel ``markings``, parenchymal texture ``paren``, gastric
    ``bubble``, and ``rng`` (the image's texture generator, which the exposure's grain
    continues)."""
    a, u, v, s, eps = frame.anat, frame.u, frame.v, fields["s"], fields["eps"]
    size = frame.size
    rng = np.random.default_rng(a.texture_seed)

    # ---- body outline: neck, shoulders, chest wall; arms beyond
    shoulder = 0.11 + 0.42 * sigmoid((v - 0.085) / 0.025)
    wall = a.body_width + 0.012 * np.cos(6.0 * v)
    body_w = np.minimum(shoulder, wall + 0.06 * sigmoid((0.2 - v) / 0.04))
    body = sigmoid((body_w - s) / (2.5 * eps))
    thick = a.soft * (0.62 + 0.16 * clip01(1.0 - (s / 0.5) ** 4)) * body
    arms = 0.45 * sigmoid((s - body_w - 0.025) / (3 * eps)) * sigmoid((v - 0.06) / 0.04)
    arms = arms * sigmoid((0.9 - v) / 0.05)
    abdomen = 0.2 * sigmoid((v - fields["dome_v"] - 0.01) / 0.03) * body
    soft = thick + arms + abdomen
    # breast shadows over the lower zones
    if a.breasts > 0:
        bd = np.sqrt(((s - 0.28) / 0.2) ** 2 + ((v - 0.68) / 0.14) ** 2)
        soft = soft + a.breasts * sigmoid((1.0 - bd) / 0.06) * sigmoid((v - 0.6) / 0.05)

    # ---- bones
    # spine: vertebral bodies with end plates, pedicles (computed in a window around the midline)
    bones = np.zeros_like(u)
    w = frame.window(0.44, -0.1, 0.56, 1.1)
    uw, vw = u[w], v[w]
    sp_w = 0.028 + 0.012 * vw
    spine = sigmoid((sp_w - np.abs(uw - 0.5)) / (1.5 * eps))
    disc = np.cos(2 * math.pi * (vw - 0.05) / (0.04 + 0.02 * vw))
    ped = np.exp(-(((np.abs(uw - 0.5) - 0.7 * sp_w) / 0.007) ** 2)) * sigmoid((disc - 0.3) * 5)
    bones[w] = spine * (0.045 + 0.015 * disc + 0.04 * ped)
    # posterior ribs: arcs rising from the spine then falling laterally; anterior ribs fainter
    in_chest = (sigmoid((fields["s_lat"] + 0.03 - s) / (2 * eps)) * sigmoid((s - 0.035) / 0.01)
                * sigmoid((0.86 - v) / 0.03))
    g = -a.rib_rise * s + a.rib_fall * s * s
    ph = (v - g - 0.075 - 0.3 * a.rib_phase * a.rib_spacing) / (a.rib_spacing * (1.0 + 0.25 * v))
    cph = np.cos(2 * math.pi * ph)
    band = sigmoid((cph - 0.25) / 0.1)
    rib = band * (0.55 + 0.45 * sigmoid((-np.sin(2 * math.pi * ph) - 0.75) / 0.06))
    bones += 0.095 * rib * in_chest * sigmoid((ph + 0.25) / 0.1)
    pha = (v + 0.6 * s - 0.27) / (1.1 * a.rib_spacing)
    arib = sigmoid((np.cos(2 * math.pi * pha) - 0.55) / 0.1) * sigmoid((s - 0.17) / 0.04)
    bones += 0.035 * arib * in_chest * sigmoid((v - 0.2) / 0.05)
    # clavicles
    w = frame.window(0.12, a.clavicle_v - 0.14, 0.88, a.clavicle_v + 0.04)
    sw, vw = s[w], v[w]
    sc = sw - 0.045
    cv = a.clavicle_v + a.clavicle_slope * sc + 0.5 * sc * sc - 0.8 * sc * sc * sc
    clav = (sigmoid((0.0115 - np.abs(vw - cv)) / (1.2 * eps)) * sigmoid((sw - 0.045) / 0.006)
            * sigmoid((0.33 - sw) / 0.012))
    bones[w] += 0.16 * clav
    # scapular edges over the lateral upper zones
    w = frame.window(0.0, 0.12, 1.0, 0.62)
    sw, vw = s[w], v[w]
    scap = (np.exp(-(((sw - (0.36 + 0.25 * (vw - 0.2))) / 0.005) ** 2)) * sigmoid((vw - 0.2) / 0.03)
            * sigmoid((0.5 - vw) / 0.04))
    bones[w] += 0.04 * scap

    # ---- airways: trachea and main bronchi
    carina = (0.505, a.apex[0] + 0.21)
    air_ways = np.zeros_like(u)
    w = frame.window(0.43, -0.05, 0.585, carina[1] + 0.09)
    uw, vw = u[w], v[w]
    trachea = sigmoid((0.016 - np.abs(uw - 0.505)) / (1.5 * eps)) * sigmoid((carina[1] - vw) / 0.01)
    bronchi = _tube(uw, vw, carina, (0.505 - 0.045, carina[1] + 0.07), 0.01, 1.5 * eps)
    bronchi = np.maximum(bronchi, _tube(uw, vw, carina, (0.505 + 0.06, carina[1] + 0.055),
                                        0.009, 1.5 * eps))
    air_ways[w] = 0.16 * np.maximum(trachea, bronchi) * sigmoid((vw - 0.03) / 0.02)

    # ---- lung markings: hila and vessels radiating from them
    hv = tuple(a.apex[i] + HILUM_LEVEL[i] * (a.dome[i] - a.apex[i]) for i in (0, 1))
    left = fields["left"]
    hxp = 0.5 - 0.085 + left * 0.17
    hyp = hv[0] + left * (hv[1] - hv[0])
    dx, dy = u - hxp, v - hyp
    r = np.sqrt(dx * dx + dy * dy) + 1e-4
    theta = np.arctan2(dy, dx)
    fine = noise_crop(size, "fine", rng)
    w1 = np.cos(26 * theta + 2.0 * fine + 16 * r)
    w2 = np.cos(13 * theta - 1.6 * fine - 9 * r + 1.3)
    vessels = (sigmoid((w1 - 0.55 - 2.0 * r) / 0.06) + 1.2 * sigmoid((w2 - 0.55 - 1.2 * r) / 0.06))
    taper = np.exp(-r / 0.12) * sigmoid((r - 0.035) / 0.01)
    hilum = np.exp(-((dx / 0.028) ** 2 + (dy / 0.055) ** 2))
    markings = 0.09 * vessels * taper + 0.14 * hilum
    paren = 0.015 * noise_crop(size, "mid", rng) + 0.015 * fine

    # gastric bubble under the left dome
    gb_u, gb_v = 0.5 + 0.17, a.dome[1] + 0.055
    bubble = np.zeros_like(u)
    w = frame.window(gb_u - 0.08, gb_v - 0.05, gb_u + 0.08, gb_v + 0.05)
    uw, vw = u[w], v[w]
    bub = sigmoid((1.0 - np.sqrt(((uw - gb_u) / 0.055) ** 2 + ((vw - gb_v) / 0.03) ** 2)) / 0.12)
    bubble[w] = bub * sigmoid((vw - gb_v + 0.012) / (1.5 * eps)) * (0.1 + 0.15 * rng.random())
    return dict(soft=soft, body=body, bones=bones, air_ways=air_ways, markings=markings,
                paren=paren, bubble=bubble, rng=rng)


# ---- findings ---------------------------------------------------------------------------------

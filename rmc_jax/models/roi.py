"""RoIAlign over one image's ViT patch grid, matching torchvision exactly.

Region-aware CLIP pools a feature vector per box (e.g. a lesion or anatomical region) from the
patch-token grid. ``roi_align`` reproduces torchvision's ``roi_align`` CPU kernel
(``roi_align_kernel.cpp``), with ``spatial_scale`` set to the grid size because boxes are
given in normalised image coordinates, so results are interchangeable with PyTorch baselines.

Why this formulation: bilinear sampling and torchvision's validity rule are separable in y and x
(a sample is kept iff its y AND its x are in range; its four bilinear weights are products of a
row weight and a column weight).  So per box we build dense interpolation matrices

    Wy [R, out_h, H]   -- average over each bin's y-samples of their bilinear row weights
    Wx [R, out_w, W]   -- same for columns

from comparisons against ``arange(H)`` / ``arange(W)`` (no gathers, no scatters), and pool with
two small contractions, ``out[r,i,j,d] = sum_{h,w} Wy[r,i,h] Wx[r,j,w] F[h,w,d]``.  Everything
has static shapes, so it jits, vmaps over images, and is differentiable w.r.t. features (and
w.r.t. boxes, piecewise, like bilinear interpolation itself).  The 1/sampling_ratio**2 average
factorises into 1/sampling_ratio per axis.
"""

from __future__ import annotations

import operator

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["roi_align"]


def _as_output_size(output_size) -> tuple[int, int]:
    """int or (out_h, out_w) -> (out_h, out_w) of positive Python ints."""
    if isinstance(output_size, (tuple, list)):
        if len(output_size) != 2:
            raise ValueError(
                f"output_size must be an int or a pair (out_h, out_w); got {output_size!r}"
            )
        sizes = tuple(output_size)
    else:
        sizes = (output_size, output_size)
    try:
        sizes = tuple(operator.index(s) for s in sizes)
    except TypeError:
        raise TypeError(
            f"output_size must be a static Python int or pair of ints (mark it static under "
            f"jax.jit); got {output_size!r}"
        ) from None
    if min(sizes) < 1:
        raise ValueError(f"output_size entries must be >= 1; got {output_size!r}")
    return sizes  # type: ignore[return-value]


def _axis_weights(start, end, size: int, out: int, sampling_ratio: int, aligned: bool, dtype):
    """Interpolation matrix along one axis.

    start, end: [R] roi bounds in grid units (already scaled and offset).
    Returns [R, out, size]: entry (r, p, k) is the mean over the ``sampling_ratio`` samples of
    bin p of the bilinear weight that grid line k receives (0 for out-of-range samples).
    """
    roi = end - start
    if not aligned:  # torchvision legacy: force malformed / tiny rois to be 1x1
        roi = jnp.maximum(roi, 1.0)
    bin_size = (roi / out)[:, None, None]  # [R, 1, 1]
    p = jnp.arange(out, dtype=dtype)[None, :, None]  # [1, out, 1]
    i = (jnp.arange(sampling_ratio, dtype=dtype) + 0.5)[None, None, :]  # [1, 1, S]
    # Same operation order as torchvision: start + p*bin + (i+.5)*bin/S.
    coord = start[:, None, None] + p * bin_size + i * bin_size / sampling_ratio  # [R, out, S]

    valid = (coord >= -1.0) & (coord <= size)
    c = jnp.maximum(coord, 0.0)
    low = jnp.floor(c)
    at_edge = low >= size - 1
    low = jnp.where(at_edge, size - 1, low)
    high = jnp.where(at_edge, size - 1, low + 1)
    c = jnp.where(at_edge, low, c)
    frac = c - low  # weight of `high`; 1 - frac is the weight of `low`

    grid = jnp.arange(size, dtype=dtype)  # [size]
    w = (1.0 - frac)[..., None] * (grid == low[..., None]) + frac[..., None] * (
        grid == high[..., None]
    )  # [R, out, S, size]
    w = jnp.where(valid[..., None], w, 0.0)
    return w.sum(axis=2) / sampling_ratio


def roi_align(features, boxes, output_size, sampling_ratio=2, aligned=True):
    """RoIAlign of normalised boxes over one image's patch grid (torchvision semantics).

    Args:
      features: [H, W, D] feature grid of one image (any float dtype).
      boxes: [R, 4] boxes ``(x0, y0, x1, y1)`` normalised to the image, origin top-left; x is
        scaled by W and y by H, so ``(0, 0, 1, 1)`` covers the whole grid. Boxes touching or
        crossing the border are neither shifted nor clipped (torchvision behaviour).
      output_size: int or ``(out_h, out_w)``; static under ``jax.jit``.
      sampling_ratio: sample points per bin side, must be > 0; static.
      aligned: if True subtract the half-pixel offset 0.5 after scaling; if False (legacy)
        use no offset and force roi width/height to at least 1. Static.

    Returns:
      [R, out_h, out_w, D] in ``features.dtype`` (weights and accumulation in >= float32).
    """
    out_h, out_w = _as_output_size(output_size)
    try:
        sampling_ratio = operator.index(sampling_ratio)
    except TypeError:
        raise TypeError(
            f"sampling_ratio must be a static Python int (mark it static under jax.jit); "
            f"got {sampling_ratio!r}"
        ) from None
    if sampling_ratio <= 0:
        raise ValueError(
            f"sampling_ratio={sampling_ratio}: torchvision's adaptive sampling "
            "(sampling_ratio <= 0, i.e. ceil(roi_size / output_size) samples per bin) needs "
            "data-dependent sample counts and cannot be jitted with static shapes; pass a "
            "positive int instead (e.g. sampling_ratio=2)."
        )
    if isinstance(aligned, np.bool_):
        aligned = bool(aligned)
    if not isinstance(aligned, bool):
        raise TypeError(f"aligned must be a static Python bool; got {aligned!r}")

    features = jnp.asarray(features)
    boxes = jnp.asarray(boxes)
    if features.ndim != 3:
        raise ValueError(
            f"features must be one image's grid [H, W, D]; got shape {features.shape}. "
            "For a batch [B, H, W, D] use jax.vmap(roi_align, in_axes=(0, 0, None))."
        )
    if boxes.ndim != 2 or boxes.shape[-1] != 4:
        raise ValueError(
            f"boxes must be [R, 4] normalised (x0, y0, x1, y1); got shape {boxes.shape}. "
            "For a batch [B, R, 4] use jax.vmap(roi_align, in_axes=(0, 0, None))."
        )
    if not jnp.issubdtype(features.dtype, jnp.floating):
        raise TypeError(f"features must be floating point; got {features.dtype}")
    H, W, _ = features.shape

    acc = jnp.promote_types(features.dtype, jnp.float32)  # f32, or f64 under x64
    box_dtype = boxes.dtype if jnp.issubdtype(boxes.dtype, jnp.floating) else acc
    wdtype = jnp.promote_types(acc, box_dtype)  # weights / accumulation dtype
    b = boxes.astype(wdtype)
    offset = 0.5 if aligned else 0.0
    x0, y0, x1, y1 = (b[:, 0] * W - offset, b[:, 1] * H - offset,
                      b[:, 2] * W - offset, b[:, 3] * H - offset)
    wy = _axis_weights(y0, y1, H, out_h, sampling_ratio, aligned, wdtype)  # [R, out_h, H]
    wx = _axis_weights(x0, x1, W, out_w, sampling_ratio, aligned, wdtype)  # [R, out_w, W]

    # Full precision: the weights are the point of exactness (GPU/TPU default f32 matmul
    # precision would round them); the contractions are tiny next to the backbone.
    kw = dict(precision=jax.lax.Precision.HIGHEST, preferred_element_type=wdtype)
    # Pick the contraction order with fewer multiply-adds per box and channel (static shapes).
    cost_w_first = out_w * W * H + out_h * out_w * H
    cost_h_first = out_h * H * W + out_h * out_w * W
    if cost_w_first <= cost_h_first:
        t = jnp.einsum("rjw,hwd->rjhd", wx, features, **kw)  # [R, out_w, H, D]
        out = jnp.einsum("rih,rjhd->rijd", wy, t, **kw)
    else:
        t = jnp.einsum("rih,hwd->riwd", wy, features, **kw)  # [R, out_h, W, D]
        out = jnp.einsum("rjw,riwd->rijd", wx, t, **kw)
    return out.astype(features.dtype)

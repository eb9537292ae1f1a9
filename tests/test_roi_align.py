"""Tests for rmc_jax.models.roi.roi_align against a literal NumPy transcription of torchvision."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rmc_jax.models.roi import roi_align

H, W, D = 7, 9, 3

# Eager JAX dispatches (and compiles) op by op, which is slow; tests call a jitted alias so each
# configuration compiles once.  The plain function is still exercised (validation, bf16, vmap).
roi_align_jit = jax.jit(roi_align, static_argnames=("output_size", "sampling_ratio", "aligned"))


# ---------------------------------------------------------------------------------------------
# Reference: torchvision/csrc/ops/cpu/roi_align_kernel.cpp, transcribed loop by loop.
# ---------------------------------------------------------------------------------------------
def _bilinear_interpolate(feat, height, width, y, x):
    """torchvision's bilinear_interpolate (pre_calc_for_bilinear_interpolate) for one point."""
    if y < -1.0 or y > height or x < -1.0 or x > width:
        return np.zeros(feat.shape[-1])  # empty: this sample contributes zero
    if y <= 0:
        y = 0.0
    if x <= 0:
        x = 0.0
    y_low = int(y)
    x_low = int(x)
    if y_low >= height - 1:
        y_high = y_low = height - 1
        y = float(y_low)
    else:
        y_high = y_low + 1
    if x_low >= width - 1:
        x_high = x_low = width - 1
        x = float(x_low)
    else:
        x_high = x_low + 1
    ly = y - y_low
    lx = x - x_low
    hy = 1.0 - ly
    hx = 1.0 - lx
    w1, w2, w3, w4 = hy * hx, hy * lx, ly * hx, ly * lx
    return (w1 * feat[y_low, x_low] + w2 * feat[y_low, x_high]
            + w3 * feat[y_high, x_low] + w4 * feat[y_high, x_high])


def roi_align_ref(features, boxes, output_size, sampling_ratio=2, aligned=True):
    """NumPy float64 reference. features [H, W, D], normalised boxes [R, 4] -> [R, oh, ow, D]."""
    features = np.asarray(features, np.float64)
    boxes = np.asarray(boxes, np.float64)
    height, width, depth = features.shape
    if isinstance(output_size, int):
        output_size = (output_size, output_size)
    pooled_height, pooled_width = output_size
    out = np.zeros((boxes.shape[0], pooled_height, pooled_width, depth))
    offset = 0.5 if aligned else 0.0
    for n, (bx0, by0, bx1, by1) in enumerate(boxes):
        # spatial_scale = grid size: x scaled by W, y by H.
        roi_start_w = bx0 * width - offset
        roi_start_h = by0 * height - offset
        roi_end_w = bx1 * width - offset
        roi_end_h = by1 * height - offset
        roi_width = roi_end_w - roi_start_w
        roi_height = roi_end_h - roi_start_h
        if not aligned:
            roi_width = max(roi_width, 1.0)
            roi_height = max(roi_height, 1.0)
        bin_size_h = roi_height / pooled_height
        bin_size_w = roi_width / pooled_width
        roi_bin_grid_h = (sampling_ratio if sampling_ratio > 0
                          else math.ceil(roi_height / pooled_height))
        roi_bin_grid_w = (sampling_ratio if sampling_ratio > 0
                          else math.ceil(roi_width / pooled_width))
        count = max(roi_bin_grid_h * roi_bin_grid_w, 1)
        for ph in range(pooled_height):
            for pw in range(pooled_width):
                output_val = np.zeros(depth)
                for iy in range(roi_bin_grid_h):
                    y = roi_start_h + ph * bin_size_h + (iy + 0.5) * bin_size_h / roi_bin_grid_h
                    for ix in range(roi_bin_grid_w):
                        x = (roi_start_w + pw * bin_size_w
                             + (ix + 0.5) * bin_size_w / roi_bin_grid_w)
                        output_val = output_val + _bilinear_interpolate(
                            features, height, width, y, x)
                out[n, ph, pw] = output_val / count
    return out


# ---------------------------------------------------------------------------------------------
BOXES = {
    "interior": [[0.1, 0.2, 0.6, 0.9], [0.33, 0.05, 0.71, 0.48], [0.25, 0.25, 0.75, 0.75]],
    "border": [[0.0, 0.0, 1.0, 1.0], [0.0, 0.3, 0.4, 1.0], [0.6, 0.0, 1.0, 0.5]],
    "crossing": [[-0.2, -0.1, 1.3, 1.15], [-0.5, 0.2, 0.3, 0.6], [0.8, 0.9, 1.4, 1.6],
                 [-0.9, -0.7, -0.05, 0.4], [1.05, 0.1, 1.6, 0.5]],
    "tiny": [[0.413, 0.52, 0.4137, 0.5203], [0.02, 0.97, 0.0205, 0.9704],
             [0.91, 0.11, 0.915, 0.1101]],
    "degenerate": [[0.5, 0.5, 0.5, 0.5], [0.0, 0.0, 0.0, 0.0], [1.0, 1.0, 1.0, 1.0],
                   [0.3, 0.6, 0.3, 0.8], [0.7, 0.25, 0.2, 0.1]],  # last: x1 < x0, y1 < y0
}


@pytest.fixture(scope="module")
def feats():
    return np.random.default_rng(0).standard_normal((H, W, D)).astype(np.float32)


@pytest.mark.parametrize("aligned", [True, False])
@pytest.mark.parametrize("sampling_ratio", [1, 2, 3])
@pytest.mark.parametrize("output_size", [1, (2, 3), 7])
def test_matches_torchvision_reference(feats, output_size, sampling_ratio, aligned):
    # All box kinds in one call (one compile per config), checked kind by kind.
    kinds = list(BOXES)
    boxes = np.asarray(sum((BOXES[k] for k in kinds), []), np.float32)
    got = roi_align_jit(jnp.asarray(feats), jnp.asarray(boxes), output_size=output_size,
                        sampling_ratio=sampling_ratio, aligned=aligned)
    oh, ow = (output_size, output_size) if isinstance(output_size, int) else output_size
    assert got.shape == (boxes.shape[0], oh, ow, D)
    assert got.dtype == jnp.float32
    got = np.asarray(got)
    start = 0
    for kind in kinds:
        kb = np.asarray(BOXES[kind], np.float32)
        want = roi_align_ref(feats, kb, output_size, sampling_ratio, aligned)
        np.testing.assert_allclose(got[start:start + len(kb)], want, atol=1e-5, rtol=1e-5,
                                   err_msg=f"box kind {kind!r}")
        start += len(kb)


def test_random_boxes_against_reference(feats):
    rng = np.random.default_rng(1)
    xy = rng.uniform(-0.3, 1.3, size=(16, 2, 2))
    boxes = np.concatenate([xy.min(1), xy.max(1)], axis=-1).astype(np.float32)
    for aligned in (True, False):
        got = roi_align_jit(feats, boxes, (3, 2), 2, aligned)
        want = roi_align_ref(feats, boxes, (3, 2), 2, aligned)
        np.testing.assert_allclose(np.asarray(got), want, atol=1e-5, rtol=1e-5)


def test_both_contraction_orders(feats):
    # Wide / tall outputs flip which axis is contracted first; both must agree with the ref.
    boxes = np.asarray(BOXES["interior"] + BOXES["crossing"], np.float32)
    for output_size in [(1, 8), (8, 1)]:
        got = roi_align_jit(feats, boxes, output_size, 2)
        want = roi_align_ref(feats, boxes, output_size, 2)
        np.testing.assert_allclose(np.asarray(got), want, atol=1e-5, rtol=1e-5)


# --- hand-computed cases ---------------------------------------------------------------------
def test_constant_map_gives_constant():
    f = jnp.full((H, W, 2), 3.25, jnp.float32)
    boxes = jnp.asarray(BOXES["interior"], jnp.float32)
    out = roi_align_jit(f, boxes, (2, 3), sampling_ratio=2, aligned=True)
    np.testing.assert_allclose(np.asarray(out), 3.25, atol=1e-6)


def test_linear_ramp_gives_bin_centres():
    # f[h, w] = w: samples are symmetric about each bin centre and stay inside [0, W-1], so
    # bilinear interpolation is exact and every bin returns its centre's x coordinate.
    f = jnp.broadcast_to(jnp.arange(W, dtype=jnp.float32)[None, :, None], (H, W, 1))
    x0, x1 = 0.2, 0.8
    out_w = 4
    out = roi_align_jit(f, jnp.asarray([[x0, 0.3, x1, 0.7]]), (2, out_w), sampling_ratio=3)
    start = x0 * W - 0.5  # 1.3
    bin_w = (x1 - x0) * W / out_w  # 1.35
    centres = start + (np.arange(out_w) + 0.5) * bin_w  # 1.975, 3.325, 4.675, 6.025
    np.testing.assert_allclose(np.asarray(out)[0, :, :, 0], np.broadcast_to(centres, (2, out_w)),
                               atol=1e-5)


def test_whole_image_box_single_bin_is_mean_of_samples():
    # aligned=False, box (0,0,1,1), 1x1 output, sampling_ratio=1: the one sample sits at the
    # grid's geometric centre (W/2, H/2) = (4.5, 3.5): average of the 4 surrounding cells.
    f = np.random.default_rng(2).standard_normal((H, W, 1)).astype(np.float32)
    out = roi_align_jit(f, jnp.asarray([[0.0, 0.0, 1.0, 1.0]]), 1, sampling_ratio=1,
                        aligned=False)
    want = f[3:5, 4:6, 0].mean()
    np.testing.assert_allclose(float(out[0, 0, 0, 0]), want, atol=1e-6)


# --- transformations -------------------------------------------------------------------------
def test_jit_and_vmap_match_loop():
    rng = np.random.default_rng(3)
    B, R = 3, 5
    fb = rng.standard_normal((B, H, W, D)).astype(np.float32)
    xy = rng.uniform(-0.2, 1.2, size=(B, R, 2, 2))
    bb = np.concatenate([xy.min(2), xy.max(2)], axis=-1).astype(np.float32)
    loop = np.stack([roi_align_ref(fb[i], bb[i], (2, 3)) for i in range(B)])
    for i in range(B):
        np.testing.assert_allclose(np.asarray(roi_align_jit(fb[i], bb[i], output_size=(2, 3))),
                                   loop[i], atol=1e-5)
    # vmap of the plain function, output_size passed unmapped (jitted only for test speed).
    vm = jax.jit(jax.vmap(roi_align, in_axes=(0, 0, None)), static_argnums=2)(fb, bb, (2, 3))
    np.testing.assert_allclose(np.asarray(vm), loop, atol=1e-5)
    vmj = jax.jit(jax.vmap(lambda f, b: roi_align(f, b, (2, 3), 3, False)))(fb, bb)
    loop2 = np.stack([roi_align_ref(fb[i], bb[i], (2, 3), 3, False) for i in range(B)])
    np.testing.assert_allclose(np.asarray(vmj), loop2, atol=1e-5)


def test_bf16_preserved_and_close_to_f32(feats):
    boxes = jnp.asarray(BOXES["interior"] + BOXES["crossing"], jnp.float32)
    f16 = jnp.asarray(feats, jnp.bfloat16)
    out16 = roi_align_jit(f16, boxes, 2)
    assert out16.dtype == jnp.bfloat16
    out32 = roi_align_jit(f16.astype(jnp.float32), boxes, 2)
    np.testing.assert_allclose(np.asarray(out16, np.float32), np.asarray(out32),
                               atol=2e-2, rtol=1e-2)


def test_grad_wrt_features_equals_summed_weights(feats):
    # roi_align is linear in features: d(sum out)/d f[h, w, :] = sum of the interpolation
    # weights of grid cell (h, w) = reference applied to a unit impulse at (h, w).
    boxes = np.asarray(BOXES["interior"] + BOXES["crossing"][:2] + BOXES["tiny"][:1], np.float32)
    g = jax.jit(jax.grad(lambda f: roi_align(f, boxes, 2, 2, True).sum()))(jnp.asarray(feats))
    want = np.zeros((H, W))
    for h in range(H):
        for w in range(W):
            impulse = np.zeros((H, W, 1))
            impulse[h, w, 0] = 1.0
            want[h, w] = roi_align_ref(impulse, boxes, 2, 2, True).sum()
    assert g.shape == feats.shape
    np.testing.assert_allclose(np.asarray(g), np.broadcast_to(want[..., None], (H, W, D)),
                               atol=1e-5)


def test_check_grads_float64():
    from jax.test_util import check_grads

    with jax.enable_x64(True):
        rng = np.random.default_rng(4)
        f = jnp.asarray(rng.standard_normal((H, W, 2)), jnp.float64)
        # Boxes away from integer grid coordinates so finite differences stay on one linear piece.
        b = jnp.asarray([[0.123, 0.217, 0.654, 0.881], [-0.137, 0.31, 0.47, 1.093]], jnp.float64)
        fn = jax.jit(lambda f_, b_: roi_align(f_, b_, (2, 3), 2, True))
        check_grads(fn, (f, b), order=1, modes=("fwd", "rev"), eps=1e-6, atol=1e-5, rtol=1e-5)
        assert fn(f, b).dtype == jnp.float64
        gb = jax.jit(jax.grad(lambda b_: roi_align(f, b_, 2).sum()))(b)
        assert np.all(np.isfinite(np.asarray(gb))) and np.any(np.asarray(gb) != 0)


# --- validation ------------------------------------------------------------------------------
@pytest.mark.parametrize("sr", [0, -1])
def test_nonpositive_sampling_ratio_raises(feats, sr):
    with pytest.raises(ValueError, match="sampling_ratio"):
        roi_align(feats, np.asarray(BOXES["interior"], np.float32), 2, sampling_ratio=sr)


def test_shape_validation(feats):
    boxes = np.asarray(BOXES["interior"], np.float32)
    with pytest.raises(ValueError, match=r"\[R, 4\]"):
        roi_align(feats, boxes[:, :3], 2)
    with pytest.raises(ValueError, match=r"\[R, 4\]"):
        roi_align(feats, boxes[None], 2)
    with pytest.raises(ValueError, match=r"\[H, W, D\]"):
        roi_align(feats[None], boxes, 2)
    with pytest.raises(ValueError, match="output_size"):
        roi_align(feats, boxes, 0)
    with pytest.raises(ValueError, match="output_size"):
        roi_align(feats, boxes, (1, 2, 3))


def test_no_boxes(feats):
    out = roi_align_jit(feats, np.zeros((0, 4), np.float32), (2, 3))
    assert out.shape == (0, 2, 3, D)


# --- optional: the real thing ----------------------------------------------------------------
def test_matches_torchvision_if_available(feats):
    torch = pytest.importorskip("torch")
    tv_ops = pytest.importorskip("torchvision.ops")
    boxes = np.asarray(sum(BOXES.values(), []), np.float32)
    x = torch.from_numpy(np.ascontiguousarray(feats.transpose(2, 0, 1)))[None]  # [1, D, H, W]
    # Normalised -> grid units via scaled boxes and spatial_scale=1 (x by W, y by H).
    scaled = boxes * np.asarray([W, H, W, H], np.float32)
    rois = torch.from_numpy(np.concatenate([np.zeros((len(boxes), 1), np.float32), scaled], 1))
    for output_size in [1, (2, 3), 7]:
        for sr in (1, 2, 3):
            for aligned in (True, False):
                want = tv_ops.roi_align(x, rois, output_size, 1.0, sr, aligned)
                want = want.numpy().transpose(0, 2, 3, 1)
                got = roi_align_jit(feats, boxes, output_size, sr, aligned)
                np.testing.assert_allclose(np.asarray(got), want, atol=1e-5, rtol=1e-5)

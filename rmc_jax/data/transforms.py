"""Image and box transforms that keep regions consistent with what the image shows.

All functions are NumPy, pure and deterministic given their ``rng``; boxes are normalised xyxy
of the image they accompany, before and after. A horizontal flip (``hflip``) swaps the patient's
sides (the patient's left is on the image's right), so it is only ever applied together with
``mirror_laterality`` on every caption and the report and ``mirror_side_ids`` on the region
attributes (see ``pipeline.prepare_example``); on its own it would teach the model that "left"
and "right" mean nothing.
"""

from __future__ import annotations

import warnings

import numpy as np
from PIL import Image

from rmc_jax.data import schema
from rmc_jax.data.captions import mirror_sides


def sanitize_boxes(boxes: np.ndarray, where: str = "") -> tuple[np.ndarray, np.ndarray]:
    """Clip boxes to [0, 1] and find the ones that keep an area.

    Returns (clipped boxes [R, 4], keep [R] bool). Clipping and dropping warn, naming ``where``.
    """
    boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
    clipped = np.clip(boxes, 0.0, 1.0)
    keep = (clipped[:, 2] > clipped[:, 0]) & (clipped[:, 3] > clipped[:, 1])
    moved = np.any(clipped != boxes, axis=1) & keep
    if moved.any():
        warnings.warn(f"{where}: clipped {int(moved.sum())} box(es) partly outside the image "
                      f"to [0, 1]: {boxes[moved].tolist()}", stacklevel=2)
    if (~keep).any():
        warnings.warn(f"{where}: dropped {int((~keep).sum())} zero-area or inverted box(es): "
                      f"{boxes[~keep].tolist()}", stacklevel=2)
    return clipped, keep


def _letterbox_geometry(height: int, width: int, size: int) -> tuple[int, int, int, int]:
    """(top, left, new_height, new_width) of an image of ``height x width`` letterboxed into
    a ``size x size`` square (the longer side resized to ``size``, centred)."""
    scale = size / max(height, width)
    new_h, new_w = max(1, round(height * scale)), max(1, round(width * scale))
    return (size - new_h) // 2, (size - new_w) // 2, new_h, new_w


def letterbox(image: np.ndarray, boxes: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Resize the longer side to ``size`` and pad the other to a square, centred.

    Args: image uint8 [H, W]; boxes [R, 4] normalised to that image.
    Returns: (float32 [size, size] in [0, 1], boxes normalised to the square).
    """
    h, w = image.shape
    top, left, new_h, new_w = _letterbox_geometry(h, w, size)
    resized = np.asarray(fit_long_side(image, size), np.float32) / 255.0
    out = np.zeros((size, size), np.float32)
    out[top:top + new_h, left:left + new_w] = resized
    boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
    fx, fy = new_w / size, new_h / size
    mapped = boxes * np.array([fx, fy, fx, fy], np.float32) + np.array(
        [left / size, top / size, left / size, top / size], np.float32)
    return out, mapped


def fit_long_side(image: np.ndarray, size: int) -> np.ndarray:
    """uint8 [H, W] -> uint8 [h, w] with the longer side ``size``: the resize ``letterbox``
    makes before padding (same geometry, bilinear), so an image prepared with it at the
    training resolution is letterboxed by a copy. Returned unchanged when already that size."""
    h, w = image.shape
    _, _, new_h, new_w = _letterbox_geometry(h, w, size)
    if (new_h, new_w) == (h, w):
        return image
    return np.asarray(Image.fromarray(image).resize((new_w, new_h), Image.BILINEAR), np.uint8)


def letterbox_content(height: int, width: int, size: int) -> np.ndarray:
    """[4] normalised xyxy of the part of the ``letterbox`` square that holds the image of
    ``height x width`` (the rest is padding): exact pixel bounds, whatever the pixels hold."""
    top, left, new_h, new_w = _letterbox_geometry(height, width, size)
    return np.array([left, top, left + new_w, top + new_h], np.float32) / size


def crop_keeping_regions(image: np.ndarray, boxes: np.ndarray, rng: np.random.Generator,
                         min_scale: float = 0.7) -> tuple[np.ndarray, np.ndarray]:
    """Random crop of at least ``min_scale`` of each side that contains every box whole.

    Args: image uint8 [H, W]; boxes [R, 4] normalised. Returns the crop and its boxes.
    """
    h, w = image.shape
    boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
    if len(boxes):
        union = np.concatenate([boxes[:, :2].min(0), boxes[:, 2:].max(0)])
    else:
        union = np.array([0.5, 0.5, 0.5, 0.5], np.float32)
    crop_w = rng.uniform(max(min_scale, union[2] - union[0]), 1.0)
    crop_h = rng.uniform(max(min_scale, union[3] - union[1]), 1.0)
    # The crop's left edge must lie in [union_x1 - crop_w, union_x0] intersected with [0, 1-crop_w].
    # (clamped: when the union fills the crop, rounding can put the low end a hair above the high)
    union = union.astype(np.float64)
    low_x, low_y = max(0.0, union[2] - crop_w), max(0.0, union[3] - crop_h)
    x0 = rng.uniform(low_x, max(min(union[0], 1.0 - crop_w), low_x))
    y0 = rng.uniform(low_y, max(min(union[1], 1.0 - crop_h), low_y))
    px0, py0 = int(np.floor(x0 * w)), int(np.floor(y0 * h))
    px1 = max(px0 + 1, min(w, int(np.ceil((x0 + crop_w) * w))))
    py1 = max(py0 + 1, min(h, int(np.ceil((y0 + crop_h) * h))))
    crop = image[py0:py1, px0:px1]
    scale = np.array([w / (px1 - px0), h / (py1 - py0)] * 2, np.float32)
    offset = np.array([px0 / w, py0 / h] * 2, np.float32)
    return crop, np.clip((boxes - offset) * scale, 0.0, 1.0)


def adjust_intensity(image: np.ndarray, rng: np.random.Generator, *, contrast: float = 0.2,
                     brightness: float = 0.1, gamma: float = 0.2,
                     noise: float = 0.02) -> np.ndarray:
    """Random contrast, brightness, gamma and Gaussian noise on a float image in [0, 1].

    Computed in float32 in place on one new array (two clips, one power, noise drawn as float32):
    it runs once per training example over every pixel, so each pass counts.
    """
    scale = np.float32(rng.uniform(1 - contrast, 1 + contrast))
    shift = np.float32(rng.uniform(-brightness, brightness))
    exponent = np.float32(rng.uniform(1 - gamma, 1 + gamma))
    out = np.multiply(image, scale, dtype=np.float32)
    out += shift
    np.clip(out, 0.0, 1.0, out=out)
    np.power(out, exponent, out=out)
    grain = rng.standard_normal(out.shape, dtype=np.float32)
    grain *= np.float32(noise)
    out += grain
    return np.clip(out, 0.0, 1.0, out=out)


# ---------------------------------------------------------------------------------------------
# Horizontal flip, with the text and attributes that must follow it
# ---------------------------------------------------------------------------------------------


def hflip(image: np.ndarray, boxes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mirror an image left-right and its boxes with it.

    Args: image [H, W]; boxes [R, 4] normalised xyxy. Returns (image [H, W] with its columns
    reversed, boxes [R, 4] as (1 - x1, y0, 1 - x0, y1)).
    """
    boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
    mirrored = np.stack([1.0 - boxes[:, 2], boxes[:, 1], 1.0 - boxes[:, 0], boxes[:, 3]], axis=1)
    return np.ascontiguousarray(image[:, ::-1]), mirrored.astype(np.float32)


_RIGHT, _LEFT = schema.side_id("right"), schema.side_id("left")

# A caption or report as said of the flipped image: every patient side swapped, with the
# vocabulary the hard negatives perturb (``rmc_jax.data.captions.mirror_sides``).
mirror_laterality = mirror_sides


def mirror_side_ids(side_ids: np.ndarray) -> np.ndarray:
    """Side ids [R] after a horizontal flip: right <-> left; bilateral and unknown (-1) kept."""
    side_ids = np.asarray(side_ids)
    return np.where(side_ids == _RIGHT, _LEFT,
                    np.where(side_ids == _LEFT, _RIGHT, side_ids)).astype(side_ids.dtype)

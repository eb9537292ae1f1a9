"""Image and box transforms that keep regions consistent with what the image shows.

All functions are NumPy, pure and deterministic given their ``rng``; boxes are normalised xyxy
of the image they accompany, before and after. There is deliberately no horizontal flip: in a
radiograph it swaps the patient's sides, and captions say "left" and "right".
"""

from __future__ import annotations

import warnings

import numpy as np
from PIL import Image


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


def letterbox(image: np.ndarray, boxes: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Resize the longer side to ``size`` and pad the other to a square, centred.

    Args: image uint8 [H, W]; boxes [R, 4] normalised to that image.
    Returns: (float32 [size, size] in [0, 1], boxes normalised to the square).
    """
    h, w = image.shape
    scale = size / max(h, w)
    new_h, new_w = max(1, round(h * scale)), max(1, round(w * scale))
    resized = np.asarray(Image.fromarray(image).resize((new_w, new_h), Image.BILINEAR),
                         np.float32) / 255.0
    out = np.zeros((size, size), np.float32)
    top, left = (size - new_h) // 2, (size - new_w) // 2
    out[top:top + new_h, left:left + new_w] = resized
    boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
    fx, fy = new_w / size, new_h / size
    mapped = boxes * np.array([fx, fy, fx, fy], np.float32) + np.array(
        [left / size, top / size, left / size, top / size], np.float32)
    return out, mapped


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
    x0 = rng.uniform(max(0.0, union[2] - crop_w), max(min(union[0], 1.0 - crop_w), 0.0))
    y0 = rng.uniform(max(0.0, union[3] - crop_h), max(min(union[1], 1.0 - crop_h), 0.0))
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
    """Random contrast, brightness, gamma and Gaussian noise on a float image in [0, 1]."""
    image = image * rng.uniform(1 - contrast, 1 + contrast) + rng.uniform(-brightness, brightness)
    image = np.clip(image, 0.0, 1.0) ** rng.uniform(1 - gamma, 1 + gamma)
    image = image + rng.normal(0.0, noise, image.shape).astype(np.float32)
    return np.clip(image, 0.0, 1.0).astype(np.float32)

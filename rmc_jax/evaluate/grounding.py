"""Zero-shot phrase grounding: patch x phrase similarity maps scored against boxes (the BioViL /
MS-CXR protocol).

For every phrase of an image (a region caption; regions of one image whose captions are the same
sentence form one phrase, their boxes one ground truth, the union) the similarity map is the
cosine similarity between the phrase embedding and each patch embedding of
``RegionCLIP.encode_patches`` ([B, h, w, E] . [E] -> [h, w]), upsampled bilinearly (half-pixel
centres, edges clamped) to the model's input, S x S pixels. Only the image's content takes part:
the letterbox padding (known exactly from the letterbox geometry, the pipeline's ``content``
box) is neither inside nor outside the box, never the map's maximum, never above a threshold
and not in the background statistics or the rescaling. A pixel is inside a box when its
centre is.

Per phrase:

* CNR, contrast-to-noise ratio: ``|mean_in - mean_out| / sqrt(var_in + var_out)`` with
  population variances of the map inside and outside the ground truth (the denominator is
  clamped to at least ``1e-6``); undefined (NaN, left out of the mean) when the boxes cover
  the whole image.
* mIoU: the IoU of ``{map > t}`` with the ground truth, averaged over the thresholds
  ``BIOVIL_THRESHOLDS`` = 0.1, 0.2, 0.3, 0.4, 0.5 applied to the raw cosine similarity (as in
  BioViL's MS-CXR evaluation). It depends on the model's similarity scale: a model whose
  cosines stay below 0.1 scores 0.
* mIoU rescaled: the same thresholds after rescaling each map linearly to [0, 1] (its minimum
  to 0, its maximum to 1): a scale-free variant.
* pointing: whether the map's maximum over the content (``peaks``: the first one, in
  row-major order, on ties) lies inside the ground truth.

``phrase_grounding`` reports the means over phrases: ``grounding/cnr``, ``grounding/miou``,
``grounding/miou_rescaled``, ``grounding/pointing_accuracy`` and ``grounding/phrases``.
"""

from __future__ import annotations

import numpy as np

BIOVIL_THRESHOLDS = (0.1, 0.2, 0.3, 0.4, 0.5)
_MIN_STD = 1e-6


def similarity_maps(patches: np.ndarray, phrases: np.ndarray) -> np.ndarray:
    """patches [B, h, w, E], phrases [B, R, E] (both L2-normalised) -> cosine maps [B, R, h, w]."""
    return np.einsum("bhwe,bre->brhw", patches, phrases)


def _interpolation_matrix(size_in: int, size_out: int) -> np.ndarray:
    """[size_out, size_in] bilinear weights with half-pixel centres, edges clamped (what
    ``jax.image.resize(..., 'bilinear')`` and PIL do when enlarging)."""
    coord = (np.arange(size_out) + 0.5) * size_in / size_out - 0.5
    coord = np.clip(coord, 0.0, size_in - 1)
    low = np.floor(coord).astype(int)
    high = np.minimum(low + 1, size_in - 1)
    frac = coord - low
    weights = np.zeros((size_out, size_in))
    np.add.at(weights, (np.arange(size_out), low), 1.0 - frac)
    np.add.at(weights, (np.arange(size_out), high), frac)
    return weights


def upsample(maps: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Bilinear upsampling of maps [..., h, w] -> [..., H, W] (float64)."""
    h, w = maps.shape[-2:]
    rows = _interpolation_matrix(h, size[0])           # [H, h]
    cols = _interpolation_matrix(w, size[1])           # [W, w]
    return np.einsum("Hh,...hw,Ww->...HW", rows, np.asarray(maps, np.float64), cols)


def box_masks(boxes: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Normalised xyxy boxes [..., 4] -> bool masks [..., H, W] of the pixels whose centre is
    inside. A box too small to contain any pixel centre gets the pixel holding its centre."""
    boxes = np.asarray(boxes, np.float64)
    height, width = size
    ys = (np.arange(height) + 0.5) / height
    xs = (np.arange(width) + 0.5) / width
    inside_y = (ys >= boxes[..., 1:2]) & (ys < boxes[..., 3:4])   # [..., H]
    inside_x = (xs >= boxes[..., 0:1]) & (xs < boxes[..., 2:3])   # [..., W]
    masks = inside_y[..., :, None] & inside_x[..., None, :]
    empty = ~masks.any(axis=(-2, -1))
    if empty.any():
        cy = np.clip(((boxes[..., 1] + boxes[..., 3]) / 2 * height).astype(int), 0, height - 1)
        cx = np.clip(((boxes[..., 0] + boxes[..., 2]) / 2 * width).astype(int), 0, width - 1)
        index = np.nonzero(empty)
        masks[index + (cy[index], cx[index])] = True
    return masks


def grounding_scores(maps: np.ndarray, inside: np.ndarray, content: np.ndarray | None = None,
                     thresholds=BIOVIL_THRESHOLDS) -> dict[str, np.ndarray]:
    """Per-map CNR, mIoU (raw and rescaled) and pointing against a ground-truth mask.

    Args:
      maps: [P, H, W] similarity maps at pixel resolution.
      inside: [P, H, W] bool, the ground truth (union of the phrase's boxes).
      content: [P, H, W] bool, the pixels that belong to the image (None: all).
      thresholds: the IoU thresholds, on the raw map and on the rescaled map.
    Returns {'cnr', 'miou', 'miou_rescaled', 'pointing'}, each [P] float64 (CNR NaN where the
    ground truth covers the whole content).
    """
    maps = np.asarray(maps, np.float64)
    content = np.ones(maps.shape, bool) if content is None else np.asarray(content, bool)
    inside = np.asarray(inside, bool) & content
    outside = content & ~inside
    n_in, n_out = inside.sum((1, 2)), outside.sum((1, 2))

    def moments(mask, n):
        n = np.maximum(n, 1)
        mean = np.where(mask, maps, 0.0).sum((1, 2)) / n
        var = np.where(mask, (maps - mean[:, None, None]) ** 2, 0.0).sum((1, 2)) / n
        return mean, var

    mean_in, var_in = moments(inside, n_in)
    mean_out, var_out = moments(outside, n_out)
    cnr = np.abs(mean_in - mean_out) / np.maximum(np.sqrt(var_in + var_out), _MIN_STD)
    cnr = np.where((n_in > 0) & (n_out > 0), cnr, np.nan)

    low = np.where(content, maps, np.inf).min((1, 2))[:, None, None]
    high = np.where(content, maps, -np.inf).max((1, 2))[:, None, None]
    rescaled = np.where(high > low, (maps - low) / np.where(high > low, high - low, 1.0), 0.0)

    def mean_iou(values):
        ious = []
        for t in thresholds:
            predicted = (values > t) & content
            union = (predicted | inside).sum((1, 2))
            ious.append((predicted & inside).sum((1, 2)) / np.maximum(union, 1))
        return np.mean(ious, axis=0)

    peak = peaks(maps, content)
    pointing = inside.reshape(len(maps), -1)[np.arange(len(maps)), peak].astype(np.float64)
    return {"cnr": cnr, "miou": mean_iou(maps), "miou_rescaled": mean_iou(rescaled),
            "pointing": pointing}


def peaks(maps: np.ndarray, content: np.ndarray) -> np.ndarray:
    """maps [P, H, W], content [P, H, W] bool -> [P] flat index of each map's maximum over
    its content pixels (the first one, in row-major order, on ties)."""
    flat = np.where(content, maps, -np.inf).reshape(len(maps), -1)
    return flat.argmax(1)


def phrases(data) -> list[tuple[int, list[int]]]:
    """The phrases of an embedded split: (example index, its region slots sharing one caption)."""
    out = []
    for n in range(len(data["box_mask"])):
        groups: dict[int, list[int]] = {}
        for r in np.flatnonzero(data["box_mask"][n]):
            groups.setdefault(int(data["caption_hash"][n, r]), []).append(int(r))
        out.extend((n, slots) for slots in groups.values())
    return out


def phrase_grounding(data, image_size: int, *, prefix: str = "grounding",
                     thresholds=BIOVIL_THRESHOLDS, chunk: int = 64, raw: dict | None = None
                     ) -> dict:
    """Grounding metrics of every phrase of an embedded split (means over phrases).

    ``data`` needs ``patch_maps`` [N, R, h, w] (cosine of each region slot's caption with each
    patch), ``boxes`` [N, R, 4], ``box_mask`` [N, R], ``caption_hash`` [N, R] and ``content``
    [N, 4] (normalised xyxy of the image inside the letterbox). ``raw``, when given, receives
    the per-phrase scores under ``raw['grounding'][prefix]``.
    """
    items = phrases(data)
    if not items:
        return {}
    size = (image_size, image_size)
    scores: dict[str, list] = {"cnr": [], "miou": [], "miou_rescaled": [], "pointing": []}
    for start in range(0, len(items), chunk):
        part = items[start:start + chunk]
        maps = upsample(np.stack([data["patch_maps"][n, slots[0]] for n, slots in part]), size)
        inside = np.stack([box_masks(data["boxes"][n, slots], size).any(0) for n, slots in part])
        content = box_masks(np.stack([data["content"][n] for n, _ in part]), size)
        for name, values in grounding_scores(maps, inside, content, thresholds).items():
            scores[name].append(values)
    scores = {name: np.concatenate(values) for name, values in scores.items()}
    if raw is not None:
        raw.setdefault("grounding", {})[prefix] = dict(scores, phrases=items)
    cnr = scores["cnr"][np.isfinite(scores["cnr"])]
    return {f"{prefix}/cnr": float(cnr.mean()) if len(cnr) else float("nan"),
            f"{prefix}/miou": float(scores["miou"].mean()),
            f"{prefix}/miou_rescaled": float(scores["miou_rescaled"].mean()),
            f"{prefix}/pointing_accuracy": float(scores["pointing"].mean()),
            f"{prefix}/phrases": float(len(items))}

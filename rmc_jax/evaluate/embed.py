"""Embed an evaluation split with the model's public ``encode_*`` functions (no training code).

One pass over the batches gives, per example: the global image embedding, the report
embedding, region embeddings for its boxes, the caption and hard-negative embeddings, and the
labels and region attributes that the metrics need.
"""

from __future__ import annotations

import functools
import hashlib

import jax
import jax.numpy as jnp
import numpy as np

from rmc_jax.models import RegionCLIP


class Encoders:
    """Jitted encoders of one model and its params."""

    def __init__(self, model: RegionCLIP, params):
        self.params = params
        apply = functools.partial(model.apply, {"params": params})

        def images(images, boxes, box_mask):
            image_emb, grid = apply(images, method=RegionCLIP.image_features)
            regions = apply(grid, boxes, box_mask, method=RegionCLIP.regions_from_patches)
            return image_emb, regions

        self.images = jax.jit(images)
        self.text = jax.jit(lambda ids, mask: apply(ids, mask, method=RegionCLIP.encode_text))
        self.image_only = jax.jit(lambda images: apply(images, method=RegionCLIP.encode_image))
        self.temperature = float(apply(method=RegionCLIP.temperature))

    def texts(self, ids: np.ndarray, mask: np.ndarray, batch: int = 256) -> np.ndarray:
        """[N, L] tokens -> [N, E] embeddings, in fixed-size chunks (one compiled shape)."""
        n = len(ids)
        if n == 0:
            return np.zeros((0, 0), np.float32)
        pad = (-n) % batch
        ids = np.concatenate([ids, np.zeros((pad,) + ids.shape[1:], ids.dtype)])
        mask = np.concatenate([mask, np.ones((pad,) + mask.shape[1:], mask.dtype)])
        out = [np.asarray(self.text(ids[i:i + batch], mask[i:i + batch]))
               for i in range(0, len(ids), batch)]
        return np.concatenate(out)[:n]


def _row_keys(ids: np.ndarray) -> np.ndarray:
    """Stable key per token row: equal texts get equal keys."""
    return np.array([int.from_bytes(hashlib.blake2b(row.tobytes(), digest_size=8).digest(),
                                    "little") for row in ids], np.uint64)


def embed_batches(encoders: Encoders, batches) -> dict[str, np.ndarray]:
    """Concatenate per-example embeddings and annotations over an iterable of batches."""
    parts: dict[str, list] = {}
    for batch in batches:
        image_emb, regions = encoders.images(jnp.asarray(batch["image"]),
                                             jnp.asarray(batch["boxes"]),
                                             jnp.asarray(batch["box_mask"]))
        b, r, k, length = batch["neg_ids"].shape
        captions = encoders.texts(batch["caption_ids"].reshape(b * r, -1),
                                  batch["caption_mask"].reshape(b * r, -1))
        negatives = encoders.texts(batch["neg_ids"].reshape(b * r * k, length),
                                   batch["neg_mask"].reshape(b * r * k, length))
        rows = {
            "image": np.asarray(image_emb), "regions": np.asarray(regions),
            "report": encoders.texts(batch["text_ids"], batch["text_mask"]),
            "report_key": _row_keys(batch["text_ids"]),
            "captions": captions.reshape(b, r, -1),
            "negatives": negatives.reshape(b, r, k, -1),
        }
        for name in ("box_mask", "boxes", "neg_valid", "neg_kind", "labels", "label_mask",
                     "caption_hash", "finding_ids", "side_ids", "zone_ids", "size_ids", "image_px"):
            if name == "image_px":
                rows[name] = batch["image"]
            else:
                rows[name] = batch[name]
        for name, value in rows.items():
            parts.setdefault(name, []).append(value)
    if not parts:
        raise ValueError("the evaluation split yielded no batch: it has fewer examples than "
                         "one batch")
    return {name: np.concatenate(values) for name, values in parts.items()}

"""Embed an evaluation split with the model's public ``encode_*`` functions (no training code).

One pass over the batches gives, per example: the global image embedding, the report
embedding, region embeddings for its boxes, the caption and hard-negative embeddings, and the
labels and region attributes that the metrics need; optionally

* ``regions_crop`` [N, R, E]: the crop baseline, each region embedded by the image tower on its
  box cropped from the image and resized to the model's input (bilinear RoIAlign sampling, the
  box stretched to the square, as the RegionCLIP teacher sees regions), so that a model whose
  region head was never trained (``global``, ``medclip``) still gets region scores;
* ``patch_maps`` [N, R, h, w]: each region caption's cosine similarity with every patch
  embedding of ``encode_patches`` (phrase grounding).

Every example also keeps the pipeline's annotations (``ANNOTATIONS``), among them ``content``
[N, 4], the part of the model's input that holds the image (not letterbox padding), and
``has_report`` [N], whether there was report text to embed.
"""

from __future__ import annotations

import functools
import hashlib

import jax
import jax.numpy as jnp
import numpy as np

from rmc_jax.evaluate import grounding
from rmc_jax.models import RegionCLIP, roi_align


class Encoders:
    """Jitted encoders of one model and its params; every output is float32 and normalised."""

    def __init__(self, model: RegionCLIP, params, chunk: int = 32):
        params = jax.device_put(params)  # once, not at every call
        self.params = params
        self.embed_dim = int(model.embed_dim)
        self.image_size = int(model.vision.image_size)
        self.chunk = chunk
        size = self.image_size

        def images(params, images, boxes, box_mask):
            variables = {"params": params}
            image_emb, grid = model.apply(variables, images, method=RegionCLIP.image_features)
            regions = model.apply(variables, grid, boxes, box_mask,
                                  method=RegionCLIP.regions_from_patches)
            return image_emb, regions

        def images_and_patches(params, images, boxes, box_mask):
            variables = {"params": params}
            image_emb, grid = model.apply(variables, images, method=RegionCLIP.image_features)
            regions = model.apply(variables, grid, boxes, box_mask,
                                  method=RegionCLIP.regions_from_patches)
            return image_emb, regions, model.apply(variables, grid,
                                                   method=RegionCLIP.patches_from_grid)

        def crops(params, images, boxes):
            """images [n, S, S, C], boxes [n, 4] -> [n, E]: one crop per image."""
            crop = lambda image, box: roi_align(  # noqa: E731
                image, box[None], size, sampling_ratio=2, aligned=True)[0]
            return model.apply({"params": params}, jax.vmap(crop)(images, boxes),
                               method=RegionCLIP.encode_image)

        def text(params, ids, mask):
            return model.apply({"params": params}, ids, mask, method=RegionCLIP.encode_text)

        # Params are arguments (not constants folded into each program).
        self.images = functools.partial(jax.jit(images), params)
        self.images_and_patches = functools.partial(jax.jit(images_and_patches), params)
        self.crop_fn = functools.partial(jax.jit(crops), params)
        self.text = functools.partial(jax.jit(text), params)
        self.image_only = functools.partial(jax.jit(
            lambda params, images: model.apply({"params": params}, images,
                                               method=RegionCLIP.encode_image)), params)
        self.temperature = float(model.apply({"params": params},
                                             method=RegionCLIP.temperature))

    def texts(self, ids: np.ndarray, mask: np.ndarray, batch: int = 256) -> np.ndarray:
        """[N, L] tokens -> [N, E] embeddings, in chunks of ``batch`` rows, or one chunk of 64
        when at most 64 rows are given (two compiled shapes per length, little padding)."""
        n = len(ids)
        if n == 0:
            return np.zeros((0, self.embed_dim), np.float32)
        batch = min(batch, 64) if n <= 64 else batch
        pad = (-n) % batch
        ids = np.concatenate([ids, np.zeros((pad,) + ids.shape[1:], ids.dtype)])
        mask = np.concatenate([mask, np.ones((pad,) + mask.shape[1:], mask.dtype)])
        out = [np.asarray(self.text(ids[i:i + batch], mask[i:i + batch]))
               for i in range(0, len(ids), batch)]
        return np.concatenate(out)[:n]

    def texts_where(self, ids: np.ndarray, mask: np.ndarray, valid: np.ndarray) -> np.ndarray:
        """ids, mask [..., L], valid [...] bool -> [..., E]: only valid rows are encoded, the
        others are zeros (padding slots cost nothing)."""
        out = np.zeros(valid.shape + (self.embed_dim,), np.float32)
        index = np.nonzero(valid)
        if len(index[0]):
            out[index] = self.texts(ids[index], mask[index])
        return out

    def crops(self, images: np.ndarray, boxes: np.ndarray, valid: np.ndarray) -> np.ndarray:
        """The crop baseline: images [B, S, S, C], boxes [B, R, 4], valid [B, R] -> [B, R, E],
        each valid box cropped, resized to S x S and embedded by the image tower (zeros
        elsewhere). Crops run in fixed chunks (one compiled shape)."""
        out = np.zeros(valid.shape + (self.embed_dim,), np.float32)
        b_index, r_index = np.nonzero(valid)
        for start in range(0, len(b_index), self.chunk):
            bi, ri = b_index[start:start + self.chunk], r_index[start:start + self.chunk]
            pad = self.chunk - len(bi)
            take_b = np.concatenate([bi, np.full(pad, bi[0])])
            take_r = np.concatenate([ri, np.full(pad, ri[0])])
            emb = np.asarray(self.crop_fn(jnp.asarray(images[take_b]),
                                          jnp.asarray(boxes[take_b, take_r])))
            out[bi, ri] = emb[:len(bi)]
        return out


def report_keys(ids: np.ndarray) -> np.ndarray:
    """Stable key per token row: equal texts get equal keys."""
    return np.array([int.from_bytes(hashlib.blake2b(row.tobytes(), digest_size=8).digest(),
                                    "little") for row in ids], np.uint64)


ANNOTATIONS = ("box_mask", "boxes", "neg_valid", "neg_kind", "labels", "label_mask",
               "caption_hash", "finding_ids", "side_ids", "zone_ids", "size_ids", "content",
               "has_report", "index", "regions_without_caption", "regions_cut")


def embed_batches(encoders: Encoders, batches, *, crops: bool = False, patches: bool = False,
                  keep_samples: int = 8
                  ) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Concatenate per-example embeddings and annotations over an iterable of batches.

    Returns (data, samples): ``data`` maps names to [N, ...] arrays (see the module docstring
    for ``regions_crop`` and ``patch_maps``, computed when ``crops`` / ``patches`` is set);
    ``samples`` holds the first ``keep_samples`` examples' ``image`` [K, S, S, C] and
    ``caption_ids`` [K, R, L] for the report's figures.
    """
    parts: dict[str, list] = {}
    samples: dict[str, list] = {"image": [], "caption_ids": []}
    kept = 0
    for batch in batches:
        images = jnp.asarray(batch["image"])
        box_mask = np.asarray(batch["box_mask"], bool)
        if patches:
            image_emb, regions, patch_emb = encoders.images_and_patches(
                images, jnp.asarray(batch["boxes"]), jnp.asarray(box_mask))
        else:
            image_emb, regions = encoders.images(images, jnp.asarray(batch["boxes"]),
                                                 jnp.asarray(box_mask))
        captions = encoders.texts_where(batch["caption_ids"], batch["caption_mask"], box_mask)
        negative_valid = np.asarray(batch["neg_valid"], bool) & box_mask[..., None]
        rows = {
            "image": np.asarray(image_emb), "regions": np.asarray(regions),
            "report": encoders.texts(batch["text_ids"], batch["text_mask"]),
            "report_key": report_keys(batch["text_ids"]),
            "captions": captions,
            "negatives": encoders.texts_where(batch["neg_ids"], batch["neg_mask"],
                                              negative_valid),
        }
        if crops:
            rows["regions_crop"] = encoders.crops(batch["image"], batch["boxes"], box_mask)
        if patches:
            rows["patch_maps"] = grounding.similarity_maps(np.asarray(patch_emb), captions)
        for name in ANNOTATIONS:
            rows[name] = batch[name]
        for name, value in rows.items():
            parts.setdefault(name, []).append(value)
        if kept < keep_samples or not samples["image"]:
            take = max(keep_samples - kept, 0)
            samples["image"].append(batch["image"][:take])
            samples["caption_ids"].append(batch["caption_ids"][:take])
            kept += len(batch["image"][:take])
    if not parts:
        raise ValueError("no example to evaluate: the split is empty (or every example of it "
                         "was unreadable)")
    return ({name: np.concatenate(values) for name, values in parts.items()},
            {name: np.concatenate(values) for name, values in samples.items()})

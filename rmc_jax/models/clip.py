"""Region-aware two-tower CLIP: image, region, patch and text embeddings in one shared space.

    images -> ViT -+-> CLS ---------------------------------> image_proj --> image    [B, E]
                   +-> patch grid -+-> RegionHead(boxes) ---> region_proj -> regions  [B, R, E]
                                   +-> RegionHead.transform -> region_proj -> patches  [B, h, w, E]
    tokens -> TextTransformer -> pooled -------------------> text_proj ---> text     [N, E]

Every embedding is L2-normalised in float32 (what ``rmc_jax.losses`` expects). The model is a
pure function of its params: ``model.apply({'params': p}, x, method=RegionCLIP.encode_image)``.
Its hyperparameters are one ``ModelConfig`` (``rmc_jax.models.config``); ``build_model`` also
reads any mapping with the same keys (e.g. an ``ml_collections.ConfigDict``).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from rmc_jax.models.config import ModelConfig, model_config
from rmc_jax.models.layers import Dense, canonical_dtype, exact_gelu
from rmc_jax.models.roi import roi_align
from rmc_jax.models.text import TextTransformer
from rmc_jax.models.vit import VisionTransformer

__all__ = [
    "EMBEDDING_NORMS",
    "RegionHead",
    "RegionCLIP",
    "build_model",
    "example_inputs",
    "init_params",
    "l2_normalize",
]

_EPS = 1e-6
# Collection into which the model sows each embedding's norm before normalisation ('image' [B],
# 'regions' [B, R], 'text' [N]) when ``apply`` is called with it mutable: a training diagnostic.
EMBEDDING_NORMS = "embedding_norms"


# ---------------------------------------------------------------------------------------------
# Modules
# ---------------------------------------------------------------------------------------------


def l2_normalize(x: jax.Array, axis: int = -1, eps: float = _EPS) -> jax.Array:
    """x / max(||x||, eps) in float32. Zero vectors stay exactly zero, with finite gradients."""
    x = x.astype(jnp.float32)
    sq = jnp.sum(x * x, axis=axis, keepdims=True)
    return x * jax.lax.rsqrt(jnp.maximum(sq, eps * eps))


class _PostPool(nn.Module):
    """Region post-pooling layers: LayerNorm -> x + gelu(Dense_{D->D}(x)). [..., D] -> [..., D]."""

    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        x = nn.LayerNorm(dtype=self.dtype, param_dtype=self.param_dtype, name="norm")(x)
        h = Dense(x.shape[-1], dtype=self.dtype, param_dtype=self.param_dtype, name="fc")(x)
        return x + exact_gelu(h)


class _MlpProjection(nn.Module):
    """fc1 (D -> hidden) -> exact GELU -> fc2 (hidden -> E). [..., D] -> [..., E]."""

    hidden_dim: int
    features: int
    use_bias: bool = False

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        dense = dict(use_bias=self.use_bias, dtype=jnp.float32, param_dtype=jnp.float32)
        h = exact_gelu(nn.Dense(self.hidden_dim, name="fc1", **dense)(x))
        return nn.Dense(self.features, name="fc2", **dense)(h)


class RegionHead(nn.Module):
    """Region features from a patch grid.

    patch_grid [B, h, w, D], boxes [B, R, 4] normalised xyxy, box_mask [B, R] bool
    -> [B, R, D]: aligned RoIAlign [B, R, oh, ow, D] -> mean over bins -> post-pooling layers.
    Masked regions are exact zeros; their box coordinates are replaced by the full image before
    pooling, so garbage (even NaN) in padded boxes affects nothing, gradients included.
    Pooling runs in float32; the post-pooling layers in ``dtype``.
    """

    output_size: int | tuple[int, int] = 7
    sampling_ratio: int = 2
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    def setup(self):
        self.post = _PostPool(dtype=self.dtype, param_dtype=self.param_dtype)

    def pool(self, patch_grid: jax.Array, boxes: jax.Array, box_mask: jax.Array) -> jax.Array:
        """Mean RoIAlign feature per box, float32 [B, R, D] (masked boxes pool the full grid)."""
        full = jnp.asarray([0.0, 0.0, 1.0, 1.0], jnp.float32)
        boxes = jnp.where(box_mask.astype(bool)[..., None], boxes.astype(jnp.float32), full)
        align = lambda f, b: roi_align(  # noqa: E731
            f, b, self.output_size, sampling_ratio=self.sampling_ratio, aligned=True
        )
        pooled = jax.vmap(align)(patch_grid.astype(jnp.float32), boxes)  # [B, R, oh, ow, D]
        return pooled.mean(axis=(2, 3))

    def transform(self, features: jax.Array) -> jax.Array:
        """Post-pooling layers alone, [..., D] -> [..., D] (a patch token = a 1x1 region)."""
        return self.post(features)

    def __call__(self, patch_grid: jax.Array, boxes: jax.Array, box_mask: jax.Array) -> jax.Array:
        feats = self.transform(self.pool(patch_grid, boxes, box_mask))
        return jnp.where(box_mask.astype(bool)[..., None], feats, jnp.zeros_like(feats))


class RegionCLIP(nn.Module):
    """Two towers + region head + projections + learnable temperature, as ``config`` says.

    Params: image_encoder, text_encoder, region_head, image_proj, region_proj, text_proj,
    log_inv_temperature (= log(1/tau), clamped in the forward to 1/tau <= max_inv_temperature)
    and, with ``learn_logit_bias``, logit_bias (the sigmoid loss's bias).
    Projections run in float32 (tiny, and they feed the normalisation); by default they have
    no bias (see ``ModelConfig`` for the imported variants). Every field of the config is also
    readable on the model (``model.vision``, ``model.embed_dim``, ...).
    """

    config: ModelConfig = ModelConfig()

    @classmethod
    def from_config(cls, cfg: Any = None) -> RegionCLIP:
        """Model from a ModelConfig or any mapping / ConfigDict with the same keys."""
        return cls(model_config(cfg))

    def setup(self):
        c = self.config
        self.image_encoder = VisionTransformer(c.vision)
        self.text_encoder = TextTransformer(c.text)
        self.region_head = RegionHead(
            output_size=c.roi_output_size, sampling_ratio=c.roi_sampling_ratio,
            dtype=canonical_dtype(c.vision.dtype),
        )
        proj = dict(dtype=jnp.float32, param_dtype=jnp.float32)
        self.image_proj = nn.Dense(c.embed_dim, use_bias=c.image_proj_bias, **proj)
        self.region_proj = nn.Dense(c.embed_dim, use_bias=False, **proj)
        if c.text_proj_hidden:
            self.text_proj = _MlpProjection(c.text_proj_hidden, c.embed_dim,
                                            use_bias=c.text_proj_bias)
        else:
            self.text_proj = nn.Dense(c.embed_dim, use_bias=c.text_proj_bias, **proj)
        init = math.log(1.0 / c.init_temperature)
        self.log_inv_temperature = self.param(
            "log_inv_temperature", lambda _: jnp.asarray(init, jnp.float32)
        )
        if c.learn_logit_bias:
            self.bias = self.param(
                "logit_bias", lambda _: jnp.asarray(c.init_logit_bias, jnp.float32))

    def _normalised(self, name: str, x: jax.Array) -> jax.Array:
        """``l2_normalize(x)``; with the EMBEDDING_NORMS collection mutable, ``||x||`` is sown
        into it under ``name`` as well (it costs nothing otherwise)."""
        if self.is_mutable_collection(EMBEDDING_NORMS):
            self.sow(EMBEDDING_NORMS, name, jnp.linalg.norm(x, axis=-1))
        return l2_normalize(x)

    def temperature(self) -> jax.Array:
        """tau = 1 / min(exp(log_inv_temperature), max_inv_temperature), float32 scalar.

        Exactly 1/max_inv_temperature when clamped (zero gradient); otherwise the gradient flows
        to the param.
        """
        log_max = math.log(self.config.max_inv_temperature)
        p = self.log_inv_temperature.astype(jnp.float32)
        inv = jnp.where(
            p >= log_max,
            jnp.float32(self.config.max_inv_temperature),
            jnp.exp(jnp.minimum(p, log_max)),  # inner min keeps exp (and its gradient) finite
        )
        return 1.0 / inv

    def logit_bias(self) -> jax.Array:
        """The learnt bias of the image-report logits (``learn_logit_bias``), float32 scalar."""
        if not self.config.learn_logit_bias:
            raise ValueError("this model has no logit bias: build it with "
                             "ModelConfig(learn_logit_bias=True)")
        return self.bias.astype(jnp.float32)

    def image_features(self, images: jax.Array) -> tuple[jax.Array, jax.Array]:
        """One ViT pass for the training step.

        images [B, H, W, C] -> (image_emb [B, E] float32 normalised, patch_grid [B, h, w, D]).
        """
        cls, grid = self.image_encoder(images)
        return self._normalised("image", self.image_proj(cls.astype(jnp.float32))), grid

    def encode_image(self, images: jax.Array) -> jax.Array:
        """images [B, H, W, C] -> normalised global embeddings [B, E] (from the CLS token)."""
        return self.image_features(images)[0]

    def regions_from_patches(
        self, patch_grid: jax.Array, boxes: jax.Array, box_mask: jax.Array
    ) -> jax.Array:
        """patch_grid [B, h, w, D], boxes [B, R, 4], box_mask [B, R] -> [B, R, E], 0 if masked."""
        feats = self.region_head(patch_grid, boxes, box_mask)
        emb = self._normalised("regions", self.region_proj(feats.astype(jnp.float32)))
        return jnp.where(box_mask.astype(bool)[..., None], emb, 0.0)

    def encode_regions(self, images: jax.Array, boxes: jax.Array, box_mask: jax.Array) -> jax.Array:
        """images [B, H, W, C], boxes [B, R, 4] normalised xyxy, box_mask [B, R] -> [B, R, E]."""
        return self.regions_from_patches(self.image_encoder(images)[1], boxes, box_mask)

    def patches_from_grid(self, patch_grid: jax.Array) -> jax.Array:
        """patch_grid [B, h, w, D] -> normalised per-patch embeddings [B, h, w, E]."""
        feats = self.region_head.transform(patch_grid.astype(jnp.float32))
        return l2_normalize(self.region_proj(feats.astype(jnp.float32)))

    def encode_patches(self, images: jax.Array) -> jax.Array:
        """images [B, H, W, C] -> dense patch map [B, h, w, E] for phrase grounding.

        Each patch token goes through the region head's post-pooling layers and the region
        projection, i.e. it is embedded like a region covering exactly that patch cell.
        """
        return self.patches_from_grid(self.image_encoder(images)[1])

    def encode_text(self, tokens: jax.Array, attention_mask: jax.Array) -> jax.Array:
        """tokens [N, L] int32, attention_mask [N, L] (1 = real) -> normalised [N, E]."""
        pooled, _ = self.text_encoder(tokens, attention_mask)
        return self._normalised("text", self.text_proj(pooled.astype(jnp.float32)))

    def __call__(self, images, boxes, box_mask, tokens, attention_mask) -> dict[str, jax.Array]:
        """All embeddings at once (used by ``init``): {image [B,E], regions [B,R,E], text [N,E],
        temperature []}."""
        image, grid = self.image_features(images)
        return {
            "image": image,
            "regions": self.regions_from_patches(grid, boxes, box_mask),
            "text": self.encode_text(tokens, attention_mask),
            "temperature": self.temperature(),
        }


def _config_field(name: str) -> property:
    return property(lambda self: getattr(self.config, name), doc=f"``config.{name}``")


for _field in dataclasses.fields(ModelConfig):  # model.vision, model.embed_dim, ...
    setattr(RegionCLIP, _field.name, _config_field(_field.name))


# ---------------------------------------------------------------------------------------------
# Construction helpers
# ---------------------------------------------------------------------------------------------


def build_model(cfg: Any = None) -> RegionCLIP:
    """RegionCLIP from a ModelConfig, a mapping / ConfigDict with its keys, or None (defaults)."""
    return RegionCLIP.from_config(cfg)


def example_inputs(
    model: RegionCLIP, batch_size: int = 1, num_regions: int = 1, num_texts: int | None = None
) -> dict[str, jax.Array]:
    """Dummy inputs with the shapes ``model.init`` needs (image size and max_len from config)."""
    v, t = model.vision, model.text
    n = batch_size if num_texts is None else num_texts
    return {
        "images": jnp.zeros((batch_size, v.image_size, v.image_size, v.channels), jnp.float32),
        "boxes": jnp.tile(jnp.asarray([0.0, 0.0, 1.0, 1.0]), (batch_size, num_regions, 1)),
        "box_mask": jnp.ones((batch_size, num_regions), bool),
        "tokens": jnp.zeros((n, t.max_len), jnp.int32),
        "attention_mask": jnp.ones((n, t.max_len), jnp.int32),
    }


def init_params(model: RegionCLIP, key: jax.Array) -> dict[str, Any]:
    """The model's ``params`` collection (float32), initialised from ``key`` on dummy inputs."""
    return jax.jit(model.init)(key, **example_inputs(model))["params"]

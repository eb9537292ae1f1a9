"""Region-aware two-tower CLIP: image, region, patch and text embeddings in one shared space.

    images -> ViT -+-> CLS ---------------------------------> image_proj --> image    [B, E]
                   +-> patch grid -+-> RegionHead(boxes) ---> region_proj -> regions  [B, R, E]
                                   +-> RegionHead.transform -> region_proj -> patches  [B, h, w, E]
    tokens -> TextTransformer -> pooled -------------------> text_proj ---> text     [N, E]

Every embedding is L2-normalised in float32 (what ``rmc_jax.losses`` expects). The model is a
pure function of its params: ``model.apply({'params': p}, x, method=RegionCLIP.encode_image)``.
Configs are small frozen dataclasses; ``build_model`` also reads any mapping with the same keys
(e.g. an ``ml_collections.ConfigDict``), with ``dtype`` given as a string.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from rmc_jax.models.layers import (REMAT_POLICIES, canonical_dtype, check_architecture,
                                    Dense, exact_gelu)
from rmc_jax.models.roi import roi_align
from rmc_jax.models.text import POOLINGS, TextTransformer
from rmc_jax.models.vit import VisionTransformer

__all__ = [
    "VisionConfig",
    "TextConfig",
    "ModelConfig",
    "RegionHead",
    "RegionCLIP",
    "build_model",
    "model_config",
    "example_inputs",
    "init_params",
    "l2_normalize",
]

_EPS = 1e-6


# ---------------------------------------------------------------------------------------------
# Configs
# ---------------------------------------------------------------------------------------------


def _check_tower(name: str, width: int, num_heads: int, depth: int, dtype: str, remat: str):
    if width % num_heads:
        raise ValueError(f"{name}: width {width} is not divisible by num_heads {num_heads}")
    if depth < 1:
        raise ValueError(f"{name}: depth must be >= 1; got {depth}")
    canonical_dtype(dtype)
    if remat not in REMAT_POLICIES:
        raise ValueError(f"{name}: remat={remat!r}; expected one of {sorted(REMAT_POLICIES)}")


@dataclasses.dataclass(frozen=True)
class VisionConfig:
    """Image tower. image_size/channels fix the position-embedding table and dummy init inputs.

    The fields after ``scan_layers`` describe the architecture of an imported model (see
    ``VisionTransformer``); their defaults are this library's own ViT. ``pixel_mean`` /
    ``pixel_std`` (one value per channel) turn on the model-side input normalisation, which maps
    the pipeline's images, normalised with ``input_mean`` / ``input_std``, to what the model was
    trained on.
    """

    image_size: int = 128
    channels: int = 1
    patch_size: int = 16
    width: int = 192
    depth: int = 4
    num_heads: int = 3
    mlp_ratio: float = 4.0
    dtype: str = "float32"
    remat: str = "none"
    scan_layers: bool = False
    mlp_dim: int = 0
    activation: str = "gelu"
    norm_position: str = "pre"
    layer_norm_eps: float = 1e-6
    patch_bias: bool = True
    pre_norm: bool = False
    final_norm: bool = True
    class_token: bool = True
    pooling: str = "cls"
    pixel_mean: tuple[float, ...] = ()
    pixel_std: tuple[float, ...] = ()
    input_mean: float = 0.5
    input_std: float = 0.25

    def __post_init__(self):
        _check_tower("vision", self.width, self.num_heads, self.depth, self.dtype, self.remat)
        check_architecture("vision", self.activation, self.norm_position)
        if self.image_size % self.patch_size:
            raise ValueError(
                f"vision: image_size {self.image_size} is not divisible by patch_size "
                f"{self.patch_size}"
            )
        if self.pooling not in ("cls", "mean") or (self.pooling == "cls" and not self.class_token):
            raise ValueError(f"vision: pooling={self.pooling!r} with class_token="
                             f"{self.class_token}; expected 'cls' (needs a class token) or 'mean'")
        if len(self.pixel_mean) != len(self.pixel_std) or (
                self.pixel_mean and len(self.pixel_mean) != self.channels):
            raise ValueError(f"vision: pixel_mean {self.pixel_mean} and pixel_std "
                             f"{self.pixel_std} must both have one value per channel "
                             f"(channels={self.channels}), or both be empty")

    def build(self) -> VisionTransformer:
        return VisionTransformer(
            width=self.width, depth=self.depth, num_heads=self.num_heads,
            patch_size=self.patch_size, mlp_ratio=self.mlp_ratio,
            dtype=canonical_dtype(self.dtype), remat=self.remat, scan_layers=self.scan_layers,
            image_size=self.image_size, mlp_dim=self.mlp_dim, activation=self.activation,
            norm_position=self.norm_position, layer_norm_eps=self.layer_norm_eps,
            patch_bias=self.patch_bias, pre_norm=self.pre_norm, final_norm=self.final_norm,
            class_token=self.class_token, pooling=self.pooling, channels=self.channels,
            pixel_mean=tuple(self.pixel_mean), pixel_std=tuple(self.pixel_std),
            input_mean=self.input_mean, input_std=self.input_std,
        )


@dataclasses.dataclass(frozen=True)
class TextConfig:
    """Text tower. causal=False: BERT-style (CLS pooling); True: CLIP-style (end-token pooling).

    The fields after ``scan_layers`` describe the architecture of an imported model (see
    ``TextTransformer``); their defaults are this library's own pre-LN encoder.
    """

    vocab_size: int = 30522
    width: int = 192
    depth: int = 4
    num_heads: int = 3
    mlp_ratio: float = 4.0
    max_len: int = 64
    causal: bool = False
    dtype: str = "float32"
    remat: str = "none"
    scan_layers: bool = False
    mlp_dim: int = 0
    activation: str = "gelu"
    norm_position: str = "pre"
    layer_norm_eps: float = 1e-6
    embed_norm: bool = False
    final_norm: bool = True
    type_vocab_size: int = 0
    pooling: str = "auto"

    def __post_init__(self):
        _check_tower("text", self.width, self.num_heads, self.depth, self.dtype, self.remat)
        check_architecture("text", self.activation, self.norm_position)
        if self.pooling not in POOLINGS:
            raise ValueError(f"text: pooling={self.pooling!r}; expected one of {POOLINGS}")

    def build(self) -> TextTransformer:
        return TextTransformer(
            vocab_size=self.vocab_size, width=self.width, depth=self.depth,
            num_heads=self.num_heads, mlp_ratio=self.mlp_ratio, max_len=self.max_len,
            causal=self.causal, dtype=canonical_dtype(self.dtype), remat=self.remat,
            scan_layers=self.scan_layers, mlp_dim=self.mlp_dim, activation=self.activation,
            norm_position=self.norm_position, layer_norm_eps=self.layer_norm_eps,
            embed_norm=self.embed_norm, final_norm=self.final_norm,
            type_vocab_size=self.type_vocab_size, pooling=self.pooling,
        )


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Two-tower model: towers, shared embedding size E, temperature, RoIAlign settings.

    Projections (to E) have no bias by default; ``image_proj_bias`` / ``text_proj_bias`` add one
    and ``text_proj_hidden`` > 0 makes the text projection an MLP D -> hidden -> E with exact
    GELU (open_clip's 'mlp' projection, as in BiomedCLIP).
    """

    vision: VisionConfig = VisionConfig()
    text: TextConfig = TextConfig()
    embed_dim: int = 128
    init_temperature: float = 0.07
    max_inv_temperature: float = 100.0
    roi_output_size: int | tuple[int, int] = 7
    roi_sampling_ratio: int = 2
    image_proj_bias: bool = False
    text_proj_bias: bool = False
    text_proj_hidden: int = 0

    def __post_init__(self):
        if not 0 < self.init_temperature:
            raise ValueError(f"init_temperature must be > 0; got {self.init_temperature}")
        if 1.0 / self.init_temperature > self.max_inv_temperature:
            raise ValueError(
                f"1/init_temperature = {1 / self.init_temperature:g} exceeds "
                f"max_inv_temperature {self.max_inv_temperature:g}"
            )


def _keys(cfg: Any) -> list[str]:
    if dataclasses.is_dataclass(cfg):
        return [f.name for f in dataclasses.fields(cfg)]
    return list(cfg.keys())  # dict, ConfigDict, any mapping


def _get(cfg: Any, name: str) -> Any:
    try:
        return cfg[name]
    except TypeError:  # dataclass / namespace: not subscriptable
        return getattr(cfg, name)


def _from_fields(cls, cfg: Any, where: str):
    """Dataclass ``cls`` from an instance or any mapping with (a subset of) its field names."""
    if isinstance(cfg, cls):
        return cfg
    if cfg is None:
        return cls()
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(_keys(cfg)) - set(names))
    if unknown:
        raise ValueError(f"unknown {where} config keys {unknown}; valid keys: {names}")
    kwargs = {}
    for name in _keys(cfg):
        value = _get(cfg, name)
        if name == "vision":
            value = _from_fields(VisionConfig, value, "vision")
        elif name == "text":
            value = _from_fields(TextConfig, value, "text")
        elif isinstance(value, list):  # ConfigDict / JSON give lists; keep configs hashable
            value = tuple(value)
        kwargs[name] = value
    return cls(**kwargs)


def model_config(cfg: Any = None) -> ModelConfig:
    """ModelConfig from a ModelConfig, a mapping / ConfigDict with its keys, or None (defaults).

    Missing keys take the defaults; unknown keys raise ValueError (catches typos).
    """
    return _from_fields(ModelConfig, cfg, "model")


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
    """Two towers + region head + projections + learnable temperature.

    Params: image_encoder, text_encoder, region_head, image_proj, region_proj, text_proj,
    log_inv_temperature (= log(1/tau), clamped in the forward to 1/tau <= max_inv_temperature).
    Projections run in float32 (tiny, and they feed the normalisation); by default they have
    no bias (see ``ModelConfig`` for the imported variants).
    """

    vision: VisionConfig = VisionConfig()
    text: TextConfig = TextConfig()
    embed_dim: int = 128
    init_temperature: float = 0.07
    max_inv_temperature: float = 100.0
    roi_output_size: int | tuple[int, int] = 7
    roi_sampling_ratio: int = 2
    image_proj_bias: bool = False
    text_proj_bias: bool = False
    text_proj_hidden: int = 0

    @classmethod
    def from_config(cls, cfg: Any = None) -> RegionCLIP:
        """Model from a ModelConfig or any mapping / ConfigDict with the same keys."""
        c = model_config(cfg)
        return cls(
            vision=c.vision, text=c.text, embed_dim=c.embed_dim,
            init_temperature=c.init_temperature, max_inv_temperature=c.max_inv_temperature,
            roi_output_size=c.roi_output_size, roi_sampling_ratio=c.roi_sampling_ratio,
            image_proj_bias=c.image_proj_bias, text_proj_bias=c.text_proj_bias,
            text_proj_hidden=c.text_proj_hidden,
        )

    def setup(self):
        self.image_encoder = self.vision.build()
        self.text_encoder = self.text.build()
        self.region_head = RegionHead(
            output_size=self.roi_output_size, sampling_ratio=self.roi_sampling_ratio,
            dtype=canonical_dtype(self.vision.dtype),
        )
        proj = dict(dtype=jnp.float32, param_dtype=jnp.float32)
        self.image_proj = nn.Dense(self.embed_dim, use_bias=self.image_proj_bias, **proj)
        self.region_proj = nn.Dense(self.embed_dim, use_bias=False, **proj)
        if self.text_proj_hidden:
            self.text_proj = _MlpProjection(self.text_proj_hidden, self.embed_dim,
                                            use_bias=self.text_proj_bias)
        else:
            self.text_proj = nn.Dense(self.embed_dim, use_bias=self.text_proj_bias, **proj)
        init = math.log(1.0 / self.init_temperature)
        self.log_inv_temperature = self.param(
            "log_inv_temperature", lambda _: jnp.asarray(init, jnp.float32)
        )

    def temperature(self) -> jax.Array:
        """tau = 1 / min(exp(log_inv_temperature), max_inv_temperature), float32 scalar.

        Exactly 1/max_inv_temperature when clamped (zero gradient); otherwise the gradient flows
        to the param.
        """
        log_max = math.log(self.max_inv_temperature)
        p = self.log_inv_temperature.astype(jnp.float32)
        inv = jnp.where(
            p >= log_max,
            jnp.float32(self.max_inv_temperature),
            jnp.exp(jnp.minimum(p, log_max)),  # inner min keeps exp (and its gradient) finite
        )
        return 1.0 / inv

    def image_features(self, images: jax.Array) -> tuple[jax.Array, jax.Array]:
        """One ViT pass for the training step.

        images [B, H, W, C] -> (image_emb [B, E] float32 normalised, patch_grid [B, h, w, D]).
        """
        cls, grid = self.image_encoder(images)
        return l2_normalize(self.image_proj(cls.astype(jnp.float32))), grid

    def encode_image(self, images: jax.Array) -> jax.Array:
        """images [B, H, W, C] -> normalised global embeddings [B, E] (from the CLS token)."""
        return self.image_features(images)[0]

    def regions_from_patches(
        self, patch_grid: jax.Array, boxes: jax.Array, box_mask: jax.Array
    ) -> jax.Array:
        """patch_grid [B, h, w, D], boxes [B, R, 4], box_mask [B, R] -> [B, R, E], 0 if masked."""
        feats = self.region_head(patch_grid, boxes, box_mask)
        emb = l2_normalize(self.region_proj(feats.astype(jnp.float32)))
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
        return l2_normalize(self.text_proj(pooled.astype(jnp.float32)))

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

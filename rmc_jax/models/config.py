"""The model's hyperparameters, each defined once, here.

``VisionConfig``, ``TextConfig`` and ``ModelConfig`` are small frozen dataclasses: their fields
and defaults are the only definition. The towers take them whole (``VisionTransformer(config)``,
``TextTransformer(config)``, ``RegionCLIP(config)``); ``configs/base.py`` builds its ``model``
section from them (``dataclasses.asdict``), so every field can be set on the command line;
``model_config`` reads any mapping with their keys (a ConfigDict, JSON) back, rejecting unknown
keys. The importers of pretrained models describe what they import with the same dataclasses.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from rmc_jax.models.layers import REMAT_POLICIES, canonical_dtype, check_architecture

__all__ = ["VisionConfig", "TextConfig", "ModelConfig", "model_config", "POOLINGS",
           "POSITION_INITS"]

# Text pooling ('auto': 'last' for a causal tower, 'cls' otherwise; see TextTransformer).
POOLINGS = ("auto", "cls", "last", "mean", "pooler")
# How the image tower turns pixels into patch tokens (see VisionTransformer, vit.ConvStem).
STEMS = ("patch", "conv")
# How the image tower's position table starts (see VisionTransformer).
POSITION_INITS = ("normal", "sincos2d")


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
    """Image tower (``VisionTransformer``). The fields after ``scan_layers`` describe the
    architecture of an imported model; their defaults are this library's own ViT (timm's
    ViT-B/16 layout at a smaller size)."""

    image_size: int = 128          # input H = W; fixes the position table (other sizes resize it)
    channels: int = 1              # channels the patch embedding takes (imported RGB towers: 3)
    patch_size: int = 16
    width: int = 192
    depth: int = 4
    num_heads: int = 3
    mlp_ratio: float = 4.0
    dtype: str = "float32"         # compute: 'float32', 'bfloat16' or 'auto' (canonical_dtype)
    remat: str = "none"            # rematerialisation of the blocks: 'none', 'full' or 'dots'
    scan_layers: bool = False      # one scanned block (compiles once) instead of depth blocks
    mlp_dim: int = 0               # MLP hidden size; 0 = int(width * mlp_ratio)
    activation: str = "gelu"       # layers.ACTIVATIONS ('quick_gelu' for OpenAI CLIP)
    norm_position: str = "pre"     # 'pre' (pre-LN) or 'post' (post-LN blocks)
    layer_norm_eps: float = 1e-6
    patch_bias: bool = True        # CLIP's patch embedding has no bias
    pre_norm: bool = False         # LayerNorm after the embeddings (CLIP's ln_pre)
    final_norm: bool = True        # LayerNorm after the blocks
    class_token: bool = True
    pooling: str = "cls"           # 'cls' (needs the class token) or 'mean' of the patch tokens
    # How the learned position table starts: 'normal' (N(0, 0.02), timm / CLIP) or 'sincos2d'
    # (2-D sine-cosine codes, vit.sincos2d_positions; configs/base.py's choice). Imported
    # towers bring their own table, so this matters only when training from scratch.
    position_init: str = "normal"
    # How pixels become the patch tokens: 'patch' (one P x P convolution with stride P, ViT's
    # patchify; imported towers) or 'conv' (vit.ConvStem: stem_convs stride-2 3x3
    # convolutions, each with a LayerNorm and the activation, after a (P / 2^stem_convs)-pixel
    # patchify when that is more than 1, then a 1x1 convolution; Xiao et al. 2021, "Early
    # convolutions help transformers see better"; 0 = log2(P), all 3x3). Same token grid.
    stem: str = "patch"
    stem_convs: int = 0
    # Model-side input normalisation, one value per channel; empty = images go in as given. The
    # pipeline's images, normalised with input_mean / input_std, are mapped back to [0, 1],
    # replicated to ``channels`` and normalised with these (what an imported model expects).
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
        if self.position_init not in POSITION_INITS or (
                self.position_init == "sincos2d" and self.width % 4):
            raise ValueError(f"vision: position_init={self.position_init!r} with width "
                             f"{self.width}; expected one of {POSITION_INITS} ('sincos2d' "
                             "needs a width divisible by 4)")
        halvings = self.patch_size.bit_length() - 1
        if self.stem not in STEMS or (self.stem == "conv" and (
                self.patch_size != 1 << halvings or not 0 <= self.stem_convs <= halvings)):
            raise ValueError(f"vision: stem={self.stem!r}, stem_convs={self.stem_convs} with "
                             f"patch_size {self.patch_size}; expected one of {STEMS} ('conv' "
                             "needs a power-of-two patch size P and 0 <= stem_convs <= log2(P))")
        if self.pooling not in ("cls", "mean") or (self.pooling == "cls" and not self.class_token):
            raise ValueError(f"vision: pooling={self.pooling!r} with class_token="
                             f"{self.class_token}; expected 'cls' (needs a class token) or 'mean'")
        if len(self.pixel_mean) != len(self.pixel_std) or (
                self.pixel_mean and len(self.pixel_mean) != self.channels):
            raise ValueError(f"vision: pixel_mean {self.pixel_mean} and pixel_std "
                             f"{self.pixel_std} must both have one value per channel "
                             f"(channels={self.channels}), or both be empty")

    @property
    def conv_stem_layers(self) -> int:
        """The conv stem's stride-2 3x3 layers: ``stem_convs``, or log2(P) when it is 0."""
        return self.stem_convs or self.patch_size.bit_length() - 1


@dataclasses.dataclass(frozen=True)
class TextConfig:
    """Text tower (``TextTransformer``). causal=False: BERT-style (CLS pooling); True: CLIP-style
    (end-token pooling). The fields after ``scan_layers`` describe the architecture of an
    imported model; their defaults are this library's own pre-LN encoder."""

    vocab_size: int = 30522
    width: int = 192
    depth: int = 4
    num_heads: int = 3
    mlp_ratio: float = 4.0
    max_len: int = 64              # longest token sequence (size of the position table)
    causal: bool = False
    dtype: str = "float32"         # compute: 'float32', 'bfloat16' or 'auto'
    remat: str = "none"            # 'none', 'full' or 'dots'
    scan_layers: bool = False
    mlp_dim: int = 0               # 0 = int(width * mlp_ratio)
    activation: str = "gelu"
    norm_position: str = "pre"     # 'post' with embed_norm and no final_norm: a BERT
    layer_norm_eps: float = 1e-6
    embed_norm: bool = False       # LayerNorm on the summed embeddings (BERT)
    final_norm: bool = True
    type_vocab_size: int = 0       # BERT's token-type table (row 0 is added to every token)
    pooling: str = "auto"          # POOLINGS

    def __post_init__(self):
        _check_tower("text", self.width, self.num_heads, self.depth, self.dtype, self.remat)
        check_architecture("text", self.activation, self.norm_position)
        if self.pooling not in POOLINGS:
            raise ValueError(f"text: pooling={self.pooling!r}; expected one of {POOLINGS}")


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Two-tower model (``RegionCLIP``): towers, shared embedding size E, temperature, RoIAlign.

    Projections (to E) have no bias by default; ``image_proj_bias`` / ``text_proj_bias`` add one
    and ``text_proj_hidden`` > 0 makes the text projection an MLP D -> hidden -> E with exact
    GELU (open_clip's 'mlp' projection, as in BiomedCLIP).
    """

    vision: VisionConfig = VisionConfig()
    text: TextConfig = TextConfig()
    embed_dim: int = 128
    init_temperature: float = 0.07
    max_inv_temperature: float = 100.0          # 1/tau is clamped to this (CLIP: 100)
    roi_output_size: int | tuple[int, int] = 7  # RoIAlign bins per region (averaged)
    roi_sampling_ratio: int = 2                 # RoIAlign samples per bin and axis
    image_proj_bias: bool = False
    text_proj_bias: bool = False
    text_proj_hidden: int = 0
    # A learnt scalar added to the image-report logits (param 'logit_bias'): what the sigmoid
    # loss (loss.global_loss='siglip') needs; -10 is SigLIP's start. Off: no such param.
    learn_logit_bias: bool = False
    init_logit_bias: float = -10.0

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

"""ViT image tower: images -> (CLS embedding, patch-token grid).

The patch grid is kept spatial ([B, H/P, W/P, D]) because region features are RoIAligned from it
and phrase grounding reads it patch by patch.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from rmc_jax.models.config import VisionConfig
from rmc_jax.models.layers import ACTIVATIONS, TransformerStack, canonical_dtype

__all__ = ["ConvStem", "VisionTransformer", "sincos2d_positions"]

_EMBED_INIT = nn.initializers.normal(stddev=0.02)


def sincos2d_positions(grid_h: int, grid_w: int, width: int,
                       temperature: float = 10_000.0) -> np.ndarray:
    """2-D sine-cosine position codes [grid_h * grid_w, width] of a row-major patch grid.

    A quarter of the channels each: sin and cos of the column index, then of the row index, at
    width / 4 frequencies temperature ** (-i / (width / 4)) (the Transformer's codes per axis,
    as in MoCo v3 and big_vision). Neighbouring patches get similar codes from the start, which
    a table drawn at random has to learn first.
    """
    if width % 4:
        raise ValueError(f"sincos2d position codes need a width divisible by 4; got {width}")
    quarter = width // 4
    omega = temperature ** (-np.arange(quarter, dtype=np.float64) / quarter)       # [W/4]
    rows, cols = np.mgrid[:grid_h, :grid_w]
    x = cols.reshape(-1, 1) * omega                                                 # [N, W/4]
    y = rows.reshape(-1, 1) * omega
    return np.concatenate([np.sin(x), np.cos(x), np.sin(y), np.cos(y)], 1).astype(np.float32)


class ConvStem(nn.Module):
    """images [B, H, W, C] -> tokens [B, H/P, W/P, width]: a convolutional stem in place of the
    P x P patchify (Xiao et al. 2021, "Early convolutions help transformers see better").

    ``convs`` stride-2 3x3 convolutions, channels doubling up to ``width``, each followed by
    LayerNorm and the activation, then a 1x1 convolution. With ``convs`` < log2(P) the stem
    starts with a (P / 2^convs)-pixel patchify convolution (ConvNeXt's stem), which spares the
    costly full-resolution layers. The token grid is the patchify stem's; each token also sees
    a margin of its neighbours' pixels.
    """

    width: int
    patch_size: int
    convs: int
    activation: str = "gelu"
    layer_norm_eps: float = 1e-6
    use_bias: bool = True
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @staticmethod
    def channels(width: int, convs: int) -> list[int]:
        """Output channels of the patchify (first) and of each 3x3 layer: doubling up to
        ``width``, at least 8."""
        return [max(width >> (convs - i), 8) for i in range(convs + 1)]

    @nn.compact
    def __call__(self, images: jax.Array) -> jax.Array:
        common = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        act = ACTIVATIONS[self.activation]
        channels = self.channels(self.width, self.convs)
        x, first = images, self.patch_size >> self.convs
        if first > 1:
            x = nn.Conv(channels[0], (first, first), strides=(first, first),
                        padding="VALID", name="patchify", **common)(x)
            x = act(nn.LayerNorm(epsilon=self.layer_norm_eps, name="patchify_norm", **common)(x))
        for i in range(self.convs):
            x = nn.Conv(channels[i + 1], (3, 3), strides=(2, 2),
                        padding=((1, 1), (1, 1)), use_bias=False, name=f"conv_{i}",
                        **common)(x)
            x = act(nn.LayerNorm(epsilon=self.layer_norm_eps, name=f"norm_{i}", **common)(x))
        return nn.Conv(self.width, (1, 1), use_bias=self.use_bias, name="proj", **common)(x)


class VisionTransformer(nn.Module):
    """ViT. images [B, H, W, C] (C = 1 or 3) -> (pooled [B, D], patch_grid [B, H/P, W/P, D]).

    Every hyperparameter comes from ``config`` (``VisionConfig``). Both outputs come after the
    final LayerNorm (``final_norm``). The pooled vector is the class token (``pooling='cls'``) or
    the mean of the patch tokens (``pooling='mean'``); the patch grid never contains the class
    token, so region features RoIAligned from it mean the same whatever the pooling.

    Position embeddings are learned for the grid of ``image_size``, with one extra leading row
    for the class token when there is one; other sizes (e.g. region crops scored by a teacher)
    bilinearly resize the patch part of the table. H and W must be multiples of ``patch_size``.
    The table starts as ``position_init`` says: 'normal' (N(0, 0.02), timm's and CLIP's) or
    'sincos2d' (``sincos2d_positions`` for the patches, zeros for the class token).

    Input normalisation: with ``pixel_mean``/``pixel_std`` empty (default) the images go in as
    given. An imported model sets them to the per-channel statistics it was trained with (its
    ``preprocessor_config.json`` or open_clip config); images then arrive normalised by the data
    pipeline as (x - input_mean) / input_std with x in [0, 1], are mapped back to [0, 1],
    replicated to ``channels`` channels if they have one (a gray radiograph as RGB), and
    normalised as (x - pixel_mean[c]) / pixel_std[c], exactly what the imported model expects.

    Architecture options (defaults = this library's own ViT = timm's ViT-B/16 layout):
    ``stem`` ('patch', or 'conv': ``ConvStem``), ``activation`` / ``norm_position`` /
    ``layer_norm_eps`` of the blocks, ``patch_bias`` (CLIP's patch embedding has none; the
    conv stem's projection bias), ``pre_norm`` (CLIP's ``ln_pre`` after the embeddings),
    ``class_token`` and ``pooling``.
    """

    config: VisionConfig = VisionConfig()
    param_dtype: Any = jnp.float32

    def standardise(self, images: jax.Array) -> jax.Array:
        """Pipeline-normalised images [B, H, W, C] -> the input the patch embedding expects
        (identity unless ``pixel_mean``/``pixel_std`` are set; see the class docstring)."""
        c = self.config
        if not c.pixel_mean:
            return images
        if images.shape[-1] not in (1, c.channels):
            raise ValueError(f"images have {images.shape[-1]} channels; this image tower takes "
                             f"1 (replicated) or {c.channels}")
        x = images.astype(jnp.float32) * c.input_std + c.input_mean  # back to [0, 1]
        x = jnp.broadcast_to(x, x.shape[:-1] + (c.channels,))
        mean = jnp.asarray(c.pixel_mean, jnp.float32)
        std = jnp.asarray(c.pixel_std, jnp.float32)
        return ((x - mean) / std).astype(images.dtype)

    def _position_init(self, grid_h: int, grid_w: int, extra: int):
        if self.config.position_init == "normal":
            return _EMBED_INIT

        def sincos2d(key, shape, dtype=jnp.float32):
            del key
            table = sincos2d_positions(grid_h, grid_w, shape[-1])
            return jnp.asarray(np.concatenate([np.zeros((extra, shape[-1]), np.float32),
                                               table])[None], dtype)
        return sincos2d

    @nn.compact
    def __call__(self, images: jax.Array) -> tuple[jax.Array, jax.Array]:
        c = self.config
        if images.ndim != 4:
            raise ValueError(f"images must be [B, H, W, C]; got shape {images.shape}")
        images = self.standardise(images)
        B, H, W, C = images.shape
        P = c.patch_size
        if H % P or W % P:
            raise ValueError(
                f"image size {H}x{W} is not divisible by patch_size {P}; "
                f"resize or pad to a multiple of {P}"
            )
        h, w = H // P, W // P
        common = dict(dtype=canonical_dtype(c.dtype), param_dtype=self.param_dtype)
        if c.stem == "patch":
            x = nn.Conv(c.width, (P, P), strides=(P, P), padding="VALID",
                        use_bias=c.patch_bias, name="patch_embed", **common)(images)
        else:
            x = ConvStem(c.width, P, c.conv_stem_layers, c.activation,
                         c.layer_norm_eps, c.patch_bias, name="stem", **common)(images)
        x = x.reshape(B, h * w, c.width)
        extra = 1 if c.class_token else 0
        if c.class_token:
            cls = self.param("cls_token", _EMBED_INIT, (1, 1, c.width), self.param_dtype)
        gh = gw = c.image_size // P
        pos = self.param("pos_embed", self._position_init(gh, gw, extra),
                         (1, gh * gw + extra, c.width), self.param_dtype)
        if (gh, gw) != (h, w):
            grid = pos[0, extra:].reshape(gh, gw, c.width)
            grid = jax.image.resize(grid, (h, w, c.width), "bilinear", antialias=False)
            pos = jnp.concatenate([pos[:, :extra], grid.reshape(1, h * w, c.width)], axis=1)
        if c.class_token:
            x = jnp.concatenate([jnp.broadcast_to(cls.astype(x.dtype), (B, 1, c.width)), x], 1)
        x = x + pos.astype(x.dtype)
        if c.pre_norm:
            x = nn.LayerNorm(epsilon=c.layer_norm_eps, name="pre_norm", **common)(x)
        x = TransformerStack(
            depth=c.depth, num_heads=c.num_heads, mlp_ratio=c.mlp_ratio,
            remat=c.remat, scan_layers=c.scan_layers, mlp_dim=c.mlp_dim,
            activation=c.activation, norm_position=c.norm_position,
            layer_norm_eps=c.layer_norm_eps, name="encoder", **common,
        )(x)
        if c.final_norm:
            x = nn.LayerNorm(epsilon=c.layer_norm_eps, name="norm", **common)(x)
        patches = x[:, extra:]
        pooled = x[:, 0] if c.pooling == "cls" else patches.mean(axis=1)
        return pooled, patches.reshape(B, h, w, c.width)

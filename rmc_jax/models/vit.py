"""ViT image tower: images -> (CLS embedding, patch-token grid).

The patch grid is kept spatial ([B, H/P, W/P, D]) because region features are RoIAligned from it
and phrase grounding reads it patch by patch.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from rmc_jax.models.layers import TransformerStack

__all__ = ["VisionTransformer"]

_EMBED_INIT = nn.initializers.normal(stddev=0.02)


class VisionTransformer(nn.Module):
    """Pre-LN ViT. images [B, H, W, C] (C = 1 or 3, float, not normalised here)
    -> (cls [B, D], patch_grid [B, H/P, W/P, D]), both after the final LayerNorm.

    Position embeddings are learned for the grid of ``image_size`` (or, if unset, of the images
    seen at init); other sizes (e.g. region crops scored by a teacher) bilinearly resize the
    patch part of the table. H and W must be multiples of ``patch_size``.
    """

    width: int = 192
    depth: int = 4
    num_heads: int = 3
    patch_size: int = 16
    mlp_ratio: float = 4.0
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32
    remat: str = "none"
    scan_layers: bool = False
    image_size: int | None = None

    @nn.compact
    def __call__(self, images: jax.Array) -> tuple[jax.Array, jax.Array]:
        if images.ndim != 4:
            raise ValueError(f"images must be [B, H, W, C]; got shape {images.shape}")
        B, H, W, C = images.shape
        P = self.patch_size
        if H % P or W % P:
            raise ValueError(
                f"image size {H}x{W} is not divisible by patch_size {P}; "
                f"resize or pad to a multiple of {P}"
            )
        h, w = H // P, W // P
        x = nn.Conv(
            self.width, (P, P), strides=(P, P), padding="VALID", dtype=self.dtype,
            param_dtype=self.param_dtype, name="patch_embed",
        )(images)  # [B, h, w, D]
        x = x.reshape(B, h * w, self.width)
        cls = self.param("cls_token", _EMBED_INIT, (1, 1, self.width), self.param_dtype)
        gh, gw = (h, w) if self.image_size is None else (self.image_size // P,) * 2
        pos = self.param("pos_embed", _EMBED_INIT, (1, gh * gw + 1, self.width), self.param_dtype)
        if (gh, gw) != (h, w):
            grid = pos[0, 1:].reshape(gh, gw, self.width)
            grid = jax.image.resize(grid, (h, w, self.width), "bilinear", antialias=False)
            pos = jnp.concatenate([pos[:, :1], grid.reshape(1, h * w, self.width)], axis=1)
        x = jnp.concatenate([jnp.broadcast_to(cls.astype(x.dtype), (B, 1, self.width)), x], 1)
        x = x + pos.astype(x.dtype)
        x = TransformerStack(
            depth=self.depth, num_heads=self.num_heads, mlp_ratio=self.mlp_ratio,
            remat=self.remat, scan_layers=self.scan_layers, dtype=self.dtype,
            param_dtype=self.param_dtype, name="encoder",
        )(x)
        x = nn.LayerNorm(dtype=self.dtype, param_dtype=self.param_dtype, name="norm")(x)
        return x[:, 0], x[:, 1:].reshape(B, h, w, self.width)

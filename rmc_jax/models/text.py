"""Text tower: token ids -> (pooled report/caption embedding, token states)."""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from rmc_jax.models.layers import TransformerStack

__all__ = ["TextTransformer"]

_EMBED_INIT = nn.initializers.normal(stddev=0.02)


class TextTransformer(nn.Module):
    """Transformer text encoder.

    tokens [N, L] int32, attention_mask [N, L] (1 = real token, right-padded)
    -> (pooled [N, D], token_states [N, L, D]) after the final LayerNorm.

    causal=False: BERT-style bidirectional attention, pooled = token 0 (CLS).
    causal=True: CLIP-style causal attention, pooled = last real token (index sum(mask) - 1).
    Padding positions are masked as keys, so they never influence real tokens.
    """

    vocab_size: int = 30522
    width: int = 192
    depth: int = 4
    num_heads: int = 3
    mlp_ratio: float = 4.0
    max_len: int = 64
    causal: bool = False
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32
    remat: str = "none"
    scan_layers: bool = False

    @nn.compact
    def __call__(
        self, tokens: jax.Array, attention_mask: jax.Array
    ) -> tuple[jax.Array, jax.Array]:
        if tokens.ndim != 2 or attention_mask.shape != tokens.shape:
            raise ValueError(
                f"tokens and attention_mask must both be [N, L]; got {tokens.shape} and "
                f"{attention_mask.shape}"
            )
        N, L = tokens.shape
        if L > self.max_len:
            raise ValueError(f"sequence length {L} exceeds max_len {self.max_len}")
        x = nn.Embed(
            self.vocab_size, self.width, embedding_init=_EMBED_INIT, dtype=self.dtype,
            param_dtype=self.param_dtype, name="token_embed",
        )(tokens)
        pos = self.param("pos_embed", _EMBED_INIT, (self.max_len, self.width), self.param_dtype)
        x = x + pos[None, :L].astype(x.dtype)
        mask = attention_mask.astype(bool)
        x = TransformerStack(
            depth=self.depth, num_heads=self.num_heads, mlp_ratio=self.mlp_ratio,
            causal=self.causal, remat=self.remat, scan_layers=self.scan_layers,
            dtype=self.dtype, param_dtype=self.param_dtype, name="encoder",
        )(x, mask)
        x = nn.LayerNorm(dtype=self.dtype, param_dtype=self.param_dtype, name="norm")(x)
        if self.causal:
            last = jnp.maximum(mask.sum(axis=1) - 1, 0)  # [N]; empty rows fall back to 0
            pooled = jnp.take_along_axis(x, last[:, None, None], axis=1)[:, 0]
        else:
            pooled = x[:, 0]
        return pooled, x

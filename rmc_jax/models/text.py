"""Text tower: token ids -> (pooled report/caption embedding, token states)."""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from rmc_jax.models.config import TextConfig
from rmc_jax.models.layers import Dense, TransformerStack, canonical_dtype

__all__ = ["TextTransformer"]

_EMBED_INIT = nn.initializers.normal(stddev=0.02)


class TextTransformer(nn.Module):
    """Transformer text encoder; every hyperparameter comes from ``config`` (``TextConfig``).

    tokens [N, L] int32, attention_mask [N, L] (1 = real token, right-padded)
    -> (pooled [N, D], token_states [N, L, D]); token states come after the final LayerNorm
    when there is one (``final_norm``).

    Pooling (``pooling='auto'`` picks from ``causal``):
      'cls'    token 0 (BERT-style, the default for causal=False);
      'last'   the last real token, index sum(mask) - 1 (CLIP's end-of-text token, the default
               for causal=True);
      'mean'   mean of the real tokens (sentence-transformers, open_clip's mean pooler);
      'pooler' tanh(Dense(token 0)): BERT's ``pooler_output``.
    Padding positions are masked as keys, so they never influence real tokens.

    Architecture options mirror the importable models: ``norm_position='post'`` with
    ``embed_norm`` (a LayerNorm on the summed embeddings), ``final_norm=False`` and
    ``type_vocab_size`` (BERT's token-type table; every token is type 0, so row 0 is added) give
    a BERT encoder; the defaults give a pre-LN (CLIP-style) encoder.
    """

    config: TextConfig = TextConfig()
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(
        self, tokens: jax.Array, attention_mask: jax.Array
    ) -> tuple[jax.Array, jax.Array]:
        c = self.config
        if tokens.ndim != 2 or attention_mask.shape != tokens.shape:
            raise ValueError(
                f"tokens and attention_mask must both be [N, L]; got {tokens.shape} and "
                f"{attention_mask.shape}"
            )
        N, L = tokens.shape
        if L > c.max_len:
            raise ValueError(f"sequence length {L} exceeds max_len {c.max_len}")
        common = dict(dtype=canonical_dtype(c.dtype), param_dtype=self.param_dtype)
        x = nn.Embed(
            c.vocab_size, c.width, embedding_init=_EMBED_INIT, name="token_embed", **common,
        )(tokens)
        pos = self.param("pos_embed", _EMBED_INIT, (c.max_len, c.width), self.param_dtype)
        x = x + pos[None, :L].astype(x.dtype)
        if c.type_vocab_size:
            types = self.param("type_embed", _EMBED_INIT, (c.type_vocab_size, c.width),
                               self.param_dtype)
            x = x + types[0].astype(x.dtype)
        if c.embed_norm:
            x = nn.LayerNorm(epsilon=c.layer_norm_eps, name="embed_norm", **common)(x)
        mask = attention_mask.astype(bool)
        x = TransformerStack(
            depth=c.depth, num_heads=c.num_heads, mlp_ratio=c.mlp_ratio,
            causal=c.causal, remat=c.remat, scan_layers=c.scan_layers,
            mlp_dim=c.mlp_dim, activation=c.activation, norm_position=c.norm_position,
            layer_norm_eps=c.layer_norm_eps, name="encoder", **common,
        )(x, mask)
        if c.final_norm:
            x = nn.LayerNorm(epsilon=c.layer_norm_eps, name="norm", **common)(x)
        pooling = c.pooling
        if pooling == "auto":
            pooling = "last" if c.causal else "cls"
        if pooling == "last":
            last = jnp.maximum(mask.sum(axis=1) - 1, 0)  # [N]; empty rows fall back to 0
            pooled = jnp.take_along_axis(x, last[:, None, None], axis=1)[:, 0]
        elif pooling == "mean":
            weights = mask.astype(jnp.float32)[..., None]  # [N, L, 1]
            total = jnp.sum(x.astype(jnp.float32) * weights, axis=1)
            pooled = (total / jnp.maximum(weights.sum(axis=1), 1.0)).astype(x.dtype)
        elif pooling == "pooler":
            pooled = jnp.tanh(Dense(c.width, name="pooler", **common)(x[:, 0]))
        else:
            pooled = x[:, 0]
        return pooled, x

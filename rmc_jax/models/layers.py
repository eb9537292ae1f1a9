"""Transformer building blocks shared by the image and text towers.

One implementation of attention, MLP, pre-LN block and block stack, so both towers get the same
numerics, the same remat / scan options and the same parameter names (which the sharding rules
match by path):

    TransformerStack
      block_0 .. block_{depth-1}     (scan_layers=False), or
      blocks                         (scan_layers=True: the same tree, leaves stacked on axis 0)
        ln_attn, attn/{qkv, out}, ln_mlp, mlp/{fc1, fc2}

Compute runs in ``dtype`` (e.g. bfloat16); parameters are always ``param_dtype`` (float32).
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

__all__ = [
    "REMAT_POLICIES",
    "MultiHeadAttention",
    "Mlp",
    "EncoderBlock",
    "TransformerStack",
    "canonical_dtype",
]

Dtype = Any

# remat name -> jax.checkpoint policy ('none' means no rematerialisation at all).
REMAT_POLICIES = {
    "none": None,
    "full": jax.checkpoint_policies.nothing_saveable,
    "dots": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
}

_KERNEL_INIT = nn.initializers.xavier_uniform()


def canonical_dtype(dtype: Any) -> jnp.dtype:
    """'float32' / 'bfloat16' / jnp.bfloat16 / np.dtype -> jnp.dtype (configs store strings)."""
    try:
        return jnp.dtype(dtype)
    except TypeError:
        raise ValueError(f"unknown dtype {dtype!r}; use e.g. 'float32' or 'bfloat16'") from None


class MultiHeadAttention(nn.Module):
    """Self-attention with one fused QKV projection, via ``jax.nn.dot_product_attention``.

    x [B, T, D] -> [B, T, D]. ``mask`` [B, T] (True = real token) masks *keys*, so padding never
    influences real tokens; ``causal`` adds a lower-triangular mask.
    """

    num_heads: int
    causal: bool = False
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, mask: jax.Array | None = None) -> jax.Array:
        B, T, D = x.shape
        if D % self.num_heads:
            raise ValueError(f"width {D} is not divisible by num_heads {self.num_heads}")
        head_dim = D // self.num_heads
        qkv = nn.Dense(
            3 * D, dtype=self.dtype, param_dtype=self.param_dtype, kernel_init=_KERNEL_INIT,
            name="qkv",
        )(x)
        q, k, v = jnp.split(qkv.reshape(B, T, 3, self.num_heads, head_dim), 3, axis=2)
        q, k, v = (t.squeeze(2) for t in (q, k, v))  # [B, T, N, H]
        key_mask = None if mask is None else mask.astype(bool)[:, None, None, :]  # [B,1,1,T]
        y = jax.nn.dot_product_attention(q, k, v, mask=key_mask, is_causal=self.causal)
        return nn.Dense(
            D, dtype=self.dtype, param_dtype=self.param_dtype, kernel_init=_KERNEL_INIT,
            name="out",
        )(y.reshape(B, T, D))


class Mlp(nn.Module):
    """Position-wise MLP: Dense(hidden) -> exact GELU -> Dense(D). [..., D] -> [..., D]."""

    hidden_dim: int
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        dense = dict(dtype=self.dtype, param_dtype=self.param_dtype, kernel_init=_KERNEL_INIT)
        h = nn.Dense(self.hidden_dim, name="fc1", **dense)(x)
        h = nn.gelu(h, approximate=False)
        return nn.Dense(x.shape[-1], name="fc2", **dense)(h)


class EncoderBlock(nn.Module):
    """Pre-LN transformer block: x + Attn(LN(x)), then x + MLP(LN(x)). [B, T, D] -> [B, T, D]."""

    num_heads: int
    mlp_ratio: float = 4.0
    causal: bool = False
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, mask: jax.Array | None = None) -> jax.Array:
        common = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        h = nn.LayerNorm(name="ln_attn", **common)(x)
        attn = MultiHeadAttention(self.num_heads, causal=self.causal, name="attn", **common)
        x = x + attn(h, mask)
        h = nn.LayerNorm(name="ln_mlp", **common)(x)
        return x + Mlp(int(x.shape[-1] * self.mlp_ratio), name="mlp", **common)(h)


class _ScanBlock(EncoderBlock):
    """EncoderBlock with the (carry, out) signature nn.scan needs; same parameter tree."""

    def __call__(self, x, mask=None):
        return super().__call__(x, mask), None


class TransformerStack(nn.Module):
    """``depth`` pre-LN blocks, optionally rematerialised and/or scanned. [B, T, D] -> [B, T, D].

    remat: 'none' | 'full' (save nothing, recompute the block in backward) | 'dots' (save
    matmul outputs without batch dims). scan_layers: one ``nn.scan`` over stacked block params
    (faster compile for deep models); parameters then live under ``blocks`` with a leading
    [depth] axis instead of under ``block_{i}``. Both layouts compute the same function.
    """

    depth: int
    num_heads: int
    mlp_ratio: float = 4.0
    causal: bool = False
    remat: str = "none"
    scan_layers: bool = False
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, mask: jax.Array | None = None) -> jax.Array:
        if self.remat not in REMAT_POLICIES:
            raise ValueError(f"remat={self.remat!r}; expected one of {sorted(REMAT_POLICIES)}")
        block_cls = _ScanBlock if self.scan_layers else EncoderBlock
        if self.remat != "none":
            # Under scan, CSE across iterations is impossible anyway; prevent_cse=False is faster.
            block_cls = nn.remat(
                block_cls, policy=REMAT_POLICIES[self.remat], prevent_cse=not self.scan_layers
            )
        kwargs = dict(
            num_heads=self.num_heads, mlp_ratio=self.mlp_ratio, causal=self.causal,
            dtype=self.dtype, param_dtype=self.param_dtype,
        )
        if self.scan_layers:
            stack = nn.scan(
                block_cls,
                variable_axes={"params": 0},
                split_rngs={"params": True},
                in_axes=nn.broadcast,
                length=self.depth,
            )
            x, _ = stack(name="blocks", **kwargs)(x, mask)
            return x
        for i in range(self.depth):
            x = block_cls(name=f"block_{i}", **kwargs)(x, mask)
        return x

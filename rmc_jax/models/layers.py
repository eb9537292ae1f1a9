"""Transformer building blocks shared by the image and text towers.

One implementation of attention, MLP, transformer block and block stack, so both towers get the
same numerics, the same remat / scan options and the same parameter names (which the sharding
rules match by path):

    TransformerStack
      block_0 .. block_{depth-1}     (scan_layers=False), or
      blocks                         (scan_layers=True: the same tree, leaves stacked on axis 0)
        ln_attn, attn/{qkv, out}, ln_mlp, mlp/{fc1, fc2}

Compute runs in ``dtype`` (e.g. bfloat16); parameters are always ``param_dtype`` (float32).

Architecture options mirror the pretrained models whose weights can be imported
(``rmc_jax.pretrained``): ``norm_position`` 'pre' (ViT, CLIP: x + f(LN(x))) or 'post' (BERT:
LN(x + f(x))), ``activation`` 'gelu' (exact, erf), 'quick_gelu' (OpenAI CLIP: x * sigmoid(1.702 x))
or 'gelu_tanh' (tanh approximation), and the LayerNorm ``layer_norm_eps``. The defaults (pre-LN,
exact GELU, eps 1e-6) are the ones this library trains from scratch with.

Kernels per backend (``choose_kernels``): 16-bit compute runs its matmuls where each backend is
fast. On CPU, XLA runs bf16 x bf16 -> f32 matmuls on the bf16 dot-product units but
bf16 -> bf16 ones on a slow path, so ``Dense`` and the attention use custom-VJP forms whose
every matmul (backward included) takes 16-bit operands and returns float32 sums. On GPU, cuBLAS
accumulates bf16 matmuls in float32 natively: ``Dense`` is plain ``nn.Dense`` in the compute
dtype, and attention is cuDNN's fused (flash) attention (``jax.nn.dot_product_attention(...,
implementation='cudnn')``) where cuDNN takes the shape, XLA's attention where it does not. On
TPU both are XLA's. float32 compute is plain ``nn.Dense`` and XLA's attention everywhere. The
choice is made when a model is traced, for the default backend, or for the platform named by
``kernels_for`` (cross-platform lowering, or another platform's kernels on this device).

Just over 500 lines on purpose: the blocks and their per-backend kernels (the blocks' matmuls)
change together.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import re
from typing import Any, Iterator

import flax.linen as nn
import jax
import jax.numpy as jnp

__all__ = [
    "ACTIVATIONS",
    "NORM_POSITIONS",
    "REMAT_POLICIES",
    "Dense",
    "MultiHeadAttention",
    "Mlp",
    "EncoderBlock",
    "TransformerStack",
    "AUTO_DTYPE",
    "Kernels",
    "canonical_dtype",
    "choose_kernels",
    "dot_product_attention",
    "fast_compute_dtype",
    "kernel_platform",
    "kernels_for",
]

Dtype = Any

# remat name -> jax.checkpoint policy ('none' means no rematerialisation at all).
REMAT_POLICIES = {
    "none": None,
    "full": jax.checkpoint_policies.nothing_saveable,
    "dots": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
}

_KERNEL_INIT = nn.initializers.xavier_uniform()


def exact_gelu(x: jax.Array) -> jax.Array:
    """GELU with the exact normal CDF, written with ``erf`` (as PyTorch does): the same function
    as ``nn.gelu(x, approximate=False)``, whose ``erfc`` form XLA runs ~2.5x slower on CPU.
    16-bit inputs are evaluated in float32 and rounded back: more exact, and on CPU faster than
    XLA's bf16 ``erf`` (forward+backward 2.4x)."""
    y = x.astype(jnp.promote_types(x.dtype, jnp.float32))
    return (0.5 * y * (1.0 + jax.lax.erf(y * 0.7071067811865476))).astype(x.dtype)


def _is_16_bit(dtype: Dtype) -> bool:
    """bfloat16 or float16: the compute dtypes whose matmuls accumulate in float32 here."""
    return jnp.dtype(dtype).itemsize == 2


# ---------------------------------------------------------------------------------------------
# Kernels per backend
# ---------------------------------------------------------------------------------------------

_PLATFORM_OVERRIDE: list[str] = []
KERNEL_PLATFORMS = ("cpu", "cuda", "rocm", "tpu")


@contextlib.contextmanager
def kernels_for(platform: str) -> Iterator[None]:
    """Layers traced inside this context use ``platform``'s kernels instead of the default
    backend's: to lower for another platform (``jax.jit(f).trace(...).lower(
    lowering_platforms=(platform,))``), or to run another platform's kernels on this device
    (``tools/bench.py`` compares the CPU kernels with a GPU's own)."""
    if platform not in KERNEL_PLATFORMS:
        raise ValueError(f"kernels_for({platform!r}): expected one of {KERNEL_PLATFORMS}")
    _PLATFORM_OVERRIDE.append(platform)
    try:
        yield
    finally:
        _PLATFORM_OVERRIDE.pop()


def kernel_platform() -> str:
    """The platform whose kernels the layers trace: ``kernels_for``'s, else the default
    backend's ('cpu', 'cuda', 'rocm', 'tpu'; an NVIDIA or AMD 'gpu' is told apart by its
    platform version)."""
    if _PLATFORM_OVERRIDE:
        return _PLATFORM_OVERRIDE[-1]
    backend = jax.default_backend()
    if backend != "gpu":
        return backend
    version = str(getattr(jax.devices()[0].client, "platform_version", "")).lower()
    return "rocm" if "rocm" in version else "cuda"


@dataclasses.dataclass(frozen=True)
class Kernels:
    """What a layer runs: ``dense`` 'custom' (16-bit operands, float32 sums, custom VJP) or
    'plain' (``nn.Dense`` in the compute dtype); ``attention`` 'custom' (16-bit operands,
    float32 sums and softmax, custom VJP), 'cudnn' (cuDNN fused attention) or 'xla'
    (``jax.nn.dot_product_attention``'s XLA path)."""

    dense: str
    attention: str


# cuDNN's fused attention takes head sizes that are multiples of 8 up to 128 on every GPU it
# supports (Ampere and later; 256 from Hopper on), in 16-bit dtypes only.
_CUDNN_MAX_HEAD_DIM = 128


def _cudnn_usable() -> bool:
    """On a GPU backend, whether its first device can run cuDNN's fused attention (compute
    capability 8.0 or later). Lowering for CUDA from another backend assumes it can."""
    if jax.default_backend() != "gpu":
        return True
    capability = getattr(jax.devices()[0], "compute_capability", None)
    try:
        return tuple(int(x) for x in str(capability).split(".")[:2]) >= (8, 0)
    except ValueError:
        return False


def choose_kernels(dtype: Dtype, head_dim: int | None = None,
                   platform: str | None = None) -> Kernels:
    """The kernels for compute ``dtype`` on ``platform`` (default ``kernel_platform()``).

    16-bit: CPU -> custom dense and attention (XLA's CPU bf16 -> bf16 matmuls are slow, bf16
    -> f32 ones fast); CUDA -> plain dense (cuBLAS accumulates in float32) and cuDNN attention
    when the head size suits it (``head_dim`` a multiple of 8, <= 128, and a GPU of compute
    capability >= 8.0), XLA's otherwise; TPU, ROCm and others -> plain dense, XLA attention.
    float32: plain dense and XLA attention on every platform."""
    platform = platform or kernel_platform()
    if not _is_16_bit(dtype):
        return Kernels("plain", "xla")
    if platform == "cpu":
        return Kernels("custom", "custom")
    if platform == "cuda":
        fits = head_dim is None or (head_dim % 8 == 0 and head_dim <= _CUDNN_MAX_HEAD_DIM)
        return Kernels("plain", "cudnn" if fits and _cudnn_usable() else "xla")
    return Kernels("plain", "xla")


@jax.custom_vjp
def _low_precision_dense(x: jax.Array, kernel: jax.Array, bias: jax.Array | None) -> jax.Array:
    """``x [..., K] @ kernel [K, N] + bias [N]`` with 16-bit operands accumulated in float32:
    x is in the compute dtype, kernel and bias in float32 (the parameters); the product is
    rounded to x's dtype after the bias is added."""
    y = jax.lax.dot_general(x, kernel.astype(x.dtype), (((x.ndim - 1,), (0,)), ((), ())),
                            preferred_element_type=jnp.float32)
    if bias is not None:
        y = y + bias.astype(jnp.float32)
    return y.astype(x.dtype)


def _low_precision_dense_forward(x, kernel, bias):
    return _low_precision_dense(x, kernel, bias), (x, kernel, bias)


def _low_precision_dense_backward(residuals, grad):
    """The gradient matmuls take 16-bit operands and accumulate in float32, as the forward
    does (plain autodiff would run them on float32 operands, at the float32 rate). The
    parameter gradients stay float32: nothing rounds them to 16 bits."""
    x, kernel, bias = residuals
    g = grad.astype(x.dtype)
    grad_x = jax.lax.dot_general(g, kernel.astype(x.dtype), (((g.ndim - 1,), (1,)), ((), ())),
                                 preferred_element_type=jnp.float32).astype(x.dtype)
    leading = tuple(range(x.ndim - 1))
    grad_kernel = jax.lax.dot_general(x, g, ((leading, leading), ((), ())),
                                      preferred_element_type=jnp.float32).astype(kernel.dtype)
    grad_bias = None
    if bias is not None:
        grad_bias = jnp.sum(grad.astype(jnp.float32), axis=leading).astype(bias.dtype)
    return grad_x, grad_kernel, grad_bias


_low_precision_dense.defvjp(_low_precision_dense_forward, _low_precision_dense_backward)


class Dense(nn.Dense):
    """``nn.Dense`` (same parameters, initialisers and names) whose 16-bit compute on CPU keeps
    the matmul operands in 16 bits and accumulates in float32, forward and backward, with the
    bias added before rounding. XLA's CPU backend runs bf16 x bf16 -> f32 matmuls on the bf16
    dot-product units (about 2.5x its f32 rate here) but bf16 -> bf16 ones on a slow path
    (below its f32 rate), and turns bf16 bias-gradient sums into slow tree reductions. On GPU
    and TPU (``choose_kernels``) the matmul units accumulate in float32 natively and this is
    plain ``nn.Dense`` in the compute dtype, as float32 is everywhere."""

    @nn.compact
    def __call__(self, inputs: jax.Array) -> jax.Array:
        dtype = self.dtype or inputs.dtype
        if (not _is_16_bit(dtype) or choose_kernels(dtype).dense == "plain"
                or self.dot_general is not None or self.dot_general_cls is not None):
            return super().__call__(inputs)
        kernel = self.param("kernel", self.kernel_init, (jnp.shape(inputs)[-1], self.features),
                            self.param_dtype)
        bias = (self.param("bias", self.bias_init, (self.features,), self.param_dtype)
                if self.use_bias else None)
        return _low_precision_dense(inputs.astype(dtype), kernel, bias)


def _quick_gelu(x: jax.Array) -> jax.Array:
    return x * jax.nn.sigmoid(1.702 * x)


# activation name -> function (the names used by Hugging Face / open_clip configs, normalised).
ACTIVATIONS = {
    "gelu": exact_gelu,
    "quick_gelu": _quick_gelu,
    "gelu_tanh": lambda x: nn.gelu(x, approximate=True),
}

NORM_POSITIONS = ("pre", "post")


def check_architecture(where: str, activation: str, norm_position: str) -> None:
    """ValueError naming the bad option and the valid ones (configs call this early)."""
    if activation not in ACTIVATIONS:
        raise ValueError(f"{where}: activation={activation!r}; expected one of "
                         f"{sorted(ACTIVATIONS)}")
    if norm_position not in NORM_POSITIONS:
        raise ValueError(f"{where}: norm_position={norm_position!r}; expected one of "
                         f"{NORM_POSITIONS}")


AUTO_DTYPE = "auto"


def fast_compute_dtype(backend: str | None = None) -> str:
    """The faster compute dtype on ``backend`` (default: JAX's): 'bfloat16' on GPUs and TPUs and
    on CPUs with bf16 dot-product units (AVX512-BF16 or AMX), where the bf16 train step runs
    about 1.9x the float32 one (BENCHMARKS.md); 'float32' on other CPUs, which would emulate
    bf16 matmuls through float32 and gain nothing."""
    backend = backend or jax.default_backend()
    if backend != "cpu":
        return "bfloat16"
    return "bfloat16" if _cpu_has_bf16_units() else "float32"


@functools.lru_cache(maxsize=1)
def _cpu_has_bf16_units(cpuinfo: str = "/proc/cpuinfo") -> bool:
    try:
        with open(cpuinfo) as f:
            text = f.read()
    except OSError:  # not Linux: no way to tell, so no bf16
        return False
    return re.search(r"\b(avx512_bf16|amx_bf16)\b", text) is not None


def canonical_dtype(dtype: Any) -> jnp.dtype:
    """'float32' / 'bfloat16' / 'auto' (``fast_compute_dtype``) / jnp.bfloat16 / np.dtype ->
    jnp.dtype (configs store strings)."""
    if isinstance(dtype, str) and dtype == AUTO_DTYPE:
        dtype = fast_compute_dtype()
    try:
        return jnp.dtype(dtype)
    except TypeError:
        raise ValueError(f"unknown dtype {dtype!r}; use 'float32', 'bfloat16' or 'auto'") from None


def _attention_logits(q, k, key_mask, causal):
    """[B, T, N, H] x [B, S, N, H] -> scaled, masked float32 logits [B, N, T, S]."""
    logits = jnp.einsum("btnh,bsnh->bnts", q, k,
                        preferred_element_type=jnp.float32) * q.shape[-1] ** -0.5
    keep = key_mask
    if causal:
        t, s = logits.shape[-2:]
        below = jnp.tril(jnp.ones((t, s), bool))
        keep = below if keep is None else keep & below
    if keep is None:
        return logits
    return jnp.where(keep, logits, jnp.finfo(jnp.float32).min)


def _attention_forward(q, k, v, key_mask, causal):
    probs = jax.nn.softmax(_attention_logits(q, k, key_mask, causal), axis=-1)  # float32
    out = jnp.einsum("bnts,bsnh->btnh", probs.astype(v.dtype), v,
                     preferred_element_type=jnp.float32)
    return out.astype(q.dtype), (q, k, v, probs)


@functools.partial(jax.custom_vjp, nondiff_argnums=(4,))
def _low_precision_attention(q, k, v, key_mask, causal):
    """softmax(q k^T / sqrt(H)) v for 16-bit q, k, v [B, T, N, H]: every matmul takes 16-bit
    operands and accumulates in float32, forward and backward, and the softmax runs in
    float32. ``key_mask`` [B, 1, 1, S] bool or None. (``jax.nn.dot_product_attention``'s XLA
    path rounds the probabilities-times-values product to 16 bits, a slow matmul form on CPU,
    and autodiff upcasts its backward matmuls to float32: forward+backward 1.6x slower at
    197 tokens.)"""
    return _attention_forward(q, k, v, key_mask, causal)[0]


def _low_precision_attention_backward(causal, residuals, grad):
    q, k, v, probs = residuals
    dtype = q.dtype
    grad = grad.astype(dtype)
    grad_v = jnp.einsum("bnts,btnh->bsnh", probs.astype(dtype), grad,
                        preferred_element_type=jnp.float32).astype(dtype)
    grad_probs = jnp.einsum("btnh,bsnh->bnts", grad, v, preferred_element_type=jnp.float32)
    grad_logits = probs * (grad_probs - jnp.sum(grad_probs * probs, axis=-1, keepdims=True))
    grad_logits = (grad_logits * q.shape[-1] ** -0.5).astype(dtype)
    grad_q = jnp.einsum("bnts,bsnh->btnh", grad_logits, k,
                        preferred_element_type=jnp.float32).astype(dtype)
    grad_k = jnp.einsum("bnts,btnh->bsnh", grad_logits, q,
                        preferred_element_type=jnp.float32).astype(dtype)
    return grad_q, grad_k, grad_v, None


_low_precision_attention.defvjp(_attention_forward, _low_precision_attention_backward)


def _cudnn_attention(q, k, v, key_mask, causal):
    """cuDNN's fused attention. The key mask becomes per-sequence key lengths (cuDNN's padding
    mask): masks must be right-padding, as every mask in this library is (the tokenizer pads on
    the right). cuDNN's training kernels take even sequence lengths only, so an odd length (a
    ViT's 196 patches + class token) is padded by one query/key row that no real token sees
    (the padded key lies beyond every sequence's length) and that is cut off again."""
    b, t = q.shape[:2]
    lengths = None
    if key_mask is not None:
        keep = jnp.broadcast_to(key_mask, (b, 1, 1, key_mask.shape[-1])).reshape(b, -1)
        # An all-padding sequence (never fed by this library) attends to its first token.
        lengths = jnp.maximum(jnp.sum(keep, axis=-1, dtype=jnp.int32), 1)
    odd = t % 2
    if odd:
        q, k, v = (jnp.pad(x, ((0, 0), (0, 1), (0, 0), (0, 0))) for x in (q, k, v))
        if lengths is None:
            lengths = jnp.full((b,), t, jnp.int32)
    out = jax.nn.dot_product_attention(q, k, v, key_value_seq_lengths=lengths, is_causal=causal,
                                       implementation="cudnn")
    return out[:, :t] if odd else out


def dot_product_attention(q, k, v, key_mask=None, causal: bool = False) -> jax.Array:
    """Multi-head softmax attention, [B, T, N, H] -> [B, T, N, H], with the kernel
    ``choose_kernels`` picks for this dtype and platform: ``_low_precision_attention``
    (float32 sums, 16-bit on CPU), cuDNN's fused attention (16-bit on NVIDIA GPUs) or
    ``jax.nn``'s XLA path. ``key_mask`` [B, 1, 1, S] bool (True = real key, right-padded)."""
    choice = choose_kernels(q.dtype, q.shape[-1]).attention
    if choice == "custom":
        return _low_precision_attention(q, k, v, key_mask, causal)
    if choice == "cudnn":
        return _cudnn_attention(q, k, v, key_mask, causal)
    return jax.nn.dot_product_attention(q, k, v, mask=key_mask, is_causal=causal)


class MultiHeadAttention(nn.Module):
    """Self-attention with one fused QKV projection, via ``dot_product_attention``.

    x [B, T, D] -> [B, T, D]. ``mask`` [B, T] (True = real token, right-padded) masks *keys*, so
    padding never influences real tokens; ``causal`` adds a lower-triangular mask.
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
        qkv = Dense(
            3 * D, dtype=self.dtype, param_dtype=self.param_dtype, kernel_init=_KERNEL_INIT,
            name="qkv",
        )(x)
        q, k, v = jnp.split(qkv.reshape(B, T, 3, self.num_heads, head_dim), 3, axis=2)
        q, k, v = (t.squeeze(2) for t in (q, k, v))  # [B, T, N, H]
        key_mask = None if mask is None else mask.astype(bool)[:, None, None, :]  # [B,1,1,T]
        y = dot_product_attention(q, k, v, key_mask, self.causal)
        return Dense(
            D, dtype=self.dtype, param_dtype=self.param_dtype, kernel_init=_KERNEL_INIT,
            name="out",
        )(y.reshape(B, T, D))


class Mlp(nn.Module):
    """Position-wise MLP: Dense(hidden) -> activation -> Dense(D). [..., D] -> [..., D]."""

    hidden_dim: int
    activation: str = "gelu"
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        dense = dict(dtype=self.dtype, param_dtype=self.param_dtype, kernel_init=_KERNEL_INIT)
        h = Dense(self.hidden_dim, name="fc1", **dense)(x)
        h = ACTIVATIONS[self.activation](h)
        return Dense(x.shape[-1], name="fc2", **dense)(h)


class EncoderBlock(nn.Module):
    """Transformer block. [B, T, D] -> [B, T, D].

    norm_position='pre' (default; ViT, CLIP): x + Attn(LN(x)), then x + MLP(LN(x)).
    norm_position='post' (BERT): LN(x + Attn(x)), then LN(x + MLP(x)).
    The two LayerNorms are ``ln_attn`` and ``ln_mlp`` in both cases.
    """

    num_heads: int
    mlp_ratio: float = 4.0
    causal: bool = False
    mlp_dim: int = 0  # MLP hidden size; 0 = int(D * mlp_ratio)
    activation: str = "gelu"
    norm_position: str = "pre"
    layer_norm_eps: float = 1e-6
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, mask: jax.Array | None = None) -> jax.Array:
        common = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        ln_attn = nn.LayerNorm(epsilon=self.layer_norm_eps, name="ln_attn", **common)
        ln_mlp = nn.LayerNorm(epsilon=self.layer_norm_eps, name="ln_mlp", **common)
        attn = MultiHeadAttention(self.num_heads, causal=self.causal, name="attn", **common)
        hidden = self.mlp_dim or int(x.shape[-1] * self.mlp_ratio)
        mlp = Mlp(hidden, activation=self.activation, name="mlp", **common)
        if self.norm_position == "post":
            x = ln_attn(x + attn(x, mask))
            return ln_mlp(x + mlp(x))
        x = x + attn(ln_attn(x), mask)
        return x + mlp(ln_mlp(x))


class _ScanBlock(EncoderBlock):
    """EncoderBlock with the (carry, out) signature nn.scan needs; same parameter tree."""

    def __call__(self, x, mask=None):
        return super().__call__(x, mask), None


class TransformerStack(nn.Module):
    """``depth`` blocks, optionally rematerialised and/or scanned. [B, T, D] -> [B, T, D].

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
    mlp_dim: int = 0
    activation: str = "gelu"
    norm_position: str = "pre"
    layer_norm_eps: float = 1e-6
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, mask: jax.Array | None = None) -> jax.Array:
        check_architecture("TransformerStack", self.activation, self.norm_position)
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
            mlp_dim=self.mlp_dim, activation=self.activation, norm_position=self.norm_position,
            layer_norm_eps=self.layer_norm_eps, dtype=self.dtype, param_dtype=self.param_dtype,
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

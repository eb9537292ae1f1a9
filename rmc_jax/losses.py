"""The training losses of region-aware CLIP (the four of its recipe, the sentence-image loss, and
two other image-report losses: the MedCLIP baseline's and SigLIP's pairwise sigmoid), as pure JAX
functions other code can import.

Every loss takes **L2-normalised** embeddings (similarity s(a, b) = a . b), a temperature
tau > 0, and returns a float32 scalar: the mean over valid items. Logits are computed in
float32 even for bfloat16 inputs (float64 inputs, under ``jax.enable_x64``, stay float64).
All functions are jittable and vmappable.

Contrastive losses scale three ways, all giving the same value and gradients:

* dense (default): the full logit matrix; simplest, fine up to a few thousand pairs.
* tiled (``chunk_size=...``): rows in blocks of ``chunk_size`` with a custom VJP that
  recomputes logits in the backward pass; memory is linear in the batch size.
* sharded (``axis_name=...``, inside ``jax.shard_map``): each device holds its local shard and
  the loss of the **global** batch is returned on every device. ``backend='gather'``
  all-gathers the other side (local rows x global columns, like open_clip's local loss);
  ``backend='ring'`` passes the other side around the device ring with ``ppermute`` and an
  online log-sum-exp (Inf-CL style), never holding more than one block of logits.

Multi-positive InfoNCE: where several candidates share an id with the anchor, they are all
positives together: loss_i = logsumexp_{j valid} s_ij/tau - logsumexp_{j positive} s_ij/tau.
With unique ids this is the usual InfoNCE. A candidate may also hold a set of ids (the
sentence-image loss: an image states many sentences); it is then a positive of every anchor
whose id is in its set. The sigmoid loss takes the same ids (a pair of equal
ids is a positive) and scales the same three ways; as a plain sum over pairs it needs no online
log-sum-exp, and its tiled form is blocks of rows under ``jax.checkpoint``.

One module of about 700 lines on purpose: the public losses (``global_contrastive_loss`` on)
are short and all stand on the two kernels above them (dense, tiled, gathered and ring-sharded
row losses, the InfoNCE one with its custom VJP); apart, the kernels' private helpers would only
move behind an import.
"""

from __future__ import annotations

import functools
from typing import Mapping

import jax
import jax.numpy as jnp

Array = jax.Array

# A finite stand-in for -inf: keeps masked log-sum-exps and their gradients free of NaNs.
_MASKED = -1e30
BACKENDS = ("gather", "ring")


# ---------------------------------------------------------------------------------------------
# Row-wise multi-positive InfoNCE: the kernel every contrastive loss reduces to.
# ---------------------------------------------------------------------------------------------


def _compute_dtype(*arrays):
    """float32 for bfloat16/float16/float32 inputs; float64 only when an input is float64."""
    return jnp.promote_types(jnp.float32, jnp.result_type(*arrays))


def _similarities(anchors: Array, candidates: Array) -> Array:
    """[N, E] x [M, E] -> [N, M] dot products accumulated in (at least) float32."""
    return jnp.einsum("ne,me->nm", anchors, candidates,
                      preferred_element_type=_compute_dtype(anchors, candidates))


def _masked_logsumexp(logits: Array, mask: Array, axis: int) -> Array:
    """Log-sum-exp over entries where ``mask``; rows with no such entry give ~_MASKED."""
    return jax.nn.logsumexp(jnp.where(mask, logits, _MASKED), axis=axis)


def _positives(anchor_ids: Array, candidate_ids: Array, candidate_valid: Array) -> Array:
    """[N, M] bool: valid candidate j is a positive of anchor i when their ids are equal, or,
    for candidates with a set of ids ([M, K]), when anchor i's id is one of candidate j's."""
    if candidate_ids.ndim == 1:
        equal = anchor_ids[:, None] == candidate_ids[None, :]
    else:
        equal = (anchor_ids[:, None, None] == candidate_ids[None, :, :]).any(axis=-1)
    return equal & candidate_valid[None, :]


def _dense_row_losses(anchors, candidates, anchor_ids, candidate_ids, candidate_valid, inv_tau):
    """Per-anchor loss [N] from the full [N, M] logit matrix (plain autodiff)."""
    logits = _similarities(anchors, candidates) * inv_tau
    positive = _positives(anchor_ids, candidate_ids, candidate_valid)
    lse_all = _masked_logsumexp(logits, candidate_valid[None, :], axis=1)
    lse_pos = _masked_logsumexp(logits, positive, axis=1)
    return lse_all - lse_pos


def _pad_rows(x: Array, size: int, value=0) -> Array:
    pad = size - x.shape[0]
    return jnp.pad(x, [(0, pad)] + [(0, 0)] * (x.ndim - 1), constant_values=value)


def _row_blocks(x: Array, chunk_size: int, value=0) -> Array:
    """[N, ...] -> [ceil(N / chunk), chunk, ...], padded with ``value``."""
    n_blocks = -(-x.shape[0] // chunk_size)
    return _pad_rows(x, n_blocks * chunk_size, value).reshape(n_blocks, chunk_size, *x.shape[1:])


@functools.partial(jax.custom_vjp, nondiff_argnums=(7, 8))
def _tiled_losses(anchors, candidates, inv_tau, anchor_ids, candidate_ids, anchor_valid,
                  candidate_valid, chunk_size, with_columns):
    """Row losses [N] (anchor -> candidates) and, if ``with_columns``, column losses [M]
    (candidate -> anchors) of the logits inv_tau * anchors @ candidates.T, computed in blocks
    of ``chunk_size`` anchor rows so that no [N, M] array ever exists; the backward pass
    recomputes each block from the saved log-sum-exps.
    """
    out, _ = _tiled_fwd(anchors, candidates, inv_tau, anchor_ids, candidate_ids, anchor_valid,
                        candidate_valid, chunk_size, with_columns)
    return out


def _tiled_fwd(anchors, candidates, inv_tau, anchor_ids, candidate_ids, anchor_valid,
               candidate_valid, chunk_size, with_columns):
    m = candidates.shape[0]
    blocks = (_row_blocks(anchors, chunk_size), _row_blocks(anchor_ids, chunk_size, -1),
              _row_blocks(anchor_valid, chunk_size, False))

    def block(col_stats, xs):
        a, ids, valid = xs
        logits = _similarities(a, candidates) * inv_tau                        # [c, M]
        positive = _positives(ids, candidate_ids, candidate_valid)
        row_lse = (_masked_logsumexp(logits, candidate_valid[None, :], axis=1),
                   _masked_logsumexp(logits, positive, axis=1))
        if with_columns:
            col_positive = positive & valid[:, None]
            col_stats = (_online_logsumexp(col_stats[0], logits, valid[:, None]),
                         _online_logsumexp(col_stats[1], logits, col_positive))
        return col_stats, row_lse

    dtype = _compute_dtype(anchors, candidates, inv_tau)
    zeros = _zeros_varying_like((m,), dtype, anchors, candidates, inv_tau, anchor_valid,
                                candidate_valid)
    empty = (zeros + _MASKED, zeros)
    col_stats, (row_all, row_pos) = jax.lax.scan(block, (empty, empty), blocks)
    n = anchors.shape[0]
    row_all, row_pos = row_all.reshape(-1)[:n], row_pos.reshape(-1)[:n]
    row_losses = row_all - row_pos
    if with_columns:
        col_all, col_pos = (_finish_logsumexp(*stats) for stats in col_stats)
        col_losses = col_all - col_pos
    else:
        col_all = col_pos = col_losses = jnp.zeros((m,), dtype)
    residuals = (anchors, candidates, inv_tau, anchor_ids, candidate_ids, anchor_valid,
                 candidate_valid, row_all, row_pos, col_all, col_pos)
    return (row_losses, col_losses), residuals


def _online_logsumexp(stats, logits, mask):
    """Fold a block of rows into running column (max, sum-of-exp) statistics, both [M]."""
    running_max, running_sum = stats
    masked = jnp.where(mask, logits, _MASKED)
    new_max = jnp.maximum(running_max, masked.max(axis=0))
    new_sum = (running_sum * jnp.exp(running_max - new_max)
               + jnp.where(mask, jnp.exp(masked - new_max), 0.0).sum(axis=0))
    return new_max, new_sum


def _finish_logsumexp(running_max, running_sum):
    """(max, sum-of-exp) -> log-sum-exp; ~_MASKED where nothing was summed (no NaN, no inf)."""
    has_terms = running_sum > 0
    return jnp.where(has_terms, running_max + jnp.log(jnp.where(has_terms, running_sum, 1.0)),
                     _MASKED)


def _tiled_bwd(chunk_size, with_columns, residuals, cotangents):
    (anchors, candidates, inv_tau, anchor_ids, candidate_ids, anchor_valid, candidate_valid,
     row_all, row_pos, col_all, col_pos) = residuals
    dtype = _compute_dtype(anchors, candidates, inv_tau)
    g_rows, g_cols = (g.astype(dtype) for g in cotangents)
    n = anchors.shape[0]
    blocks = (_row_blocks(anchors, chunk_size), _row_blocks(anchor_ids, chunk_size, -1),
              _row_blocks(anchor_valid, chunk_size, False), _row_blocks(row_all, chunk_size),
              _row_blocks(row_pos, chunk_size), _row_blocks(g_rows, chunk_size))

    def block(carry, xs):
        d_candidates, d_inv_tau = carry
        a, ids, valid, lse_all, lse_pos, g = xs
        similarities = _similarities(a, candidates)
        logits = similarities * inv_tau
        positive = _positives(ids, candidate_ids, candidate_valid)
        # d loss_i / d logit_ij = softmax over valid j - softmax over positive j.
        d_logits = g[:, None] * (
            jnp.where(candidate_valid[None, :], jnp.exp(logits - lse_all[:, None]), 0.0)
            - jnp.where(positive, jnp.exp(logits - lse_pos[:, None]), 0.0))
        if with_columns:
            d_logits += g_cols[None, :] * (
                jnp.where(valid[:, None], jnp.exp(logits - col_all[None, :]), 0.0)
                - jnp.where(positive & valid[:, None], jnp.exp(logits - col_pos[None, :]), 0.0))
        d_inv_tau += (d_logits * similarities).sum()
        d_similarities = (d_logits * inv_tau).astype(a.dtype)
        d_a = jnp.einsum("nm,me->ne", d_similarities, candidates, preferred_element_type=dtype)
        d_candidates += jnp.einsum("nm,ne->me", d_similarities, a, preferred_element_type=dtype)
        return (d_candidates, d_inv_tau), d_a

    inputs = (anchors, candidates, inv_tau, g_rows, g_cols)
    start = (_zeros_varying_like(candidates.shape, dtype, *inputs),
             _zeros_varying_like((), dtype, *inputs))
    (d_candidates, d_inv_tau), d_anchors = jax.lax.scan(block, start, blocks)
    d_anchors = d_anchors.reshape(-1, anchors.shape[1])[:n]
    return (d_anchors.astype(anchors.dtype), d_candidates.astype(candidates.dtype),
            d_inv_tau.astype(inv_tau.dtype), None, None, None, None)


_tiled_losses.defvjp(_tiled_fwd, _tiled_bwd)


def _row_losses(anchors, candidates, anchor_ids, candidate_ids, candidate_valid, inv_tau,
                chunk_size):
    """Per-anchor multi-positive InfoNCE losses [N] against all valid candidates."""
    if chunk_size is None:
        return _dense_row_losses(anchors, candidates, anchor_ids, candidate_ids,
                                 candidate_valid, inv_tau)
    anchor_valid = jnp.ones(anchors.shape[:1], bool)
    rows, _ = _tiled_losses(anchors, candidates, inv_tau, anchor_ids, candidate_ids, anchor_valid,
                            candidate_valid, chunk_size, False)
    return rows


def _ring_row_losses(anchors, candidates, anchor_ids, candidate_ids, candidate_valid, inv_tau,
                     axis_name):
    """Per-anchor losses [N_local] against the candidates of all devices on ``axis_name``.

    The candidate shard travels around the device ring (``ppermute``); each step folds one
    [N_local, M_local] block into online log-sum-exps. Each step is rematerialised, so the
    backward pass keeps only the travelling shards, never a row of global logits.
    """
    n_devices = jax.lax.axis_size(axis_name)
    shift = [(i, (i + 1) % n_devices) for i in range(n_devices)]
    n = anchors.shape[0]
    dtype = _compute_dtype(anchors, candidates, inv_tau)
    start = (jnp.full((n,), _MASKED, dtype), jnp.zeros((n,), dtype))

    @jax.checkpoint
    def fold(stats, shard):
        cands, ids, valid = shard
        logits = _similarities(anchors, cands) * inv_tau
        positive = _positives(anchor_ids, ids, valid)
        stats_all = _online_logsumexp(stats[0], logits.T, valid[:, None])
        stats_pos = _online_logsumexp(stats[1], logits.T, positive.T)
        return stats_all, stats_pos

    def step(carry, _):
        stats, shard = carry
        shard = jax.lax.ppermute(shard, axis_name, shift)
        return (fold(stats, shard), shard), None

    shard = (candidates, candidate_ids, candidate_valid)
    stats = fold((start, start), shard)
    (stats, _), _ = jax.lax.scan(step, (stats, shard), None, length=n_devices - 1)
    lse_all, lse_pos = (_finish_logsumexp(*s) for s in stats)
    return lse_all - lse_pos


def _varying_axes(x: Array) -> frozenset:
    """Mesh axes over which ``x`` varies inside shard_map (empty outside, or unchecked)."""
    return getattr(getattr(jax.typeof(x), "manual_axis_type", None), "varying", frozenset())


def _as_varying(x: Array, axis_names) -> Array:
    """Mark ``x`` as varying over ``axis_names`` inside shard_map (no-op where it already is)."""
    names = axis_names if isinstance(axis_names, (tuple, frozenset, set)) else (axis_names,)
    missing = tuple(name for name in names if name not in _varying_axes(x))
    return jax.lax.pcast(x, missing, to="varying") if missing else x


def _zeros_varying_like(shape, dtype, *like: Array) -> Array:
    """Zeros usable as a scan carry that accumulates values computed from ``like``."""
    axes = frozenset().union(*(_varying_axes(x) for x in like))
    return _as_varying(jnp.zeros(shape, dtype), tuple(sorted(axes)))


def _sharded_rows(rows, ring, anchors, candidates, anchor_ids, candidate_ids, candidate_valid,
                  scalars, axis_name, backend, chunk_size):
    """Local anchors against the global candidate set, by the chosen backend: ``rows(anchors,
    candidates, anchor_ids, candidate_ids, candidate_valid, *scalars, chunk_size)`` on the
    gathered candidates, or ``ring(..., *scalars, axis_name)`` around the device ring."""
    # Every input becomes device-varying (the scalars too: their gradients are sums of
    # per-device contributions, which the transpose of this cast performs).
    anchors, candidates, anchor_ids, candidate_ids, candidate_valid, *scalars = (
        _as_varying(x, axis_name)
        for x in (anchors, candidates, anchor_ids, candidate_ids, candidate_valid, *scalars))
    if backend == "gather":
        gather = functools.partial(jax.lax.all_gather, axis_name=axis_name, tiled=True)
        return rows(anchors, gather(candidates), anchor_ids, gather(candidate_ids),
                    gather(candidate_valid), *scalars, chunk_size)
    if backend == "ring":
        return ring(anchors, candidates, anchor_ids, candidate_ids, candidate_valid, *scalars,
                    axis_name)
    raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")


def _sharded_row_losses(anchors, candidates, anchor_ids, candidate_ids, candidate_valid, inv_tau,
                        axis_name, backend, chunk_size):
    """Multi-positive InfoNCE of the local anchors against the global candidate set."""
    return _sharded_rows(_row_losses, _ring_row_losses, anchors, candidates, anchor_ids,
                         candidate_ids, candidate_valid, (inv_tau,), axis_name, backend,
                         chunk_size)


# ---------------------------------------------------------------------------------------------
# Pairwise sigmoid losses (SigLIP): a sum over pairs, so every backend is a sum of blocks.
# ---------------------------------------------------------------------------------------------


def _sigmoid_pair_losses(anchors, candidates, anchor_ids, candidate_ids, candidate_valid, inv_tau,
                         bias):
    """[N]: sum over valid candidates j of -log sigmoid(z_ij (s_ij / tau + bias)), z_ij = +1
    where the ids match (positives), -1 otherwise."""
    logits = _similarities(anchors, candidates) * inv_tau + bias
    signed = jnp.where(anchor_ids[:, None] == candidate_ids[None, :], logits, -logits)
    return jnp.where(candidate_valid[None, :], -jax.nn.log_sigmoid(signed), 0.0).sum(axis=1)


def _sigmoid_row_losses(anchors, candidates, anchor_ids, candidate_ids, candidate_valid, inv_tau,
                        bias, chunk_size):
    """``_sigmoid_pair_losses``, dense or (``chunk_size``) in rematerialised blocks of anchor
    rows, so that the backward pass never holds more than one [chunk, M] block of logits."""
    if chunk_size is None:
        return _sigmoid_pair_losses(anchors, candidates, anchor_ids, candidate_ids,
                                    candidate_valid, inv_tau, bias)

    def rows(xs):
        a, ids = xs
        return _sigmoid_pair_losses(a, candidates, ids, candidate_ids, candidate_valid, inv_tau,
                                    bias)

    blocks = (_row_blocks(anchors, chunk_size), _row_blocks(anchor_ids, chunk_size, -1))
    return jax.lax.map(jax.checkpoint(rows), blocks).reshape(-1)[:anchors.shape[0]]


def _ring_sigmoid_row_losses(anchors, candidates, anchor_ids, candidate_ids, candidate_valid,
                             inv_tau, bias, axis_name):
    """``_sigmoid_pair_losses`` against the candidates of all devices on ``axis_name``, the
    candidate shard travelling around the ring (``ppermute``), each step rematerialised."""
    n_devices = jax.lax.axis_size(axis_name)
    shift = [(i, (i + 1) % n_devices) for i in range(n_devices)]

    @jax.checkpoint
    def fold(total, shard):
        cands, ids, valid = shard
        return total + _sigmoid_pair_losses(anchors, cands, anchor_ids, ids, valid, inv_tau, bias)

    def step(carry, _):
        total, shard = carry
        shard = jax.lax.ppermute(shard, axis_name, shift)
        return (fold(total, shard), shard), None

    shard = (candidates, candidate_ids, candidate_valid)
    total = _sigmoid_pair_losses(anchors, candidates, anchor_ids, candidate_ids, candidate_valid,
                                 inv_tau, bias)
    (total, _), _ = jax.lax.scan(step, (total, shard), None, length=n_devices - 1)
    return total


def _masked_mean(values: Array, mask: Array, axis_name=None) -> Array:
    """Mean of ``values`` where ``mask``, over the global batch when ``axis_name`` is set."""
    total = jnp.where(mask, values, 0.0).sum()
    count = mask.sum(dtype=total.dtype)
    if axis_name is not None:
        total, count = jax.lax.psum((total, count), axis_name)
    return (total / jnp.maximum(count, 1.0)).astype(_compute_dtype(values))


def _global_offset(n_local: int, axis_name) -> Array:
    """Index of this shard's first row in the global batch."""
    if axis_name is None:
        return jnp.int32(0)
    return jax.lax.axis_index(axis_name).astype(jnp.int32) * n_local


def _check_pair(name_a, a, name_b, b, rank):
    if a.ndim != rank or a.shape != b.shape:
        raise ValueError(f"{name_a} and {name_b} must have the same shape of rank {rank}; "
                         f"got {name_a}{a.shape} and {name_b}{b.shape}")


def _pair_ids_and_mask(n: int, pair_mask, pair_ids, axis_name) -> tuple[Array, Array]:
    """The image-report losses' [N] pair ids (default: each pair its own, unique over the global
    batch) and [N] bool validity (default: all), after checking the given ones' shapes."""
    for name, given in (("pair_mask", pair_mask), ("pair_ids", pair_ids)):
        if given is not None and given.shape != (n,):
            raise ValueError(f"{name} must have shape [N] = {(n,)}, got {given.shape}")
    ids = (jnp.arange(n, dtype=jnp.int32) + _global_offset(n, axis_name) if pair_ids is None
           else pair_ids.astype(jnp.int32))
    valid = jnp.ones((n,), bool) if pair_mask is None else pair_mask.astype(bool)
    return ids, valid


def _inverse_temperature(temperature) -> Array:
    temperature = jnp.asarray(temperature)
    return 1.0 / temperature.astype(_compute_dtype(temperature))


# ---------------------------------------------------------------------------------------------
# Public losses.
# ---------------------------------------------------------------------------------------------


def global_contrastive_loss(img: Array, txt: Array, temperature, *, pair_mask: Array | None = None,
                            pair_ids: Array | None = None, axis_name=None, backend: str = "gather",
                            chunk_size: int | None = None) -> Array:
    """Symmetric image-report InfoNCE: 0.5 * (CE(image -> text) + CE(text -> image)).

    Args:
      img: [N, E] L2-normalised image embeddings; row i is paired with ``txt[i]``.
      txt: [N, E] L2-normalised report embeddings.
      temperature: scalar tau > 0 (may be traced; gradients flow to it).
      pair_mask: optional [N] bool, False for pairs that are left out entirely, neither
        anchors nor negatives (e.g. an image without report text, whose "report" would be
        the same empty text as every other such image's).
      pair_ids: optional [N] int; pairs that share an id are positives of each other in both
        directions (multi-positive InfoNCE), e.g. normal studies, whose reports say the same in
        other words. Default: every pair its own id. Under ``axis_name``, the local shard of ids
        over the global batch.
      axis_name: inside ``jax.shard_map``, the mesh axis the batch is split over; ``img`` and
        ``txt`` are then the local shards and the loss of the global batch is returned.
      backend: 'gather' or 'ring' (only used with ``axis_name``).
      chunk_size: rows per block for the memory-linear tiled computation (None = dense).
    Returns:
      float32 scalar, mean over the valid pairs of the global batch (0 when there are none).
    """
    _check_pair("img", img, "txt", txt, 2)
    inv_tau = _inverse_temperature(temperature)
    ids, valid = _pair_ids_and_mask(img.shape[0], pair_mask, pair_ids, axis_name)
    if axis_name is None and chunk_size is not None:
        # One tiled pass gives both directions from the same logit blocks.
        i2t, t2i = _tiled_losses(img, txt, inv_tau, ids, ids, valid, valid, chunk_size, True)
    elif axis_name is None:
        i2t = _dense_row_losses(img, txt, ids, ids, valid, inv_tau)
        t2i = _dense_row_losses(txt, img, ids, ids, valid, inv_tau)
    else:
        row = functools.partial(_sharded_row_losses, inv_tau=inv_tau, axis_name=axis_name,
                                backend=backend, chunk_size=chunk_size)
        i2t = row(img, txt, ids, ids, valid)
        t2i = row(txt, img, ids, ids, valid)
    return 0.5 * (_masked_mean(i2t, valid, axis_name) + _masked_mean(t2i, valid, axis_name))


def sigmoid_contrastive_loss(img: Array, txt: Array, temperature, bias, *,
                             pair_mask: Array | None = None, pair_ids: Array | None = None,
                             axis_name=None, backend: str = "gather",
                             chunk_size: int | None = None) -> Array:
    """SigLIP's pairwise sigmoid image-report loss (Zhai et al. 2023): each image-report pair of
    the batch is its own binary decision, match or not, with no softmax over the batch:

        loss = -(1 / N) sum_i sum_j log sigmoid(z_ij * (s_ij / tau + bias))

    with z_ij = +1 where report j is a positive of image i (its own report, or one that shares
    its id) and -1 otherwise, sums over valid pairs and N the number of valid images. Every pair
    counts once, so the image -> text and text -> image directions are the same sum. SigLIP
    learns tau and the bias, starting at tau = 0.1 and bias = -10 (the bias offsets the many
    negatives of a large batch; ``ModelConfig.init_logit_bias``).

    Args:
      img: [N, E] L2-normalised image embeddings; row i is paired with ``txt[i]``.
      txt: [N, E] L2-normalised report embeddings.
      temperature: scalar tau > 0; bias: scalar added to every logit (both may be traced;
        gradients flow to them).
      pair_mask, pair_ids, axis_name, backend, chunk_size: as in ``global_contrastive_loss``.
    Returns:
      float32 scalar, the sum over each valid image's pairs, averaged over the valid images of
      the global batch (0 when there are none).
    """
    _check_pair("img", img, "txt", txt, 2)
    inv_tau = _inverse_temperature(temperature)
    bias = jnp.asarray(bias).astype(inv_tau.dtype)
    if bias.shape != ():
        raise ValueError(f"bias must be a scalar, got shape {bias.shape}")
    ids, valid = _pair_ids_and_mask(img.shape[0], pair_mask, pair_ids, axis_name)
    if axis_name is None:
        rows = _sigmoid_row_losses(img, txt, ids, ids, valid, inv_tau, bias, chunk_size)
    else:
        rows = _sharded_rows(_sigmoid_row_losses, _ring_sigmoid_row_losses, img, txt, ids, ids,
                             valid, (inv_tau, bias), axis_name, backend, chunk_size)
    return _masked_mean(rows, valid, axis_name)


def roi_contrastive_loss(roi: Array, cap: Array, roi_mask: Array, temperature, *,
                         caption_ids: Array | None = None, axis_name=None,
                         backend: str = "gather", chunk_size: int | None = None) -> Array:
    """Region -> caption InfoNCE over all valid regions of the (global) batch.

    The positive of region (b, r) is caption (b, r); every other valid caption is a negative.
    Masked regions are neither anchors nor negatives.

    Args:
      roi: [B, R, E] L2-normalised region embeddings (padded).
      cap: [B, R, E] L2-normalised caption embeddings, one per region.
      roi_mask: [B, R] bool, True for real regions.
      temperature: scalar tau > 0.
      caption_ids: optional [B, R] int; regions whose captions share an id are positives of
        each other (multi-positive InfoNCE), so identical sentences are not pushed apart.
        Ids must be comparable across the global batch (e.g. a hash of the caption text).
      axis_name, backend, chunk_size: as in ``global_contrastive_loss``.
    Returns:
      float32 scalar, mean over valid regions of the global batch (0 when there are none).
    """
    _check_pair("roi", roi, "cap", cap, 3)
    b, r, e = roi.shape
    if roi_mask.shape != (b, r):
        raise ValueError(f"roi_mask must have shape [B, R] = {(b, r)}, got {roi_mask.shape}")
    valid = roi_mask.reshape(-1).astype(bool)
    if caption_ids is None:
        ids = jnp.arange(b * r, dtype=jnp.int32) + _global_offset(b * r, axis_name)
    else:
        if caption_ids.shape != (b, r):
            raise ValueError(f"caption_ids must have shape [B, R] = {(b, r)}, "
                             f"got {caption_ids.shape}")
        ids = caption_ids.reshape(-1).astype(jnp.int32)
    inv_tau = _inverse_temperature(temperature)
    anchors, candidates = roi.reshape(b * r, e), cap.reshape(b * r, e)
    if axis_name is None:
        losses = _row_losses(anchors, candidates, ids, ids, valid, inv_tau, chunk_size)
    else:
        losses = _sharded_row_losses(anchors, candidates, ids, ids, valid, inv_tau, axis_name,
                                     backend, chunk_size)
    return _masked_mean(losses, valid, axis_name)


def sentence_image_loss(img: Array, sent: Array, sentence_ids: Array, image_sentence_ids: Array,
                        temperature, *, axis_name=None, backend: str = "gather",
                        chunk_size: int | None = None) -> Array:
    """Sentence -> image InfoNCE: each short text of an image (a sentence of its report, a
    region's caption) against every image of the (global) batch. Its positives are all the
    images that state it: its own, and every image whose id set holds its id (for sentences,
    a hash of the normalised text, so "No pleural effusion." matches every report saying so).
    Short finding sentences, positive or negated, are what zero-shot prompts look like; the
    whole-report loss never sees them one at a time.

    Args:
      img: [B, E] L2-normalised image embeddings.
      sent: [B, S, E] L2-normalised embeddings of up to S texts per image (padded).
      sentence_ids: [B, S] int, the texts' ids; negative for padding (not an anchor).
      image_sentence_ids: [B, M] int, every id each image states (e.g. the hashes of all its
        report's sentences, of which ``sent`` holds a sample); pad with negative ids. An
        image's own texts count as stated whether or not their ids are listed, so every text
        has its image as a positive.
      temperature: scalar tau > 0.
      axis_name, backend, chunk_size: as in ``global_contrastive_loss``.
    Returns:
      float32 scalar, mean over the valid texts of the global batch (0 when there are none).
    """
    if img.ndim != 2 or sent.ndim != 3 or sent.shape[::2] != img.shape:
        raise ValueError(f"img must be [B, E] and sent [B, S, E] with the same B and E; got "
                         f"img{img.shape} and sent{sent.shape}")
    b, s, e = sent.shape
    if sentence_ids.shape != (b, s):
        raise ValueError(f"sentence_ids must have shape [B, S] = {(b, s)}, got "
                         f"{sentence_ids.shape}")
    if image_sentence_ids.ndim != 2 or image_sentence_ids.shape[0] != b:
        raise ValueError(f"image_sentence_ids must have shape [B, M] with B = {b}, got "
                         f"{image_sentence_ids.shape}")
    sentence_ids = sentence_ids.astype(jnp.int32)
    # Each image's own texts join its id set, so every valid text has a positive.
    image_ids = jnp.concatenate([image_sentence_ids.astype(jnp.int32), sentence_ids], axis=1)
    anchors, ids = sent.reshape(b * s, e), sentence_ids.reshape(-1)
    valid = ids >= 0
    image_valid = jnp.ones((b,), bool)
    inv_tau = _inverse_temperature(temperature)
    if axis_name is None:
        rows = _row_losses(anchors, img, ids, image_ids, image_valid, inv_tau, chunk_size)
    else:
        rows = _sharded_row_losses(anchors, img, ids, image_ids, image_valid, inv_tau,
                                   axis_name, backend, chunk_size)
    return _masked_mean(rows, valid, axis_name)


def medclip_labels(labels: Array, label_mask: Array) -> Array:
    """Our label fields in MedCLIP's encoding: 1 positive, -1 negative, 0 unknown.

    Args:
      labels: [..., C] float, 1 = present, 0 = absent (``Example.labels``).
      label_mask: [..., C] bool, False where the label is unknown, uncertain or not annotated
        by the dataset (``Example.label_mask``).
    Returns:
      float32 [..., C]: 1 where known present, -1 where known absent, 0 where masked. A
      'no finding' column is a class like any other: +1 on normal studies, -1 on abnormal ones.
    """
    known = label_mask.astype(bool)
    return jnp.where(known, jnp.where(labels > 0, 1.0, -1.0), 0.0).astype(jnp.float32)


def medclip_contrastive_loss(img: Array, txt: Array, img_labels: Array, txt_labels: Array,
                             temperature) -> Array:
    """MedCLIP's soft-target image-text loss (``ImageTextContrastiveLoss._soft_clip_loss`` of
    the ``medclip`` package 0.0.3): pairs that share findings are not pure negatives.

    logits = img @ txt.T / tau and S = img_labels @ txt_labels.T; image -> text targets are
    softmax(S, axis=1), text -> image targets softmax(S.T, axis=1) (temperature 1, as MedCLIP);
    each direction is -sum(targets * log_softmax(logits)) / N; the loss is their mean. Pairs
    whose labels are all unknown (0) get uniform targets over the batch, as in MedCLIP.

    Args:
      img, txt: [N, E] L2-normalised image and report embeddings (row i of each is a pair).
      img_labels, txt_labels: [N, C] labels of the images and of the texts in MedCLIP's
        encoding, 1 positive / 0 unknown / -1 negative (``medclip_labels``); no gradient
        flows into them.
      temperature: scalar tau > 0.
    Returns:
      float32 scalar.
    """
    _check_pair("img", img, "txt", txt, 2)
    _check_pair("img_labels", img_labels, "txt_labels", txt_labels, 2)
    if img_labels.shape[0] != img.shape[0]:
        raise ValueError(f"img_labels must have one row per embedding: [N, C] with N = "
                         f"{img.shape[0]}, got {img_labels.shape}")
    logits = _similarities(img, txt) * _inverse_temperature(temperature)
    img_labels, txt_labels = (jax.lax.stop_gradient(x).astype(logits.dtype)
                              for x in (img_labels, txt_labels))
    label_sim = img_labels @ txt_labels.T                                    # [N, N]
    n = img.shape[0]

    def soft_cross_entropy(scores, targets):  # rows of ``scores`` against rows of ``targets``
        return -(jax.nn.softmax(targets, axis=1) * jax.nn.log_softmax(scores, axis=1)).sum() / n

    return 0.5 * (soft_cross_entropy(logits, label_sim)
                  + soft_cross_entropy(logits.T, label_sim.T))


def negative_caption_loss(roi: Array, cap: Array, neg: Array, roi_mask: Array, neg_mask: Array,
                          temperature) -> Array:
    """Hard-negative caption loss: the true caption against its own perturbed versions.

    Per valid region: -log( e^{s(r,t+)/tau} / (e^{s(r,t+)/tau} + sum_{valid k} e^{s(r,t_k)/tau}) ).

    Args:
      roi: [B, R, E] region embeddings. cap: [B, R, E] true captions.
      neg: [B, R, K, E] hard-negative captions (wrong side, zone, finding, negated, size).
      roi_mask: [B, R] bool. neg_mask: [B, R, K] bool, True for real negatives.
      temperature: scalar tau > 0.
    Returns:
      float32 scalar, mean over valid regions (0 when there are none).
    """
    _check_pair("roi", roi, "cap", cap, 3)
    if neg.ndim != 4 or neg.shape[:2] != roi.shape[:2] or neg.shape[3] != roi.shape[2]:
        raise ValueError(f"neg must have shape [B, R, K, E] matching roi {roi.shape}, "
                         f"got {neg.shape}")
    if neg_mask.shape != neg.shape[:3]:
        raise ValueError(f"neg_mask must have shape [B, R, K] = {neg.shape[:3]}, "
                         f"got {neg_mask.shape}")
    inv_tau = _inverse_temperature(temperature)
    dtype = _compute_dtype(roi, cap, neg)
    positive = jnp.einsum("bre,bre->br", roi, cap, preferred_element_type=dtype)
    negative = jnp.einsum("bre,brke->brk", roi, neg, preferred_element_type=dtype)
    logits = jnp.concatenate([positive[..., None], negative], axis=-1) * inv_tau
    mask = jnp.concatenate([jnp.ones_like(neg_mask[..., :1], bool), neg_mask.astype(bool)], -1)
    losses = _masked_logsumexp(logits, mask, axis=-1) - logits[..., 0]
    return _masked_mean(losses, roi_mask.astype(bool))


def distillation_loss(student_logits: Array, teacher_logits: Array, mask: Array, *,
                      student_temperature: float = 1.0, teacher_temperature: float = 1.0) -> Array:
    """KL(p_teacher || p_student) over a concept set, p = softmax(logits / temperature).

    Args:
      student_logits: [..., T] student scores of each region against T captions/concepts.
      teacher_logits: [..., T] teacher scores; no gradient flows into them.
      mask: [...] bool, True for rows that count (e.g. regions the teacher is confident on).
    Returns:
      float32 scalar, mean KL over rows where ``mask`` (0 when there are none).
    """
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(f"student_logits {student_logits.shape} and teacher_logits "
                         f"{teacher_logits.shape} must have the same shape [..., T]")
    if mask.shape != student_logits.shape[:-1]:
        raise ValueError(f"mask must have shape {student_logits.shape[:-1]} (the logits without "
                         f"their last axis), got {mask.shape}")
    dtype = _compute_dtype(student_logits, teacher_logits)
    teacher = jax.lax.stop_gradient(teacher_logits).astype(dtype) / teacher_temperature
    student = student_logits.astype(dtype) / student_temperature
    log_p_teacher = jax.nn.log_softmax(teacher, axis=-1)
    log_p_student = jax.nn.log_softmax(student, axis=-1)
    p_teacher = jnp.exp(log_p_teacher)
    kl = jnp.where(p_teacher > 0, p_teacher * (log_p_teacher - log_p_student), 0.0).sum(-1)
    return _masked_mean(kl, mask.astype(bool))


def total_loss(terms: Mapping[str, Array], weights: Mapping[str, float]):
    """Weighted sum of loss terms: L = sum_k weights[k] * terms[k].

    Args:
      terms: name -> scalar loss, e.g. {'global': ..., 'roi': ..., 'neg': ..., 'distill': ...}.
      weights: name -> weight; every term needs a weight (0 switches a term off).
    Returns:
      (total float32 scalar, {name: term value, ..., 'total': total}) for logging.
    """
    missing = sorted(set(terms) - set(weights))
    if missing:
        raise KeyError(f"no weight given for loss terms {missing}; weights has {sorted(weights)}")
    total = jnp.zeros((), jnp.float32)
    for name, value in terms.items():
        total = total + jnp.float32(weights[name]) * jnp.asarray(value, jnp.float32)
    logs = {name: jnp.asarray(value, jnp.float32) for name, value in terms.items()}
    logs["total"] = total
    return total, logs

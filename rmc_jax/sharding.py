"""Device mesh, parameter partitioning and batch sharding.

Mesh axes: ``data`` (the batch is split over it) and ``fsdp`` (large parameters are split over
it, ZeRO-3 style). Parameters are placed by regex rules on their path ('image_encoder/...');
the default rule shards the largest divisible dimension of every big matrix over ``fsdp``.
"""

from __future__ import annotations

import re
from typing import Sequence

import jax
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

BATCH_AXIS = "data"
FSDP_AXIS = "fsdp"


def make_mesh(data: int = -1, fsdp: int = 1, devices=None) -> jax.sharding.Mesh:
    """A (data, fsdp) mesh; ``data=-1`` takes all devices ``fsdp`` leaves, an explicit ``data``
    uses the first data * fsdp devices."""
    devices = jax.devices() if devices is None else devices
    n = len(devices)
    if fsdp < 1 or n % fsdp:
        raise ValueError(f"mesh.fsdp={fsdp} must divide the {n} available devices")
    data = n // fsdp if data == -1 else data
    if data < 1 or data * fsdp > n:
        raise ValueError(f"mesh data={data} x fsdp={fsdp} needs more than the {n} devices")
    devices = devices[:data * fsdp]  # an explicit smaller mesh uses the first devices
    auto = jax.sharding.AxisType.Auto
    return jax.make_mesh((data, fsdp), (BATCH_AXIS, FSDP_AXIS), axis_types=(auto, auto),
                         devices=devices)


def path_name(path) -> str:
    """A parameter's path as the rules see it: 'image_encoder/encoder/block_0/attn/qkv/kernel'."""
    return "/".join(str(getattr(k, "key", getattr(k, "idx", k))) for k in path)


def partition_spec(name: str, shape: Sequence[int], fsdp: int,
                   rules: Sequence[tuple[str, P | None]] = (), min_size: int = 2**14) -> P:
    """The first rule whose regex matches ``name`` wins; a rule's spec of None means 'default'.
    Default: replicate small or 1-D arrays; shard the largest dim divisible by ``fsdp``."""
    for pattern, spec in rules:
        if re.search(pattern, name) and spec is not None:
            return spec
    if fsdp == 1 or len(shape) < 2 or int(np.prod(shape)) < min_size:
        return P()
    for dim in sorted(range(len(shape)), key=lambda d: -shape[d]):
        if shape[dim] % fsdp == 0:
            spec = [None] * len(shape)
            spec[dim] = FSDP_AXIS
            return P(*spec)
    return P()


def param_shardings(params, mesh: jax.sharding.Mesh, rules=()):
    """Tree of NamedSharding matching ``params`` (arrays or ShapeDtypeStructs)."""
    fsdp = mesh.shape[FSDP_AXIS]
    return jax.tree_util.tree_map_with_path(
        lambda path, x: NamedSharding(mesh, partition_spec(path_name(path), x.shape, fsdp,
                                                           rules)), params)


def batch_sharding(mesh: jax.sharding.Mesh) -> NamedSharding:
    """Leading (batch) dimension split over ``data``, the rest replicated."""
    return NamedSharding(mesh, P(BATCH_AXIS))


def replicated(mesh: jax.sharding.Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def global_batch(local_batch: dict, mesh: jax.sharding.Mesh) -> dict:
    """Per-process NumPy batch -> global jax.Arrays sharded over ``data`` (multi-host safe)."""
    sharding = batch_sharding(mesh)
    return jax.tree.map(lambda x: jax.make_array_from_process_local_data(sharding, x),
                        local_batch)

"""Name-and-layout tables between a pretrained model's tensors and rmc_jax parameters.

One table serves both directions: importing (source tensors -> params) and exporting
(params -> source tensors), so an exported file is exactly what the importer reads back.

An ``Entry`` says: the parameter at ``dst`` (a '/'-joined path in the RegionCLIP params tree)
is made from the source tensors ``src`` by a layout ``kind``:

  'copy'          same values, reshaped to the destination shape (e.g. CLIP's class embedding
                  [D] -> cls_token [1, 1, D]);
  'dense'         a PyTorch Linear weight [out, in] -> Flax kernel [in, out] (transpose);
  'conv'          a PyTorch Conv2d weight [D, C, P, P] -> Flax kernel [P, P, C, D];
  'concat_dense'  several Linear weights (query, key, value) -> one fused kernel
                  [in, out_1 + out_2 + ...];
  'concat'        several vectors (query, key, value biases) -> one [n_1 + n_2 + ...].

Every entry carries the source shapes the model config implies, so a file whose tensors have
other shapes is reported tensor by tensor with both shapes. Source tensors that no entry uses
must match a ``Skip`` (a buffer, or a part of the checkpoint that is deliberately not
imported, with the reason); anything else is an error that names it.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Iterable, Mapping, Sequence

import numpy as np

__all__ = [
    "Entry",
    "Skip",
    "Table",
    "WeightMappingError",
    "flatten",
    "unflatten",
    "import_tensors",
    "export_tensors",
    "stack_blocks",
    "unstack_blocks",
]

Shape = tuple[int, ...]


class WeightMappingError(ValueError):
    """Tensors missing, left unmapped, or of the wrong shape (the message lists them all)."""


@dataclasses.dataclass(frozen=True)
class Entry:
    dst: str
    src: tuple[str, ...]
    kind: str
    src_shapes: tuple[Shape, ...]
    dst_shape: Shape


@dataclasses.dataclass(frozen=True)
class Skip:
    pattern: str  # regular expression matched (re.search) against source tensor names
    reason: str


class Table:
    """Builder of entries: ``t.dense('image_proj/kernel', 'visual_projection.weight', E, D)``."""

    def __init__(self):
        self.entries: list[Entry] = []
        self.skips: list[Skip] = []

    def add(self, dst: str, src: Sequence[str], kind: str, src_shapes: Sequence[Shape],
            dst_shape: Shape) -> None:
        self.entries.append(Entry(dst, tuple(src), kind, tuple(tuple(s) for s in src_shapes),
                                  tuple(dst_shape)))

    def copy(self, dst: str, src: str, src_shape: Shape, dst_shape: Shape | None = None):
        self.add(dst, [src], "copy", [src_shape], src_shape if dst_shape is None else dst_shape)

    def dense(self, dst_prefix: str, src_prefix: str, out_dim: int, in_dim: int, *,
              bias: bool = True):
        """Linear ``src_prefix``.{weight,bias} -> Dense ``dst_prefix``/{kernel,bias}."""
        self.add(f"{dst_prefix}/kernel", [f"{src_prefix}.weight"], "dense",
                 [(out_dim, in_dim)], (in_dim, out_dim))
        if bias:
            self.copy(f"{dst_prefix}/bias", f"{src_prefix}.bias", (out_dim,))

    def layer_norm(self, dst_prefix: str, src_prefix: str, dim: int):
        self.copy(f"{dst_prefix}/scale", f"{src_prefix}.weight", (dim,))
        self.copy(f"{dst_prefix}/bias", f"{src_prefix}.bias", (dim,))

    def qkv(self, dst_prefix: str, src_prefixes: Sequence[str], dim: int):
        """Separate query/key/value Linears -> the fused qkv Dense."""
        self.add(f"{dst_prefix}/kernel", [f"{p}.weight" for p in src_prefixes], "concat_dense",
                 [(dim, dim)] * 3, (dim, 3 * dim))
        self.add(f"{dst_prefix}/bias", [f"{p}.bias" for p in src_prefixes], "concat",
                 [(dim,)] * 3, (3 * dim,))

    def conv(self, dst: str, src: str, out_dim: int, in_channels: int, patch: int):
        self.add(dst, [src], "conv", [(out_dim, in_channels, patch, patch)],
                 (patch, patch, in_channels, out_dim))

    def skip(self, pattern: str, reason: str):
        self.skips.append(Skip(pattern, reason))

    def extend(self, other: "Table"):
        self.entries += other.entries
        self.skips += other.skips


# ---------------------------------------------------------------------------------------------
# Params trees <-> flat {'a/b/c': array}
# ---------------------------------------------------------------------------------------------


def temperature_table() -> Table:
    """The learnable temperature: HF CLIPModel and open_clip both store log(1/tau) as
    ``logit_scale``."""
    t = Table()
    t.copy("log_inv_temperature", "logit_scale", ())
    return t


def flatten(tree: Mapping, prefix: str = "") -> dict[str, np.ndarray]:
    out = {}
    for key, value in tree.items():
        path = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(flatten(value, path + "/"))
        else:
            out[path] = value
    return out


def unflatten(flat: Mapping[str, np.ndarray]) -> dict:
    tree: dict = {}
    for path, value in flat.items():
        *parents, leaf = path.split("/")
        node = tree
        for name in parents:
            node = node.setdefault(name, {})
        node[leaf] = value
    return tree


_BLOCK = re.compile(r"^(.*/encoder)/block_(\d+)/(.*)$")


def stack_blocks(flat: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Per-block params ('.../encoder/block_{i}/x') -> scanned layout ('.../encoder/blocks/x',
    leaves stacked on a leading [depth] axis), as ``TransformerStack(scan_layers=True)``."""
    out, groups = {}, {}
    for path, value in flat.items():
        match = _BLOCK.match(path)
        if match:
            groups.setdefault((match[1], match[3]), {})[int(match[2])] = value
        else:
            out[path] = value
    for (stack, rest), blocks in groups.items():
        out[f"{stack}/blocks/{rest}"] = np.stack([blocks[i] for i in sorted(blocks)])
    return out


def unstack_blocks(flat: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Inverse of ``stack_blocks``."""
    out = {}
    for path, value in flat.items():
        match = re.match(r"^(.*/encoder)/blocks/(.*)$", path)
        if match:
            for i, block in enumerate(np.asarray(value)):
                out[f"{match[1]}/block_{i}/{match[2]}"] = block
        else:
            out[path] = value
    return out


# ---------------------------------------------------------------------------------------------
# Import and export
# ---------------------------------------------------------------------------------------------


def _fmt(shape) -> str:
    return "(" + ", ".join(str(int(d)) for d in shape) + ")"


def _to_dst(entry: Entry, arrays: list[np.ndarray]) -> np.ndarray:
    arrays = [np.asarray(a, np.float32) for a in arrays]
    if entry.kind == "copy":
        return arrays[0].reshape(entry.dst_shape)
    if entry.kind == "dense":
        return arrays[0].T
    if entry.kind == "conv":
        return arrays[0].transpose(2, 3, 1, 0)
    if entry.kind == "concat_dense":
        return np.concatenate([a.T for a in arrays], axis=1)
    if entry.kind == "concat":
        return np.concatenate(arrays, axis=0)
    raise ValueError(f"unknown entry kind {entry.kind!r} for {entry.dst}")


def _to_src(entry: Entry, value: np.ndarray) -> list[np.ndarray]:
    value = np.asarray(value, np.float32)
    if entry.kind == "copy":
        return [value.reshape(entry.src_shapes[0])]
    if entry.kind == "dense":
        return [np.ascontiguousarray(value.T)]
    if entry.kind == "conv":
        return [np.ascontiguousarray(value.transpose(3, 2, 0, 1))]
    sizes = [s[0] for s in entry.src_shapes]
    parts = np.split(value, np.cumsum(sizes)[:-1], axis=1 if entry.kind == "concat_dense" else 0)
    if entry.kind == "concat_dense":
        return [np.ascontiguousarray(p.T) for p in parts]
    return [np.ascontiguousarray(p) for p in parts]


def import_tensors(table: Table, tensors: Mapping[str, np.ndarray], where: str
                   ) -> tuple[dict[str, np.ndarray], list[tuple[str, str]], list[tuple[str, str]]]:
    """Apply ``table`` to ``tensors`` -> (flat params, mapped [(sources, dst)], skipped
    [(source, reason)]).

    Raises WeightMappingError listing every missing tensor, every tensor that is neither mapped
    nor skipped, and every shape mismatch (file shape and expected shape).
    """
    missing, bad_shapes = [], []
    used: set[str] = set()
    params, mapped = {}, []
    for entry in table.entries:
        absent = [name for name in entry.src if name not in tensors]
        if absent:
            missing += [f"{name} (for {entry.dst})" for name in absent]
            continue
        ok = True
        for name, expected in zip(entry.src, entry.src_shapes):
            actual = tuple(tensors[name].shape)
            if actual == (1,) and expected == ():
                actual = ()  # scalars (the temperature) are saved as [1] by some trainers
            if actual != expected:
                bad_shapes.append(f"{name}: shape {_fmt(actual)} in the file, the model config "
                                  f"implies {_fmt(expected)} (for {entry.dst})")
                ok = False
        used.update(entry.src)
        if ok:
            params[entry.dst] = _to_dst(entry, [tensors[name] for name in entry.src])
            mapped.append((" + ".join(entry.src), entry.dst))
    skipped, unmapped = [], []
    for name in sorted(set(tensors) - used):
        reason = next((s.reason for s in table.skips if re.search(s.pattern, name)), None)
        if reason is None:
            unmapped.append(f"{name} {_fmt(tensors[name].shape)}")
        else:
            skipped.append((name, reason))
    problems = []
    if missing:
        problems.append(f"{len(missing)} tensor(s) missing from the checkpoint:\n  "
                        + "\n  ".join(missing))
    if unmapped:
        problems.append(f"{len(unmapped)} tensor(s) in the checkpoint that nothing maps (an "
                        "architecture this importer does not mirror):\n  " + "\n  ".join(unmapped))
    if bad_shapes:
        problems.append(f"{len(bad_shapes)} shape mismatch(es):\n  " + "\n  ".join(bad_shapes))
    if problems:
        raise WeightMappingError(f"cannot import {where}:\n" + "\n".join(problems))
    return params, mapped, skipped


def export_tensors(table: Table, flat_params: Mapping[str, np.ndarray], where: str
                   ) -> dict[str, np.ndarray]:
    """Inverse of ``import_tensors``: params -> {source tensor name: float32 array}."""
    out, problems = {}, []
    for entry in table.entries:
        if entry.dst not in flat_params:
            problems.append(f"{entry.dst} (for {', '.join(entry.src)}) is not in the params")
            continue
        value = np.asarray(flat_params[entry.dst])
        if tuple(value.shape) != entry.dst_shape:
            problems.append(f"{entry.dst}: shape {_fmt(value.shape)} in the params, the export "
                            f"format needs {_fmt(entry.dst_shape)}")
            continue
        out.update(zip(entry.src, _to_src(entry, value)))
    if problems:
        raise WeightMappingError(f"cannot export {where}:\n  " + "\n  ".join(problems))
    return out


def check_against(flat: Mapping[str, np.ndarray], expected: Mapping[str, Shape],
                  where: str, sources: Mapping[str, str] | None = None) -> None:
    """Every imported param must exist in the model with the same shape (names both shapes)."""
    problems = []
    for path, value in flat.items():
        origin = f" (from {sources[path]})" if sources and path in sources else ""
        if path not in expected:
            problems.append(f"{path}{origin} is not a parameter of the model")
        elif tuple(value.shape) != tuple(expected[path]):
            problems.append(f"{path}{origin}: imported shape {_fmt(value.shape)}, the model's "
                            f"parameter has shape {_fmt(expected[path])}")
    if problems:
        raise WeightMappingError(f"{where}: imported weights do not fit the model:\n  "
                                 + "\n  ".join(problems))


def select(flat: Mapping[str, np.ndarray], prefixes: Iterable[str]) -> dict[str, np.ndarray]:
    prefixes = tuple(prefixes)
    return {k: v for k, v in flat.items() if k.split("/")[0] in prefixes}

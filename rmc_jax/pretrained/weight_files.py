"""Reading and writing weight files with NumPy only (no PyTorch needed).

* ``read_safetensors(path)``: a ``.safetensors`` file -> {name: np.ndarray}. The format is an
  8-byte little-endian header length, a JSON header {name: {dtype, shape, data_offsets}} and
  the raw little-endian bytes; it is parsed here directly (memory-mapped), which also reads
  bfloat16 tensors (as ``ml_dtypes.bfloat16``) that NumPy alone has no type for.
* ``write_safetensors(path, tensors, metadata)``: the inverse; files load in ``safetensors``,
  PyTorch and ``transformers``.
* ``load_weights(directory)``: the weights of a model directory, whichever of the usual file
  names it uses (single or sharded safetensors; ``.bin`` only through
  ``torch.load(..., weights_only=True)`` when PyTorch is installed; nothing is ever unpickled
  otherwise).
"""

from __future__ import annotations

import json
import mmap
import os
import struct
from typing import Mapping

import ml_dtypes
import numpy as np

__all__ = [
    "SAFETENSORS_FILES",
    "BIN_FILES",
    "find_weights",
    "load_weights",
    "read_safetensors",
    "write_safetensors",
]

_DTYPES = {
    "F64": np.dtype(np.float64), "F32": np.dtype(np.float32), "F16": np.dtype(np.float16),
    "BF16": np.dtype(ml_dtypes.bfloat16), "I64": np.dtype(np.int64),
    "I32": np.dtype(np.int32), "I16": np.dtype(np.int16), "I8": np.dtype(np.int8),
    "U8": np.dtype(np.uint8), "BOOL": np.dtype(np.bool_),
}
_NAMES = {dtype: name for name, dtype in _DTYPES.items()}

# Weight file names, in the order they are looked for (Hugging Face, then open_clip).
SAFETENSORS_FILES = ("model.safetensors", "open_clip_model.safetensors")
SHARD_INDEXES = ("model.safetensors.index.json",)
BIN_FILES = ("pytorch_model.bin", "open_clip_pytorch_model.bin")
BIN_INDEXES = ("pytorch_model.bin.index.json",)


def read_safetensors(path: str) -> dict[str, np.ndarray]:
    """All tensors of one ``.safetensors`` file, as read-only arrays backed by a memory map."""
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) != 8:
            raise ValueError(f"{path}: not a safetensors file (shorter than its 8-byte header "
                             "length)")
        (length,) = struct.unpack("<Q", head)
        size = os.fstat(f.fileno()).st_size
        if length > size - 8:
            raise ValueError(f"{path}: not a safetensors file (header length {length} exceeds "
                             f"the file size {size})")
        header = json.loads(f.read(length))
        data = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) if size > 8 + length else b""
    start = 8 + length
    tensors = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        if info["dtype"] not in _DTYPES:
            raise ValueError(f"{path}: tensor {name!r} has dtype {info['dtype']}, which is not "
                             f"supported (supported: {sorted(_DTYPES)})")
        dtype = _DTYPES[info["dtype"]]
        begin, end = info["data_offsets"]
        shape = tuple(info["shape"])
        count = int(np.prod(shape, dtype=np.int64))
        if end - begin != count * dtype.itemsize:
            raise ValueError(f"{path}: tensor {name!r} of shape {shape} and dtype "
                             f"{info['dtype']} spans {end - begin} bytes, expected "
                             f"{count * dtype.itemsize}")
        array = np.frombuffer(data, dtype=dtype.newbyteorder("<"), count=count,
                              offset=start + begin) if count else np.zeros(0, dtype)
        tensors[name] = array.reshape(shape)
    return tensors


def write_safetensors(path: str, tensors: Mapping[str, np.ndarray],
                      metadata: Mapping[str, str] | None = None) -> str:
    """Write ``tensors`` (C-contiguous little-endian copies) to ``path``; returns ``path``."""
    header: dict = {}
    if metadata:
        header["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
    arrays, offset = [], 0
    for name in sorted(tensors):
        array = np.asarray(tensors[name])
        if not array.flags.c_contiguous:  # (np.ascontiguousarray would make a 0-d array 1-d)
            array = array.copy(order="C")
        if array.dtype not in _NAMES:
            raise ValueError(f"tensor {name!r}: dtype {array.dtype} cannot be written to "
                             f"safetensors (supported: {sorted(map(str, _NAMES))})")
        array = array.astype(array.dtype.newbyteorder("<"), copy=False)
        header[name] = {"dtype": _NAMES[array.dtype.newbyteorder("=")],
                        "shape": list(array.shape),
                        "data_offsets": [offset, offset + array.nbytes]}
        arrays.append(array)
        offset += array.nbytes
    encoded = json.dumps(header, separators=(",", ":")).encode()
    encoded += b" " * (-len(encoded) % 8)  # keep the data 8-byte aligned
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(encoded)))
        f.write(encoded)
        for array in arrays:
            f.write(array.tobytes())
    return path


def find_weights(directory: str) -> list[str]:
    """The weight file(s) of a model directory (several for a sharded checkpoint).

    Raises FileNotFoundError naming the directory and the file names looked for.
    """
    if not os.path.isdir(directory):
        raise FileNotFoundError(f"model directory not found: {directory}")
    for name in SAFETENSORS_FILES:
        if os.path.isfile(os.path.join(directory, name)):
            return [os.path.join(directory, name)]
    for name in SHARD_INDEXES + BIN_INDEXES:
        index = os.path.join(directory, name)
        if os.path.isfile(index):
            with open(index) as f:
                files = sorted(set(json.load(f)["weight_map"].values()))
            return [os.path.join(directory, file) for file in files]
    for name in BIN_FILES:
        if os.path.isfile(os.path.join(directory, name)):
            return [os.path.join(directory, name)]
    singles = sorted(x for x in os.listdir(directory) if x.endswith(".safetensors"))
    if len(singles) == 1:
        return [os.path.join(directory, singles[0])]
    raise FileNotFoundError(
        f"no weights in {directory}: expected one of "
        f"{list(SAFETENSORS_FILES + SHARD_INDEXES + BIN_INDEXES + BIN_FILES)}"
        + (f" (found several .safetensors files: {singles})" if singles else ""))


def _load_bin(path: str) -> dict[str, np.ndarray]:
    try:
        import torch
    except ImportError:
        raise ImportError(
            f"{path} is a PyTorch .bin file, which needs PyTorch to read (it is loaded with "
            "torch.load(weights_only=True), never unpickled otherwise). Install torch, or "
            "convert it to safetensors where torch is available.") from None
    state = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"],
                                                                       dict):
        state = state["state_dict"]  # open_clip training checkpoints wrap the weights
    out = {}
    for name, tensor in state.items():
        if not hasattr(tensor, "detach"):
            continue  # non-tensor entries (epoch counters, ...)
        tensor = tensor.detach().cpu()
        if tensor.dtype == torch.bfloat16:
            out[name] = tensor.float().numpy().astype(ml_dtypes.bfloat16)
        else:
            out[name] = tensor.numpy()
    return out


def load_weights(directory: str) -> tuple[dict[str, np.ndarray], list[str]]:
    """({name: array}, files read) for a model directory (see ``find_weights``).

    open_clip training checkpoints saved from DataParallel/DDP prefix every name with
    ``module.``; that prefix is removed.
    """
    files = find_weights(directory)
    tensors: dict[str, np.ndarray] = {}
    for path in files:
        part = _load_bin(path) if path.endswith(".bin") else read_safetensors(path)
        tensors.update(part)
    if tensors and all(name.startswith("module.") for name in tensors):
        tensors = {name[len("module."):]: value for name, value in tensors.items()}
    return tensors, files

"""Weight files of a model directory, read and written with ``safetensors.numpy``.

* ``save_safetensors(path, tensors, metadata)``: ``safetensors.numpy.save_file`` of C-contiguous
  NumPy copies (safetensors writes an array's buffer as it lies in memory, so a transposed view
  would be written wrong); bfloat16 (``ml_dtypes.bfloat16``, as JAX gives it) included. Files load
  in ``safetensors``, PyTorch and ``transformers``.
* ``load_weights(directory)``: the weights of a model directory, whichever of the usual file
  names it uses (single or sharded safetensors, read with ``safetensors.numpy.load_file``;
  ``.bin`` only through ``torch.load(..., weights_only=True)`` when PyTorch is installed;
  nothing is ever unpickled otherwise).
"""

from __future__ import annotations

import json
import os
from typing import Mapping

import ml_dtypes
import numpy as np
import safetensors.numpy

__all__ = [
    "SAFETENSORS_FILES",
    "BIN_FILES",
    "find_weights",
    "load_weights",
    "save_safetensors",
]

# Weight file names, in the order they are looked for (Hugging Face, then open_clip).
SAFETENSORS_FILES = ("model.safetensors", "open_clip_model.safetensors")
SHARD_INDEXES = ("model.safetensors.index.json",)
BIN_FILES = ("pytorch_model.bin", "open_clip_pytorch_model.bin")
BIN_INDEXES = ("pytorch_model.bin.index.json",)


def save_safetensors(path: str, tensors: Mapping[str, np.ndarray],
                     metadata: Mapping[str, str] | None = None) -> str:
    """Write ``tensors`` to ``path`` (its directory made if needed); returns ``path``."""
    arrays = {str(name): np.require(np.asarray(value), requirements="C")
              for name, value in tensors.items()}
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    safetensors.numpy.save_file(arrays, path, metadata=(
        {str(k): str(v) for k, v in metadata.items()} if metadata else None))
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
        part = _load_bin(path) if path.endswith(".bin") else safetensors.numpy.load_file(path)
        tensors.update(part)
    if tensors and all(name.startswith("module.") for name in tensors):
        tensors = {name[len("module."):]: value for name, value in tensors.items()}
    return tensors, files

"""What every importer returns, and the small helpers they share."""

from __future__ import annotations

import dataclasses
import json
import os
import re
from typing import Any

import numpy as np

from rmc_jax.models import TextConfig, VisionConfig

__all__ = ["Imported", "OPENAI_MEAN", "OPENAI_STD", "TOWERS", "activation", "read_json",
           "tokenizer_source"]

TOWERS = ("image", "text")

# OpenAI CLIP's image statistics: the default of CLIP image processors and of open_clip.
OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)

# Hugging Face / open_clip activation names -> rmc_jax's (layers.ACTIVATIONS).
_ACTIVATIONS = {
    "gelu": "gelu", "gelu_python": "gelu", "quick_gelu": "quick_gelu",
    "gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh", "gelu_tanh": "gelu_tanh",
}
# ... and back, for writing Hugging Face configs.
HF_ACTIVATIONS = {"gelu": "gelu", "quick_gelu": "quick_gelu", "gelu_tanh": "gelu_new"}


@dataclasses.dataclass
class Imported:
    """A pretrained model (or one of its towers) as rmc_jax sees it.

    ``params`` is flat ({'image_encoder/encoder/block_0/attn/qkv/kernel': float32 array}) and
    holds only what the checkpoint provides: the requested towers, their projections and, when
    both towers come from it, the temperature. Empty when only the configuration was read.
    """

    source: str                      # the model directory
    format: str                      # 'hf_clip' | 'hf_bert' | 'open_clip'
    towers: tuple[str, ...]          # what was read: 'image', 'text'
    vision: VisionConfig | None = None
    text: TextConfig | None = None
    image_embed_dim: int | None = None   # output size of the image projection, if it has one
    text_embed_dim: int | None = None
    image_proj_bias: bool = False
    text_proj_bias: bool = False
    text_proj_hidden: int = 0
    has_temperature: bool = False
    tokenizer: str | None = None     # directory or tokenizer.json to encode text for this model
    layout: dict[str, str] = dataclasses.field(default_factory=dict)  # format-specific naming
    params: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)
    mapped: list[tuple[str, str]] = dataclasses.field(default_factory=list)
    skipped: list[tuple[str, str]] = dataclasses.field(default_factory=list)
    files: list[str] = dataclasses.field(default_factory=list)
    notes: list[str] = dataclasses.field(default_factory=list)  # assumptions the import made

    def summary(self, compact: bool = True) -> str:
        """Multi-line report: what was mapped to what, what was skipped and why.

        ``compact`` folds the per-layer lines into one line per pattern ('{i}' = layer index,
        with the number of layers)."""
        lines = [f"{self.format} model {self.source} ({', '.join(self.towers)}); weights from "
                 f"{', '.join(os.path.basename(f) for f in self.files) or '-'}"]
        mapped = self.mapped
        if compact:
            counts: dict[tuple[str, str], int] = {}
            for src, dst in self.mapped:
                key = (re.sub(r"\.\d+\.", ".{i}.", src), re.sub(r"block_\d+", "block_{i}", dst))
                counts[key] = counts.get(key, 0) + 1
            mapped = [(src if n == 1 else f"{src} [x{n}]", dst) for (src, dst), n in
                      counts.items()]
        lines += [f"  mapped  {src} -> {dst}" for src, dst in mapped]
        lines += [f"  skipped {src}: {reason}" for src, reason in self.skipped]
        lines += [f"  note: {note}" for note in self.notes]
        lines.append(f"  {len(self.mapped)} parameters mapped, {len(self.skipped)} tensors "
                     "skipped")
        return "\n".join(lines)


def read_json(path: str) -> dict[str, Any]:
    try:
        with open(path) as f:
            return json.load(f)
    except FileNotFoundError:
        raise FileNotFoundError(f"{path} not found") from None
    except json.JSONDecodeError as error:
        raise ValueError(f"{path} is not valid JSON: {error}") from None


def activation(name: str, where: str) -> str:
    if name not in _ACTIVATIONS:
        raise ValueError(f"{where}: activation {name!r} is not supported; supported: "
                         f"{sorted(_ACTIVATIONS)}")
    return _ACTIVATIONS[name]


_TOKENIZER_FILES = ("tokenizer.json", "vocab.txt", "vocab.json", "tokenizer_config.json")


def tokenizer_source(directory: str) -> str | None:
    """``directory`` if it holds tokenizer files a fast tokenizer can be built from, else None."""
    if any(os.path.isfile(os.path.join(directory, name)) for name in _TOKENIZER_FILES):
        return directory
    return None

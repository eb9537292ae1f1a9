"""Export a trained model's towers to safetensors that other tools read.

``export(model_cfg, params, dst, format=...)`` writes, depending on the architecture:

  'hf'         a Hugging Face ``CLIPModel`` directory (config.json, model.safetensors,
               preprocessor_config.json, tokenizer files) when both towers are CLIP towers;
               else, when the text tower is a BERT encoder, ``text/`` as a ``BertModel``
               directory (plus ``1_Pooling/config.json`` so sentence-transformers pools it the
               same way)
  'open_clip'  open_clip_config.json + open_clip_model.safetensors (timm ViT or open_clip ViT
               image tower; BERT or open_clip text tower), the layout BiomedCLIP ships in
  'auto'       'hf' for CLIP towers, else 'open_clip' when it fits, else 'hf' (text/ only)

and always ``rmc_jax_model.safetensors`` + ``rmc_jax_model.json``: every parameter, region
head included, under its rmc_jax path ('image_encoder/encoder/block_0/attn/qkv/kernel'; Flax
layouts: Dense kernels [in, out], patch kernel [P, P, C, D]). The formats above hold only what
they have room for (towers, projections, temperature); the region head and region projection
are rmc_jax's own and live in the rmc_jax file.

Every tower file is written through the same tables the importer reads, so importing an export
gives back the same numbers.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil

import numpy as np

from rmc_jax.models import ModelConfig, model_config
from rmc_jax.pretrained import hf_bert, hf_clip, open_clip
from rmc_jax.pretrained.common import Imported
from rmc_jax.pretrained.mapping import (Table, export_tensors, flatten, temperature_table,
                                       unstack_blocks)
from rmc_jax.pretrained.weight_files import save_safetensors

__all__ = ["EXPORT_FORMATS", "export", "export_run"]

EXPORT_FORMATS = ("auto", "hf", "open_clip", "rmc")
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                    "vocab.txt", "vocab.json", "merges.txt")


def _flat_params(params) -> dict[str, np.ndarray]:
    """Nested or flat ('a/b/c') params -> flat float32, scanned blocks split per layer."""
    return unstack_blocks({k: np.asarray(v, np.float32) for k, v in flatten(params).items()})


def _timm_like(v) -> bool:
    return (v.patch_bias and not v.pre_norm and v.class_token and v.pooling == "cls"
            and v.final_norm and v.norm_position == "pre")


def _native_vision(v) -> bool:
    return (not v.patch_bias and v.class_token and v.final_norm and v.norm_position == "pre")


def _copy_tokenizer(tokenizer: str | None, dst: str) -> list[str]:
    """Copy a tokenizer (directory or tokenizer.json) next to the exported weights."""
    if not tokenizer:
        return []
    written = []
    if os.path.isfile(tokenizer):
        shutil.copyfile(tokenizer, os.path.join(dst, "tokenizer.json"))
        return [os.path.join(dst, "tokenizer.json")]
    for name in _TOKENIZER_FILES:
        if os.path.isfile(os.path.join(tokenizer, name)):
            shutil.copyfile(os.path.join(tokenizer, name), os.path.join(dst, name))
            written.append(os.path.join(dst, name))
    return written


def _special_ids(tokenizer: str | None, vocab_size: int) -> tuple[int, int, int]:
    """(eos, pad, bos) ids for a CLIPModel config, from the tokenizer when there is one."""
    eos, pad, bos = vocab_size - 1, vocab_size - 1, vocab_size - 2
    if tokenizer:
        import tokenizers

        path = tokenizer if os.path.isfile(tokenizer) else os.path.join(tokenizer,
                                                                        "tokenizer.json")
        if os.path.isfile(path):
            backend = tokenizers.Tokenizer.from_file(path)
            ids = lambda names: next((backend.token_to_id(n) for n in names  # noqa: E731
                                      if backend.token_to_id(n) is not None), None)
            eos = ids(("<|endoftext|>", "[SEP]", "</s>")) or eos
            bos = ids(("<|startoftext|>", "[CLS]", "<s>")) or bos
            pad = ids(("<|endoftext|>", "[PAD]", "<pad>")) or 0
    return eos, pad, bos


def _imported_like(model: ModelConfig, fmt: str, layout: dict | None = None) -> Imported:
    return Imported(source="", format=fmt, towers=("image", "text"), vision=model.vision,
                    text=model.text, image_embed_dim=model.embed_dim,
                    text_embed_dim=model.embed_dim, image_proj_bias=model.image_proj_bias,
                    text_proj_bias=model.text_proj_bias,
                    text_proj_hidden=model.text_proj_hidden, layout=layout or {})


def _write_hf_clip(model, flat, dst, tokenizer) -> list[str]:
    table = Table()
    table.extend(hf_clip.vision_table(model.vision, model.embed_dim))
    table.extend(hf_clip.text_table(model.text, model.embed_dim))
    table.extend(temperature_table())
    tensors = export_tensors(table, flat, "as a Hugging Face CLIPModel")
    os.makedirs(dst, exist_ok=True)
    files = [save_safetensors(os.path.join(dst, "model.safetensors"), tensors,
                              {"format": "pt"})]
    eos, pad, bos = _special_ids(tokenizer, model.text.vocab_size)
    with open(os.path.join(dst, "config.json"), "w") as f:
        json.dump(hf_clip.hf_config(model, eos, pad, bos), f, indent=1)
    with open(os.path.join(dst, "preprocessor_config.json"), "w") as f:
        json.dump(hf_clip.preprocessor_config(model.vision), f, indent=1)
    files += [os.path.join(dst, "config.json"), os.path.join(dst, "preprocessor_config.json")]
    return files + _copy_tokenizer(tokenizer, dst)


def _write_hf_bert(model, flat, dst, tokenizer) -> list[str]:
    tensors = export_tensors(hf_bert.text_table(model.text), flat,
                             "the text tower as a Hugging Face BertModel")
    os.makedirs(os.path.join(dst, "1_Pooling"), exist_ok=True)
    files = [save_safetensors(os.path.join(dst, "model.safetensors"), tensors,
                              {"format": "pt"})]
    with open(os.path.join(dst, "config.json"), "w") as f:
        json.dump(hf_bert.hf_config(model.text), f, indent=1)
    files.append(os.path.join(dst, "config.json"))
    if model.text.pooling in ("cls", "mean"):
        path = os.path.join(dst, "1_Pooling", "config.json")
        with open(path, "w") as f:
            json.dump(hf_bert.sentence_pooling_config(model.text), f, indent=1)
        files.append(path)
    return files + _copy_tokenizer(tokenizer, dst)


def _write_open_clip(model, flat, dst, tokenizer) -> list[str]:
    timm = _timm_like(model.vision)
    layout = {"vision": "timm", "timm_head": "visual.head.proj"} if timm else {}
    imp = _imported_like(model, "open_clip", layout)
    table = Table()
    table.extend(open_clip.vision_table(imp))
    table.extend(open_clip.text_table(imp))
    table.extend(temperature_table())
    tensors = export_tensors(table, flat, "as an open_clip model")
    os.makedirs(dst, exist_ok=True)
    files = [save_safetensors(os.path.join(dst, "open_clip_model.safetensors"), tensors)]
    config = open_clip.open_clip_config(model, timm)
    with open(os.path.join(dst, open_clip.CONFIG_FILE), "w") as f:
        json.dump(config, f, indent=1)
    files.append(os.path.join(dst, open_clip.CONFIG_FILE))
    if model.text.norm_position == "post":  # the BERT's own config, named by hf_model_name
        os.makedirs(os.path.join(dst, open_clip.BERT_CONFIG_DIR), exist_ok=True)
        path = os.path.join(dst, open_clip.BERT_CONFIG_DIR, "config.json")
        with open(path, "w") as f:
            json.dump(hf_bert.hf_config(model.text), f, indent=1)
        files.append(path)
    return files + _copy_tokenizer(tokenizer, dst)


def _open_clip_fits(model: ModelConfig) -> list[str]:
    """Why ``model`` cannot be written as open_clip so that it reads back identically."""
    v, t, why = model.vision, model.text, []
    native_text = t.norm_position == "pre"
    if v.stem != "patch":
        why.append(f"timm and open_clip ViTs patchify their input (this image tower's stem is "
                   f"{v.stem!r})")
    elif _timm_like(v):
        if v.activation != "gelu" or v.layer_norm_eps != 1e-6:
            why.append("a timm ViT image tower needs exact GELU and LayerNorm eps 1e-6")
        if open_clip.timm_name(v) is None:
            why.append(f"no timm ViT size has {v.num_heads} heads (3, 6, 8, 12 or 16)")
    elif _native_vision(v):
        if model.image_proj_bias:
            why.append("an open_clip ViT projection has no bias")
        if native_text and v.activation != t.activation:
            why.append("open_clip towers share one activation (quick_gelu or not)")
    else:
        why.append("the image tower is neither a timm ViT nor an open_clip ViT")
    if not native_text:
        why += hf_bert.check_exportable(t)
    elif not (t.causal and t.final_norm and t.pooling in ("auto", "last")
              and not t.embed_norm and not t.type_vocab_size):
        why.append("the text tower is neither a BERT encoder nor an open_clip text transformer")
    return why


def export(model: ModelConfig, params, dst: str, *, format: str = "auto",
           tokenizer: str | None = None) -> dict[str, list[str]]:
    """Write ``params`` of a RegionCLIP with config ``model`` to ``dst``; returns the files
    written per format. Raises ValueError naming why a requested format cannot hold the model.
    """
    if format not in EXPORT_FORMATS:
        raise ValueError(f"format {format!r}; expected one of {EXPORT_FORMATS}")
    model = model_config(model)
    flat = _flat_params(params)
    os.makedirs(dst, exist_ok=True)
    written: dict[str, list[str]] = {}
    clip_why = hf_clip.check_exportable(model)
    chosen = format
    if format == "auto":
        chosen = "hf" if not clip_why else ("open_clip" if not _open_clip_fits(model) else
                                            ("hf" if not hf_bert.check_exportable(model.text)
                                             else "rmc"))
    if chosen == "hf":
        if not clip_why:
            written["hf_clip"] = _write_hf_clip(model, flat, dst, tokenizer)
        elif not hf_bert.check_exportable(model.text):
            written["hf_bert"] = _write_hf_bert(model, flat, os.path.join(dst, "text"),
                                                tokenizer)
        else:
            raise ValueError("cannot export as Hugging Face: " + "; ".join(
                clip_why + hf_bert.check_exportable(model.text)))
    elif chosen == "open_clip":
        why = _open_clip_fits(model)
        if why:
            raise ValueError("cannot export as open_clip: " + "; ".join(why))
        written["open_clip"] = _write_open_clip(model, flat, dst, tokenizer)
    path = save_safetensors(os.path.join(dst, "rmc_jax_model.safetensors"), flat,
                            {"format": "rmc_jax"})
    with open(os.path.join(dst, "rmc_jax_model.json"), "w") as f:
        json.dump({"model": dataclasses.asdict(model)}, f, indent=1)
    written["rmc"] = [path, os.path.join(dst, "rmc_jax_model.json")]
    return written


def export_run(workdir: str, dst: str, *, format: str = "auto", step: int | None = None
               ) -> dict[str, list[str]]:
    """Export the checkpoint ``step`` (default: latest) of a training run or converted model."""
    from rmc_jax import checkpoint as ckpt
    from rmc_jax.pretrained import converted

    if not os.path.isfile(os.path.join(workdir, converted.RUN_CONFIG_FILE)):
        raise FileNotFoundError(f"{workdir} has no {converted.RUN_CONFIG_FILE} (written by "
                                "training and by tools/convert_checkpoint.py); it is not an "
                                "rmc_jax run directory")
    model, record = converted.read_run_config(workdir)
    checkpointer = ckpt.Checkpointer(workdir, 1, None)
    state = checkpointer.restore(None, step=step)
    checkpointer.close()
    tokenizer = os.path.join(workdir, "tokenizer.json")
    if not os.path.isfile(tokenizer):
        tokenizer = record.get("tokenizer") or None
    return export(model, state["params"], dst, format=format, tokenizer=tokenizer)


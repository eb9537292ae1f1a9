"""Import pretrained towers from local directories: which format, which towers, which params.

A model is named by a spec, ``'FORMAT:/path'`` or a bare path (format detected from the files):

  hf:/path          a Hugging Face directory: CLIPModel (both towers) or a BERT-family model
                    (text tower only), config.json + model.safetensors
  open_clip:/path   an open_clip directory: open_clip_config.json + open_clip_model.safetensors
                    (or open_clip_pytorch_model.bin), e.g. BiomedCLIP
  rmc:/path         a directory written by tools/convert_checkpoint.py (Orbax, no PyTorch)

``describe`` reads only configs (and tensor shapes, memory-mapped); ``load`` also converts the
weights. Both return an ``Imported``; ``model_config_from`` and ``imported_params`` turn one
or two of them (image tower from one model, text tower from another) into a ``ModelConfig`` and
the params it initialises.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Sequence

import numpy as np

from rmc_jax.models import ModelConfig, model_config
from rmc_jax.pretrained import converted, hf_bert, hf_clip, open_clip
from rmc_jax.pretrained.common import TOWERS, Imported, read_json
from rmc_jax.pretrained.mapping import (Table, check_against, flatten, import_tensors,
                                        stack_blocks, temperature_table)
from rmc_jax.pretrained.weight_files import load_weights

__all__ = ["FORMATS", "RUN_CONFIG_FILE", "parse_spec", "detect_format", "describe", "load",
           "model_config_from", "imported_params"]

FORMATS = ("hf", "open_clip", "rmc")
RUN_CONFIG_FILE = converted.RUN_CONFIG_FILE  # the model config of a run / converted model


def parse_spec(spec: str) -> tuple[str, str]:
    """'hf:/path' -> ('hf', '/path'); a bare path -> (detected format, path)."""
    spec = str(spec).strip()
    prefix, sep, rest = spec.partition(":")
    if sep and prefix in FORMATS:
        directory = os.path.expanduser(rest)
        if not os.path.isdir(directory):
            raise FileNotFoundError(f"{spec}: directory {directory} not found")
        return prefix, directory
    directory = os.path.expanduser(spec)
    return detect_format(directory), directory


def detect_format(directory: str) -> str:
    if not os.path.isdir(directory):
        raise FileNotFoundError(f"model directory {directory} not found")
    if os.path.isfile(os.path.join(directory, RUN_CONFIG_FILE)) and os.path.isdir(
            os.path.join(directory, "checkpoints")):
        return "rmc"
    if os.path.isfile(os.path.join(directory, open_clip.CONFIG_FILE)):
        return "open_clip"
    if os.path.isfile(os.path.join(directory, "config.json")):
        return "hf"
    raise ValueError(f"{directory}: not a model directory this library can import (expected "
                     f"config.json (Hugging Face), {open_clip.CONFIG_FILE} (open_clip) or "
                     f"{RUN_CONFIG_FILE} + checkpoints/ (converted))")


def _check_towers(towers: Sequence[str]) -> tuple[str, ...]:
    towers = tuple(towers)
    if not towers or any(t not in TOWERS for t in towers):
        raise ValueError(f"towers {towers}: expected a non-empty subset of {TOWERS}")
    return towers


def _hf_kind(directory: str) -> str:
    model_type = read_json(os.path.join(directory, "config.json")).get("model_type")
    if model_type == "clip":
        return "hf_clip"
    if model_type in hf_bert.BERT_MODEL_TYPES:
        return "hf_bert"
    raise ValueError(f"{directory}/config.json: model_type {model_type!r} is not supported; "
                     f"supported: 'clip' (CLIPModel) and BERT-family {hf_bert.BERT_MODEL_TYPES}")


def _tables(imp: Imported, towers, tensors) -> tuple[Imported, Table, dict]:
    """(imported config, table for ``towers``, tensors with legacy names fixed)."""
    table = Table()
    both = set(towers) == set(TOWERS)
    if imp.format == "hf_clip":
        if "image" in towers:
            table.extend(hf_clip.vision_table(imp.vision, imp.image_embed_dim))
        else:
            table.skip(r"^(vision_model\.|visual_projection\.)", "image tower (not requested)")
        if "text" in towers:
            table.extend(hf_clip.text_table(imp.text, imp.text_embed_dim))
        else:
            table.skip(r"^(text_model\.|text_projection\.)", "text tower (not requested)")
        temperature = temperature_table()
    elif imp.format == "hf_bert":
        tensors = hf_bert.rename_legacy(tensors)
        table.extend(hf_bert.text_table(imp.text, hf_bert.detect_prefix(tensors)))
        hf_bert.pretraining_heads(table)
        temperature = None
    else:  # open_clip
        regex = open_clip.tower_prefixes(imp)
        for tower, build in (("image", open_clip.vision_table), ("text", open_clip.text_table)):
            if tower in towers:
                table.extend(build(imp))
            else:
                table.skip(regex[tower], f"{tower} tower (not requested)")
        temperature = temperature_table()
    if temperature is not None:
        if both:
            table.extend(temperature)
        else:
            table.skip(r"^logit_scale$", "temperature (imported only with both towers)")
    return imp, table, tensors


def _with_pooling(imp: Imported, pooling: str | None) -> Imported:
    if not pooling or imp.text is None:
        return imp
    if imp.text.causal and pooling not in ("last", "auto"):
        raise ValueError(f"{imp.source}: a causal (CLIP) text tower pools at the end-of-text "
                         f"token; pooling={pooling!r} is not available")
    imp.text = dataclasses.replace(imp.text, pooling=pooling)
    return imp


def _read(spec: str, towers: Sequence[str], text_pooling: str | None, with_params: bool
          ) -> Imported:
    towers = _check_towers(towers)
    fmt, directory = parse_spec(spec)
    if fmt == "rmc":
        return converted.read(directory, towers, with_params)
    if fmt == "hf":  # the config alone describes the model: check it before the weights
        kind = _hf_kind(directory)
        imp = (hf_clip.config_from_dir(directory) if kind == "hf_clip"
               else hf_bert.config_from_dir(directory, pooling=text_pooling))
        tensors, files = load_weights(directory)
    else:  # open_clip leaves timm / BERT sizes to the checkpoint
        tensors, files = load_weights(directory)
        imp = open_clip.config_from_dir(directory, tensors)
    if imp.text is None and "text" in towers or imp.vision is None and "image" in towers:
        missing = "text" if imp.text is None else "image"
        raise ValueError(f"{spec}: this {imp.format} model has no {missing} tower")
    imp = _with_pooling(imp, text_pooling)
    imp.towers, imp.files = towers, files
    imp, table, tensors = _tables(imp, towers, tensors)
    if with_params:
        params, imp.mapped, imp.skipped = import_tensors(table, tensors, directory)
        imp.params = params
    return imp


def describe(spec: str, towers: Sequence[str] = TOWERS, *, text_pooling: str | None = None
             ) -> Imported:
    """Architecture, projections, preprocessing and tokenizer of a model; no weights converted."""
    return _read(spec, towers, text_pooling, with_params=False)


def load(spec: str, towers: Sequence[str] = TOWERS, *, text_pooling: str | None = None
         ) -> Imported:
    """``describe`` plus the converted params (float32) of ``towers``.

    Raises WeightMappingError naming every missing, unmapped or mis-shaped tensor.
    """
    return _read(spec, towers, text_pooling, with_params=True)


# ---------------------------------------------------------------------------------------------
# Combining imported towers into one model
# ---------------------------------------------------------------------------------------------


def model_config_from(image: Imported | None, text: Imported | None,
                      base: ModelConfig | None = None, *, input_mean: float = 0.5,
                      input_std: float = 0.25) -> ModelConfig:
    """The ModelConfig of a model whose image tower comes from ``image`` and text tower from
    ``text`` (either may be None: that tower keeps ``base``'s architecture and a fresh init).

    Training knobs (dtype, remat, scan_layers), how a position table would start
    (``position_init``: the imported table replaces it) and the region head settings come from
    ``base``.
    The embedding size is the imported projections' output size; two imported projections
    must agree. ``input_mean`` / ``input_std`` describe how the data pipeline normalised the
    images, so the imported tower can map them to its own statistics.
    """
    base = model_config(base)
    knobs = ("dtype", "remat", "scan_layers")
    vision, textc, changes = base.vision, base.text, {}
    if image is not None:
        vision = dataclasses.replace(image.vision, input_mean=input_mean, input_std=input_std,
                                     **{k: getattr(base.vision, k)
                                        for k in knobs + ("position_init",)})
        changes["image_proj_bias"] = image.image_proj_bias
    if text is not None:
        textc = dataclasses.replace(text.text, **{k: getattr(base.text, k) for k in knobs})
        changes["text_proj_bias"] = text.text_proj_bias
        changes["text_proj_hidden"] = text.text_proj_hidden
    dims = {name: dim for name, dim in (
        ("image", image.image_embed_dim if image is not None else None),
        ("text", text.text_embed_dim if text is not None else None)) if dim}
    if len(set(dims.values())) > 1:
        raise ValueError(f"the imported projections disagree on the embedding size: image "
                         f"{dims['image']} ({image.source}) vs text {dims['text']} "
                         f"({text.source})")
    embed_dim = next(iter(dims.values()), base.embed_dim)
    return dataclasses.replace(base, vision=vision, text=textc, embed_dim=embed_dim, **changes)


def imported_params(image: Imported | None, text: Imported | None,
                    model: ModelConfig) -> dict[str, np.ndarray]:
    """Flat params ('image_encoder/...' -> array) that the imported towers provide for
    ``model`` (from ``model_config_from``), laid out for its scan_layers settings.

    Also: the temperature when both towers come from one model that has one, and the region
    projection starts as a copy of an imported image projection (regions then begin in the
    image embedding space instead of a random one).
    """
    flat: dict[str, np.ndarray] = {}
    same = image is not None and text is not None and image.source == text.source
    if image is not None:
        flat.update({k: v for k, v in image.params.items()
                     if k.split("/")[0] in ("image_encoder", "image_proj")})
        if "image_proj/kernel" in image.params:
            flat["region_proj/kernel"] = image.params["image_proj/kernel"]
    if text is not None:
        flat.update({k: v for k, v in text.params.items()
                     if k.split("/")[0] in ("text_encoder", "text_proj")})
    if same and "log_inv_temperature" in image.params:
        flat["log_inv_temperature"] = image.params["log_inv_temperature"]
    for tower, cfg in (("image_encoder", model.vision), ("text_encoder", model.text)):
        if cfg.scan_layers:
            part = {k: v for k, v in flat.items() if k.startswith(tower + "/")}
            for k in part:
                del flat[k]
            flat.update(stack_blocks(part))
    return flat


def check_params(flat: dict[str, np.ndarray], model: ModelConfig, where: str) -> None:
    """Shape check of imported params against the model's own parameter shapes."""
    import jax

    from rmc_jax.models import build_model, example_inputs

    m = build_model(model)
    abstract = jax.eval_shape(lambda k: m.init(k, **example_inputs(m))["params"],
                              jax.random.key(0))
    expected = {k: v.shape for k, v in flatten(abstract).items()}
    check_against(flat, expected, where)

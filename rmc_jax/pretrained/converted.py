"""Converted models: an rmc_jax checkpoint directory that can be imported again without PyTorch.

    DST/checkpoints/0/        Orbax checkpoint of {'step': 0, 'params': full RegionCLIP params}
    DST/model_config.json     {"model": ModelConfig fields, "source": ..., "towers": [...]}
    DST/tokenizer.json        the source model's tokenizer, when it has one

The same layout as a training workdir, so ``--mode=eval --workdir=DST`` evaluates the
pretrained model zero-shot, ``teacher.source='checkpoint'`` can use it when the student has the
same architecture, and ``init.*='rmc:DST'`` / ``teacher.path='rmc:DST'`` import from it.
"""

from __future__ import annotations

import dataclasses
import json
import os

import numpy as np

from rmc_jax.models import ModelConfig, model_config
from rmc_jax.pretrained.common import Imported, read_json
from rmc_jax.pretrained.mapping import flatten, unstack_blocks

__all__ = ["save", "read", "read_run_config", "write_run_config"]

RUN_CONFIG_FILE = "model_config.json"


def write_run_config(directory: str, model: ModelConfig, **info) -> str:
    """``directory``/model_config.json with the model's fields and ``info`` (JSON values)."""
    os.makedirs(directory, exist_ok=True)
    path = os.path.join(directory, RUN_CONFIG_FILE)
    record = {"model": dataclasses.asdict(model), **info}
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(record, f, indent=1)
    os.replace(tmp, path)
    return path


def read_run_config(directory: str) -> tuple[ModelConfig, dict]:
    """(ModelConfig, the whole record) from ``directory``/model_config.json."""
    record = read_json(os.path.join(directory, RUN_CONFIG_FILE))
    return model_config(record["model"]), record


def save(directory: str, model: ModelConfig, params, *, tokenizer_object=None, **info) -> str:
    """Write a converted model (see the module docstring); returns the checkpoint directory.
    ``tokenizer_object`` (an rmc_jax Tokenizer) is saved as tokenizer.json; ``info`` goes to
    model_config.json."""
    from rmc_jax import checkpoint as ckpt

    if os.path.isdir(os.path.join(directory, "checkpoints")) and os.listdir(
            os.path.join(directory, "checkpoints")):
        raise FileExistsError(f"{directory} already holds a checkpoint; choose an empty or new "
                              "directory")
    checkpointer = ckpt.Checkpointer(directory, 1, 1)
    checkpointer.save(0, {"step": np.zeros((), np.int32), "params": params}, force=True)
    checkpointer.close()
    if tokenizer_object is not None:
        tokenizer_object.save(directory)
    write_run_config(directory, model, **info)
    return checkpointer.directory


def read(directory: str, towers, with_params: bool) -> Imported:
    """A converted directory as an ``Imported`` (both projections, the temperature)."""
    model, _ = read_run_config(directory)
    tokenizer = os.path.join(directory, "tokenizer.json")
    imp = Imported(
        source=directory, format="rmc", towers=tuple(towers), vision=model.vision,
        text=model.text, image_embed_dim=model.embed_dim, text_embed_dim=model.embed_dim,
        image_proj_bias=model.image_proj_bias, text_proj_bias=model.text_proj_bias,
        text_proj_hidden=model.text_proj_hidden, has_temperature=True,
        tokenizer=tokenizer if os.path.isfile(tokenizer) else None)
    if with_params:
        from rmc_jax import checkpoint as ckpt

        checkpointer = ckpt.Checkpointer(directory, 1, 1)
        state = checkpointer.restore(None)
        checkpointer.close()
        flat = unstack_blocks({k: np.asarray(v) for k, v in flatten(state["params"]).items()})
        keep = {"image": ("image_encoder", "image_proj"), "text": ("text_encoder", "text_proj")}
        roots = {r for t in towers for r in keep[t]}
        if set(towers) == {"image", "text"}:
            roots.add("log_inv_temperature")
        imp.params = {k: v for k, v in flat.items() if k.split("/")[0] in roots}
        imp.mapped = [(k, k) for k in sorted(imp.params)]
        imp.files = [checkpointer.directory]
    # Params are stored per block; the importer re-stacks them for scan_layers runs.
    imp.vision = dataclasses.replace(imp.vision, scan_layers=False)
    imp.text = dataclasses.replace(imp.text, scan_layers=False)
    return imp

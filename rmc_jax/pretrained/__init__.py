"""Pretrained weights: import CLIP / BiomedCLIP / BERT-family towers from local directories,
use a pretrained CLIP as the distillation teacher, and export trained towers to safetensors.

Nothing is downloaded: every function takes a directory the user already has. Weights are read
from safetensors with NumPy (no PyTorch needed); ``.bin`` files only through
``torch.load(weights_only=True)`` when PyTorch is installed.

    imported = load("hf:/models/clip-vit-base-patch16")          # both towers
    text = load("hf:/models/BiomedBERT", towers=("text",))        # a BERT text tower
    model_cfg = model_config_from(imported, text)                 # image from CLIP, text BERT
    flat_params = imported_params(imported, text, model_cfg)      # {'image_encoder/...': array}
    export(model_cfg, trained_params, "exported/", format="hf")   # back to safetensors

Runs use it through ``config.init`` / ``config.teacher`` (see ``run``); the command-line tools
are tools/convert_checkpoint.py and tools/export_checkpoint.py.
"""

from rmc_jax.pretrained.common import Imported
from rmc_jax.pretrained.export import export, export_run
from rmc_jax.pretrained.importer import (FORMATS, RUN_CONFIG_FILE, check_params, describe,
                                         detect_format, imported_params, load,
                                         model_config_from, parse_spec)
from rmc_jax.pretrained.mapping import WeightMappingError
from rmc_jax.pretrained.run import (initial_params, merge, resolve_config, save_run_config,
                                    teacher_crop_size, teacher_inputs, teacher_model)

__all__ = [
    "FORMATS",
    "RUN_CONFIG_FILE",
    "Imported",
    "WeightMappingError",
    "check_params",
    "describe",
    "detect_format",
    "export",
    "export_run",
    "imported_params",
    "initial_params",
    "load",
    "merge",
    "model_config_from",
    "parse_spec",
    "resolve_config",
    "save_run_config",
    "teacher_crop_size",
    "teacher_inputs",
    "teacher_model",
]

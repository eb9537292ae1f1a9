"""How a training run uses pretrained models (the ``init`` and ``teacher`` config keys).

    config.init.image = 'hf:/path'         image tower (+ its projection) from a CLIP / open_clip /
                                           converted model; preprocessing follows that model
    config.init.text  = 'hf:/path'         text tower (+ projection) from a CLIP, a BERT-family
                                           model, an open_clip or a converted model; the run
                                           then encodes text with that model's tokenizer
    config.init.text_pooling = ''          'cls' | 'mean' | 'pooler' to override a BERT's pooling
    config.teacher.source = 'hf'           a pretrained CLIP as the frozen distillation teacher,
    config.teacher.path = 'hf:/path'       with its own tokenizer, preprocessing and crop size

``resolve_config`` rewrites the config before anything is built: the model section takes the
imported architecture, ``data.image_size`` the imported image size, ``data.tokenizer`` the
imported tokenizer. ``initial_params`` gives the weights that ``merge`` puts over a fresh
init (everything not imported, e.g. the region head, keeps its random init).
"""

from __future__ import annotations

import dataclasses
import functools
import os

import jax
import ml_collections
import numpy as np

from rmc_jax.models import RegionCLIP, model_config
from rmc_jax.pretrained import converted
from rmc_jax.pretrained.importer import describe, imported_params, load, model_config_from
from rmc_jax.pretrained.mapping import flatten, unflatten

__all__ = ["resolve_config", "initial_params", "merge", "teacher_model", "teacher_inputs",
           "teacher_crop_size", "save_run_config"]


def _get(section, key, default=""):
    if section is None:
        return default
    try:
        return section.get(key, default)
    except AttributeError:
        return getattr(section, key, default)


def _input_stats(config) -> tuple[float, float]:
    """How the data pipeline normalised images (x - mean) / std, x in [0, 1]."""
    from rmc_jax.data.pipeline import PipelineConfig

    return (float(_get(config.data, "pixel_mean", PipelineConfig.pixel_mean)),
            float(_get(config.data, "pixel_std", PipelineConfig.pixel_std)))


def _specs(config) -> tuple[str, str, str]:
    init = _get(config, "init", None)
    return _get(init, "image"), _get(init, "text"), _get(init, "text_pooling")


def _describe_towers(image_spec: str, text_spec: str, pooling: str, reader=describe):
    """(image Imported | None, text Imported | None); one read when both name one model."""
    def fail(key, spec, error):
        raise ValueError(f"invalid config: init.{key} = {spec!r}: {error}") from error

    if image_spec and image_spec == text_spec:
        try:
            both = reader(image_spec, ("image", "text"), text_pooling=pooling or None)
        except (OSError, ValueError) as error:
            fail("image", image_spec, error)
        return both, both
    image = text = None
    if image_spec:
        try:
            image = reader(image_spec, ("image",))
        except (OSError, ValueError) as error:
            fail("image", image_spec, error)
    if text_spec:
        try:
            text = reader(text_spec, ("text",), text_pooling=pooling or None)
        except (OSError, ValueError) as error:
            fail("text", text_spec, error)
    return image, text


def resolve_config(config: ml_collections.ConfigDict, workdir: str | None = None
                   ) -> ml_collections.ConfigDict:
    """``config`` with the model, image size and tokenizer of the pretrained towers it names
    (a modified copy; ``config`` itself is returned unchanged when nothing is imported).

    With ``workdir`` (evaluation of an existing run) and no ``init`` keys, a model that was
    imported or converted into that workdir is rebuilt from its saved ``model_config.json``.
    """
    image_spec, text_spec, pooling = _specs(config)
    saved = None
    if not (image_spec or text_spec) and workdir:
        path = os.path.join(workdir, converted.RUN_CONFIG_FILE)
        if os.path.isfile(path):
            model, record = converted.read_run_config(workdir)
            if record.get("imported"):
                saved = (model, record)
    if not (image_spec or text_spec or saved):
        return config
    c = config.copy_and_resolve_references()
    with c.unlocked():
        if saved:
            model, record = saved
            tokenizer = record.get("tokenizer") or ""
            if os.path.isfile(os.path.join(workdir, "tokenizer.json")):
                tokenizer = ""  # tokenizer_for_run reads the workdir's own copy
        else:
            image, text = _describe_towers(image_spec, text_spec, pooling)
            mean, std = _input_stats(config)
            model = model_config_from(image if image_spec else None,
                                      text if text_spec else None, model_config(config.model),
                                      input_mean=mean, input_std=std)
            tokenizer = ""
            if text_spec:
                tokenizer = text.tokenizer or ""
                if not tokenizer and not c.data.tokenizer:
                    raise ValueError(
                        f"invalid config: init.text = {text_spec!r} has no tokenizer files "
                        "(tokenizer.json, vocab.txt, ...); set data.tokenizer to the "
                        "model's tokenizer directory")
        c.model = ml_collections.ConfigDict(dataclasses.asdict(model))
        c.data.image_size = model.vision.image_size
        if tokenizer and not c.data.tokenizer:
            c.data.tokenizer = tokenizer
    return c


def initial_params(config) -> dict:
    """Nested params (NumPy float32) that the ``init`` towers provide for the resolved config's
    model; {} when nothing is imported. Shapes are checked against the model in ``merge``."""
    image_spec, text_spec, pooling = _specs(config)
    if not (image_spec or text_spec):
        return {}
    image, text = _describe_towers(image_spec, text_spec, pooling, reader=load)
    flat = imported_params(image if image_spec else None, text if text_spec else None,
                           model_config(config.model))
    return unflatten(flat)


def merge(params: dict, imported: dict) -> dict:
    """``params`` with every leaf that ``imported`` has replaced (same tree, same shapes).

    Works on arrays and tracers alike (it runs inside the jitted state init)."""
    if not imported:
        return params
    flat, new = flatten(params), flatten(imported)
    problems = [f"{path}: imported shape {tuple(value.shape)}, the model's parameter has "
                f"shape {tuple(flat[path].shape)}" if path in flat else
                f"{path}: not a parameter of the model"
                for path, value in new.items()
                if path not in flat or tuple(value.shape) != tuple(flat[path].shape)]
    if problems:
        raise ValueError("imported weights do not fit the model:\n  " + "\n  ".join(problems))
    flat.update({path: value.astype(flat[path].dtype) for path, value in new.items()})
    return unflatten(flat)


# ---------------------------------------------------------------------------------------------
# A pretrained CLIP as the frozen distillation teacher
# ---------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=4)
def _teacher(spec: str, input_mean: float, input_std: float):
    imported = describe(spec, ("image", "text"))
    if not (imported.image_embed_dim and imported.text_embed_dim):
        raise ValueError(f"teacher.path = {spec!r}: a teacher needs both towers with their "
                         "projections into one embedding space (a CLIP-style model)")
    model_cfg = model_config_from(imported, imported, input_mean=input_mean, input_std=input_std)
    return RegionCLIP.from_config(model_cfg), imported, model_cfg


def teacher_model(config) -> RegionCLIP:
    """The teacher's RegionCLIP (only its encode_image / encode_text are used)."""
    return _teacher(config.teacher.path, *_input_stats(config))[0]


def teacher_crop_size(config) -> int:
    """Regions are cropped at the teacher's own image size (what it was trained to see)."""
    return teacher_model(config).vision.image_size


def teacher_inputs(config, prompts, mesh=None) -> dict:
    """{'params': the teacher's params, 'concepts': (ids [T, L], mask [T, L])}: the concept
    prompts encoded with the teacher's own tokenizer; replicated on ``mesh`` if given."""
    from rmc_jax.data.tokenizer import load_tokenizer

    model, imported, model_cfg = _teacher(config.teacher.path, *_input_stats(config))
    if imported.tokenizer is None:
        raise ValueError(f"teacher.path = {config.teacher.path!r} has no tokenizer files "
                         "(tokenizer.json, vocab.txt, ...)")
    loaded = load(config.teacher.path, ("image", "text"))
    params = unflatten(imported_params(loaded, loaded, model_cfg))
    tokenizer = load_tokenizer(imported.tokenizer,
                               min(model.text.max_len, max(config.data.max_caption_len, 8)))
    ids, mask = tokenizer(list(prompts))
    tree = {"params": params, "concepts": (np.asarray(ids), np.asarray(mask))}
    if mesh is not None:
        from rmc_jax import sharding as shd

        return jax.device_put(tree, shd.replicated(mesh))
    return tree


# ---------------------------------------------------------------------------------------------
# The run's own record
# ---------------------------------------------------------------------------------------------


def save_run_config(workdir: str, config) -> str | None:
    """``workdir``/model_config.json: the resolved model config (what the checkpoints hold),
    the ``init`` specs and the tokenizer, for evaluation and export (process 0 only)."""
    if jax.process_index() != 0:
        return None
    image_spec, text_spec, _ = _specs(config)
    return converted.write_run_config(
        workdir, model_config(config.model), imported=bool(image_spec or text_spec),
        init={"image": image_spec, "text": text_spec},
        tokenizer=str(_get(config.data, "tokenizer", "") or ""))

"""Evaluation of a trained model: zero-shot classification, image<->report retrieval,
region<->caption matching (and lesion-description retrieval), hard-negative discrimination.

``evaluate(model, params, config, tokenizer, workdir)`` embeds the evaluation split with the
model's ``encode_*`` functions only and writes ``<workdir>/eval/results.json`` (a flat
``{metric: number}``); ``evaluate_checkpoint(config, workdir)`` does the same from the latest
checkpoint alone.
"""

from __future__ import annotations

import json
import math
import os

import numpy as np

from rmc_jax.data import pipeline as pipe
from rmc_jax.data import sources as data_sources
from rmc_jax.evaluate import tasks
from rmc_jax.evaluate.embed import Encoders, embed_batches


def load_prompts(path: str) -> dict:
    """A user-supplied JSON ``{class: [prompts]}`` or ``{class: {positive: [...], negative:
    [...]}}`` (e.g. a published prompt set)."""
    with open(path) as f:
        prompts = json.load(f)
    if not isinstance(prompts, dict) or not all(
            isinstance(v, (list, dict)) for v in prompts.values()):
        raise ValueError(f"{path}: expected a JSON object mapping each class to a list of "
                         "prompts (or to {'positive': [...], 'negative': [...]})")
    return prompts


def eval_source(config):
    """The evaluation split named by ``config.data`` (eval, eval_root, eval_split, eval_size)."""
    d = config.data
    return data_sources.open_source(d.eval, d.eval_root or d.root, d.eval_split, d.eval_size,
                                    config.seed, d.image_size)


def evaluate(model, params, config, tokenizer, workdir: str, *, source=None,
             batch_size: int = 32) -> dict:
    """Embed the evaluation split, compute every task, write ``eval/results.json``."""
    source = eval_source(config) if source is None else source
    pipeline_config = pipe.PipelineConfig(
        image_size=config.data.image_size, max_regions=config.data.max_regions,
        num_negatives=max(config.data.num_negatives, 4), max_text_len=config.data.max_text_len,
        max_caption_len=config.data.max_caption_len, augment=False)
    caption_tokenizer = tokenizer.with_max_len(config.data.max_caption_len)
    dataset = pipe.make_dataset(source, pipeline_config, tokenizer,
                                batch_size=min(batch_size, len(source)), seed=config.seed,
                                train=False, caption_tokenizer=caption_tokenizer)
    encoders = Encoders(model, params)
    data = embed_batches(encoders, dataset)

    def embed_texts(texts):
        return encoders.texts(*caption_tokenizer(list(texts)))

    prompts = load_prompts(config.evals.prompts) if config.get("evals", {}).get(
        "prompts") else None
    results = {"eval/examples": float(len(data["image"])),
               "eval/regions": float(data["box_mask"].sum())}
    results.update(tasks.zero_shot(data["image"], data["labels"], data["label_mask"],
                                   source.label_names, embed_texts, prompts,
                                   temperature=encoders.temperature))
    results.update(tasks.image_report_retrieval(data["image"], data["report"],
                                                data["report_key"]))
    results.update(tasks.region_matching(data))
    results.update(tasks.hard_negative_accuracy(data))
    write_results(results, workdir)
    return results


def write_results(results: dict, workdir: str) -> str:
    """``<workdir>/eval/results.json``: finite metrics only (undefined ones, e.g. the AUROC of
    a class with no positive example, are left out rather than written as NaN)."""
    os.makedirs(os.path.join(workdir, "eval"), exist_ok=True)
    path = os.path.join(workdir, "eval", "results.json")
    finite = {k: float(v) for k, v in sorted(results.items())
              if v is not None and math.isfinite(float(v))}
    with open(path, "w") as f:
        json.dump(finite, f, indent=1)
    return path


def evaluate_checkpoint(config, workdir: str) -> dict:
    """Evaluate the latest checkpoint in ``workdir`` with the tokenizer saved there."""
    import jax

    from rmc_jax import checkpoint as ckpt
    from rmc_jax.data.tokenizer import tokenizer_for_run
    from rmc_jax.models import build_model

    tokenizer = tokenizer_for_run(workdir, config.data.max_text_len,
                                  path=config.data.tokenizer or None)
    checkpointer = ckpt.Checkpointer(workdir, 1, None)
    if checkpointer.latest_step() is None:
        raise FileNotFoundError(f"no checkpoint to evaluate in {checkpointer.directory}")
    state = checkpointer.restore(None)
    checkpointer.close()
    model = build_model(config.model)
    params = jax.tree.map(np.asarray, state["params"])
    return evaluate(model, params, config, tokenizer, workdir)


def summary(results: dict) -> str:
    """A few headline numbers for the end of a run."""
    keys = ["zeroshot/auroc_mean", "retrieval/image_to_report_R@5",
            "regions/region_to_caption_semantic_R@1", "hard_negatives/accuracy/laterality"]
    return "  ".join(f"{k}={results[k]:.3f}" for k in keys
                     if k in results and np.isfinite(results[k]))

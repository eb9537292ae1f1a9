"""Evaluation of a trained model: zero-shot classification, image<->report retrieval,
region<->caption matching (and lesion-description retrieval), hard-negative discrimination,
zero-shot phrase grounding, the crop baseline for region scores, and standard protocols on
local copies of real datasets.

``evaluate(model, params, config, tokenizer, workdir)`` embeds the evaluation split with the
model's ``encode_*`` functions only and writes ``<workdir>/eval/results.json`` (a flat
``{metric: number}``), ``<workdir>/eval/prompts.json`` (the prompts zero-shot classification
scored with, so a number can be traced to its wording) and ``<workdir>/eval/report.md`` with
its figures;
``evaluate_checkpoint(config, workdir)`` does the same from the latest checkpoint alone.

Bad data: an example that cannot be read or prepared is left out of every metric (never
replaced by another), counted in ``eval/skipped`` (``<protocol>/skipped``) and named in the
report; more than ``data.max_bad_fraction`` of a split stops the evaluation with the list.
Metrics that need text score only text that is there: examples without a report are left out
of retrieval (``retrieval/left_out_no_report``), regions without a caption out of the region
tasks; a task left with nothing to score is absent from results.json, and report.md says why.

Options (``config.evals``): ``prompts`` (a JSON prompt set), ``region_mode`` ('head', 'crop',
'both'), ``grounding``, ``report``, ``protocols`` and ``datasets`` (see ``protocols``).
"""

from __future__ import annotations

import json
import math
import os

import numpy as np

from rmc_jax.data import pipeline as pipe
from rmc_jax.data import sources as data_sources
from rmc_jax.data.sources.mixture import Mixture
from rmc_jax.data.tokenizer import SPECIAL_TOKENS
from rmc_jax.evaluate import grounding
from rmc_jax.evaluate import protocols as protocols_lib
from rmc_jax.evaluate import tasks as tasks_lib
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
    """The evaluation split named by ``config.data`` (eval, eval_root, eval_split, eval_size),
    opened with ``data.source_options`` (e.g. MS-CXR's ``reports_root``). Options given to
    every dataset are checked against the evaluation dataset only when it is also the training
    dataset (they were written for that one); ``name.key`` options always apply. A mixture is
    evaluated on every example of its datasets once: its weights, which repeat the examples
    of the smaller datasets in training, would count them several times."""
    d = config.data
    source = data_sources.open_source(d.eval, d.eval_root or d.root, d.eval_split, d.eval_size,
                                      config.seed, d.image_size, d.get("source_options", ""),
                                      strict=d.eval == d.train)
    if isinstance(source, Mixture):  # evaluated, each example of each dataset counts once
        return Mixture(source.sources, [len(s) for s in source.sources])
    return source


REGION_MODES = ("head", "crop", "both")
# Regions per image the evaluation scores unless evals.max_regions says otherwise (the embedded
# test split has at most 6; its images past training's 4 were left out before it existed).
EVAL_MAX_REGIONS = 16


def eval_max_regions(config) -> int:
    """Regions per image the evaluation scores: ``evals.max_regions`` (a bound of its own, not
    training's ``data.max_regions``, so the region metrics see every region of most images;
    the ones beyond it are counted in ``eval/regions_beyond_max_regions``)."""
    value = int(_option(config, "max_regions", EVAL_MAX_REGIONS))
    if value < 1:
        raise ValueError(f"evals.max_regions = {value}; expected >= 1 (regions per image "
                         "the evaluation scores)")
    return value


def _option(config, name: str, default):
    """``config.evals.<name>``, or ``default`` for configs written before the option existed."""
    evals = config.get("evals", None) if hasattr(config, "get") else None
    if evals is None:
        return default
    value = evals.get(name, default) if hasattr(evals, "get") else getattr(evals, name, default)
    return default if value is None else value


class _Context:
    """What the tasks of one evaluation share: model encoders, tokenizers, config options."""

    def __init__(self, model, params, config, tokenizer, batch_size: int):
        self.config, self.tokenizer, self.batch_size = config, tokenizer, batch_size
        self.caption_tokenizer = tokenizer.with_max_len(config.data.max_caption_len)
        self.pipeline = pipe.PipelineConfig.from_data_config(
            config.data, num_negatives=max(config.data.num_negatives, 4), augment=False,
            flip_probability=0.0, max_regions=eval_max_regions(config))
        self.encoders = Encoders(model, params)
        prompts = _option(config, "prompts", "")
        self.prompts = load_prompts(prompts) if prompts else None
        self.region_mode = _option(config, "region_mode", "both")
        if self.region_mode not in REGION_MODES:
            raise ValueError(f"evals.region_mode = {self.region_mode!r}; expected one of "
                             f"{REGION_MODES} ('head': the model's region head, 'crop': the "
                             "image tower on each cropped box, 'both')")
        self.grounding = bool(_option(config, "grounding", True))
        self._text_cache: dict[str, np.ndarray] = {}

    def embed_texts(self, texts) -> np.ndarray:
        """Prompt texts -> [n, E] (cached: protocols reuse the same prompts)."""
        missing = [t for t in dict.fromkeys(texts) if t not in self._text_cache]
        if missing:
            for text, emb in zip(missing, self.encoders.texts(*self.caption_tokenizer(missing))):
                self._text_cache[text] = emb
        return np.stack([self._text_cache[t] for t in texts])

    def embed(self, source, what: str, *, crops: bool, patches: bool, keep_samples: int = 0):
        """Embed every readable example of ``source`` -> (data [N, ...] arrays, samples, the
        ``SkipLog`` of the examples left out); ``what`` names the split in errors."""
        batches = pipe.EvaluationBatches(
            source, self.pipeline, self.tokenizer, caption_tokenizer=self.caption_tokenizer,
            batch_size=max(1, min(self.batch_size, len(source))), what=f"examples of {what}")
        data, samples = embed_batches(self.encoders, batches, crops=crops, patches=patches,
                                      keep_samples=keep_samples)
        count = batches.count  # the rows after it repeat the last example to fill a batch
        return ({name: value[:count] for name, value in data.items()},
                {name: value[:count] for name, value in samples.items()}, batches.log)

    def decode(self, ids: np.ndarray) -> str:
        """Token ids -> text without padding and special tokens (for figure captions)."""
        backend = self.caption_tokenizer.backend
        special = set(SPECIAL_TOKENS) | {"<pad>", "<s>", "</s>", "<|endoftext|>",
                                         "<|startoftext|>"}
        kept = [int(i) for i in ids if backend.id_to_token(int(i)) not in special]
        return backend.decode(kept, skip_special_tokens=True)


def _region_tasks(data, context: _Context, namespace: str, tasks, raw) -> dict:
    """Region matching, lesion retrieval, hard negatives and grounding of one embedded split,
    for the region embeddings that ``evals.region_mode`` selects."""
    results = {}
    if {"regions", "hard_negatives", "grounding"} & set(tasks) and not data["box_mask"].any():
        tasks_lib.note(raw, f"{namespace}regions", "not computed: no example has a region with "
                       "a box and a caption (region matching, lesion retrieval, hard negatives "
                       "and grounding need one)")
        return results
    variants = {"head": [("regions", "")], "crop": [("regions_crop", "_crop")],
                "both": [("regions", ""), ("regions_crop", "_crop")]}[context.region_mode]
    for key, suffix in variants:
        if "regions" in tasks:
            matched = tasks_lib.region_matching(data, regions_key=key,
                                                prefix=f"{namespace}regions{suffix}", raw=raw)
            results.update(matched)
            results.update(tasks_lib.lesion_retrieval(
                matched, f"{namespace}regions{suffix}", f"{namespace}lesion_retrieval{suffix}"))
        if "hard_negatives" in tasks:
            results.update(tasks_lib.hard_negative_accuracy(
                data, regions_key=key, prefix=f"{namespace}hard_negatives{suffix}"))
    if "grounding" in tasks:
        results.update(grounding.phrase_grounding(
            data, context.pipeline.image_size, prefix=f"{namespace}grounding", raw=raw))
    return results


def _split_results(data, context: _Context, namespace: str, tasks, label_names, raw,
                   columns=None, pneumonia=None) -> dict:
    """Every task in ``tasks`` on one embedded split; metric names start with ``namespace``."""
    results = {}
    if "zeroshot" in tasks:
        columns = list(range(len(label_names))) if columns is None else columns
        results.update(tasks_lib.zero_shot(
            data["image"], data["labels"][:, columns], data["label_mask"][:, columns],
            [label_names[c] for c in columns], context.embed_texts, context.prompts,
            temperature=context.encoders.temperature, prefix=f"{namespace}zeroshot", raw=raw))
    if "pneumonia" in tasks:
        positive, known = pneumonia
        prompts = context.prompts or {}
        positive_prompts = _positive_prompts(prompts.get("Pneumonia")) or \
            tasks_lib.default_prompts(["pneumonia"])["pneumonia"]["positive"]
        normal_prompts = _positive_prompts(prompts.get("Normal")) or list(tasks_lib.NORMAL_PROMPTS)
        results.update(tasks_lib.binary_zero_shot(
            data["image"], positive, known, context.embed_texts, positive_prompts,
            normal_prompts, context.encoders.temperature, prefix=f"{namespace}zeroshot",
            class_name="Pneumonia", raw=raw))
    if "retrieval" in tasks:
        results.update(tasks_lib.image_report_retrieval(
            data["image"], data["report"], data["report_key"], has_report=data["has_report"],
            prefix=f"{namespace}retrieval", raw=raw))
    results.update(_region_tasks(data, context, namespace, tasks, raw))
    return results


def _positive_prompts(spec):
    if spec is None:
        return None
    return list(spec["positive"]) if isinstance(spec, dict) else list(spec)


EVAL_SPLIT_TASKS = ("zeroshot", "retrieval", "regions", "hard_negatives", "grounding")


def compute(model, params, config, tokenizer, *, source=None, batch_size: int = 32
            ) -> tuple[dict, dict]:
    """Every metric of the evaluation split and of the protocols in ``config.evals.protocols``.

    Returns (results, raw): ``results`` is the flat ``{metric: number}`` of ``results.json``;
    ``raw`` holds what the report plots (per-class scores, per-query ranks, per-phrase
    grounding scores, a few sample images with their boxes, captions and similarity maps).
    """
    source = eval_source(config) if source is None else source
    context = _Context(model, params, config, tokenizer, batch_size)
    tasks = [t for t in EVAL_SPLIT_TASKS if t != "grounding" or context.grounding]
    crops = context.region_mode != "head"
    data, samples, skipped = context.embed(
        source, f"the evaluation split ({getattr(source, 'name', 'data.eval')})", crops=crops,
        patches=context.grounding, keep_samples=8)
    raw: dict = {}
    results = _counts(data, skipped, "eval/", raw)
    results.update(_split_results(data, context, "", tasks, list(source.label_names), raw))
    raw["samples"] = _samples(data, samples, context)

    for name in protocols_lib.parse_protocols(_option(config, "protocols", "")):
        protocol = protocols_lib.PROTOCOLS[name]
        protocol_source = protocols_lib.open_protocol(name, _option(config, "datasets", None))
        needs_regions = bool({"regions", "hard_negatives", "grounding"} & set(protocol.tasks))
        data, _, skipped = context.embed(protocol_source, f"protocol {name}",
                                         crops=crops and needs_regions,
                                         patches="grounding" in protocol.tasks)
        label_names = list(protocol_source.label_names)
        columns = (protocols_lib.label_columns(protocol, label_names)
                   if "zeroshot" in protocol.tasks else None)
        pneumonia = (protocols_lib.pneumonia_targets(protocol_source, data["labels"],
                                                     data["label_mask"].astype(bool))
                     if "pneumonia" in protocol.tasks else None)
        results.update(_counts(data, skipped, f"{name}/", raw, regions=needs_regions))
        results.update(_split_results(data, context, f"{name}/", protocol.tasks, label_names,
                                      raw, columns=columns, pneumonia=pneumonia))
    return results, raw


def _counts(data, skipped, prefix: str, raw: dict, regions: bool = True) -> dict:
    """``<prefix>examples`` (embedded), ``<prefix>skipped`` (bad examples left out, named in
    ``raw['skipped']``) and ``<prefix>regions`` / ``regions_without_caption`` /
    ``regions_beyond_max_regions`` (scored / left out: no caption, past ``evals.max_regions``)."""
    counts = {f"{prefix}examples": float(len(data["image"])),
              f"{prefix}skipped": float(skipped.skipped)}
    if regions:
        counts[f"{prefix}regions"] = float(data["box_mask"].sum())
        counts[f"{prefix}regions_without_caption"] = float(data["regions_without_caption"].sum())
        counts[f"{prefix}regions_beyond_max_regions"] = float(data["regions_cut"].sum())
    if skipped.skipped:
        raw.setdefault("skipped", {})[prefix.rstrip("/")] = list(skipped.distinct)
    return counts


def _samples(data, samples, context: _Context) -> dict:
    """The first few examples for the report's image grid: images [K, S, S], boxes, captions
    (decoded from the tokens the model saw) and grounding maps [K, R, h, w] when computed."""
    k = len(samples["image"])
    mask = data["box_mask"][:k].astype(bool)
    captions = [[context.decode(samples["caption_ids"][i, r]) if mask[i, r] else ""
                 for r in range(mask.shape[1])] for i in range(k)]
    out = {"image": samples["image"][..., 0], "boxes": data["boxes"][:k], "box_mask": mask,
           "captions": captions, "content": data["content"][:k],
           "pixel_mean": context.pipeline.pixel_mean, "pixel_std": context.pipeline.pixel_std}
    if "patch_maps" in data:
        out["patch_maps"] = data["patch_maps"][:k]
    return out


def evaluate(model, params, config, tokenizer, workdir: str, *, source=None,
             batch_size: int = 32) -> dict:
    """Embed the evaluation split (and the configured protocols' datasets), compute every
    task, write ``eval/results.json``, ``eval/prompts.json`` and, unless ``evals.report`` is
    False, ``eval/report.md`` with its figures. Returns the flat results."""
    results, raw = compute(model, params, config, tokenizer, source=source,
                           batch_size=batch_size)
    write_results(results, workdir)
    write_prompts(raw.get("prompts", {}), workdir)
    if _option(config, "report", True):
        from rmc_jax.evaluate import report

        report.write_report(results, raw, os.path.join(workdir, "eval"),
                            title=f"rmc_jax evaluation ({config.get('variant', 'model')})")
    return results


def write_results(results: dict, workdir: str) -> str:
    """``<workdir>/eval/results.json``: finite metrics only (undefined ones, e.g. the AUROC of
    a class with no positive example, are left out rather than written as NaN)."""
    finite = {k: float(v) for k, v in sorted(results.items())
              if v is not None and math.isfinite(float(v))}
    return _write_eval_json(finite, workdir, "results.json")


def write_prompts(prompts: dict, workdir: str) -> str:
    """``<workdir>/eval/prompts.json``: ``{prefix: {class: {'positive': [...], 'negative':
    [...]}}}``, the prompts each zero-shot task (``zeroshot``, ``<protocol>/zeroshot``) scored
    each class with."""
    return _write_eval_json(prompts, workdir, "prompts.json")


def _write_eval_json(value, workdir: str, name: str) -> str:
    """Write ``value`` as ``<workdir>/eval/<name>``; returns the path."""
    os.makedirs(os.path.join(workdir, "eval"), exist_ok=True)
    path = os.path.join(workdir, "eval", name)
    with open(path, "w") as f:
        json.dump(value, f, indent=1)
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


# What an evaluation left out, as the end-of-run line explains each count that is not 0.
LEFT_OUT = (
    ("/skipped", "bad examples left out, named in the warnings and in eval/report.md"),
    ("/regions_beyond_max_regions", "regions past an image's first evals.max_regions, not scored"),
)


def summary(results: dict) -> str:
    """A few headline numbers for the end of a run (zero-shot: the CheXzero pos/neg protocol),
    and the bad examples and the regions left out of each evaluated split."""
    keys = ["zeroshot/auroc_mean", "zeroshot/accuracy_single_label",
            "retrieval/image_to_report_R@5", "regions/region_to_caption_semantic_R@1",
            "hard_negatives/accuracy/laterality", "grounding/pointing_accuracy"]
    line = "  ".join(f"{k}={results[k]:.3f}" for k in keys
                     if k in results and np.isfinite(results[k]))
    for suffix, why in LEFT_OUT:
        counts = {k: int(v) for k, v in results.items() if k.endswith(suffix) and v}
        if counts:
            line += "  " + "  ".join(f"{k}={v}" for k, v in counts.items()) + f" ({why})"
    return line

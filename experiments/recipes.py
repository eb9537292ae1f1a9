"""Training recipes side by side on the embedded synthetic data: one run per recipe, one table.

    python experiments/recipes.py                          # every recipe below, one at a time
    python experiments/recipes.py --parallel=12 --runs=/scratch/recipes   # a GPU host
    python experiments/recipes.py --only=base,mlm --seed=1
    python experiments/recipes.py --name=recipes_default --only=crop_teacher,head_teacher,\
        crop_teacher_fixed_concepts,head_teacher_fixed_concepts,lr1e-3
    python experiments/recipes.py --name=distillation --only=roi_augmented,\
        roi_nodistill_augmented,distill_temperature0.05,distill_threshold0.5,distill_warmup200
    python experiments/recipes.py --name=recipes_screen --only=head_teacher_temperature0.05,\
        init_temperature0.04,init_temperature0.1,global_weight2,roi_weight2,grad_clip_norm100,\
        siglip,batch16,lr2.5e-4
    python experiments/recipes.py --name=recipes_sentence --only=sentence_term,\
        sentence_weight0.5,negatives1_steps1400,warm_start,warm_start_negatives1_steps1400

A recipe is a config argument string plus ``--config.KEY=VALUE`` overrides on top of the
``roi`` variant; each runs as ``python -m rmc_jax.main`` in its own workdir under ``--runs``
(a finished run, one with ``eval/results.json``, is reused). The table (recipe x headline
metric, wall time) goes to ``experiments/results/recipes.md`` with the JSON behind it. This is
how the default recipe of ``configs/base.py`` was chosen; the record of what helped and what
did not is in that table.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
from concurrent import futures

import runner

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)

BASE = "roi,steps=1600"
# The distillation temperature (teacher and student) every recipe before
# head_teacher_temperature0.05 ran with, RegionCLIP's; pinned so that they remain what was run.
TEMPERATURE_0_01 = {"teacher.temperature": 0.01, "teacher.student_temperature": 0.01}
# Every recipe of RECIPES below was measured with training augmentation on, the default until the
# 3-seed comparison in experiments/README.md turned it off, and the EMA teacher scoring region
# crops, the default before teacher.regions='auto'; the recipes keep both, so they remain what was
# run.
PAST_DEFAULTS = {"data.augment": True, "teacher.regions": "crop", **TEMPERATURE_0_01}
IMPRESSION = {"data.report_sections": "impression_findings"}
MLM = {"text_pretrain.steps": 300}
MEAN_POOLS = {"model.vision.pooling": "mean", "model.text.pooling": "mean"}
ALL = {**IMPRESSION, **MLM, **MEAN_POOLS}

# name -> (config argument string, overrides)
RECIPES = {
    "base": (BASE, {}),
    "impression_first": (BASE, IMPRESSION),
    "mlm": (BASE, MLM),
    "impression_mlm": (BASE, {**IMPRESSION, **MLM}),
    "image_mean_pool": (BASE, {"model.vision.pooling": "mean"}),
    "impression_mlm_text_mean": (BASE, {**IMPRESSION, **MLM, "model.text.pooling": "mean"}),
    "lr1e-3_warmup100": (BASE, {"optimizer.learning_rate": 1e-3,
                                "optimizer.warmup_steps": 100}),
    "no_distill": (BASE.replace("roi,", "roi_nodistill,"), {}),
    "all": (BASE, ALL),
    "all_no_distill": (BASE.replace("roi,", "roi_nodistill,"), ALL),
    "all_global_weight2": (BASE, {**ALL, "loss.global_weight": 2.0}),
    "all_batch64": (BASE.replace("steps=1600", "steps=800,batch=64"), ALL),
    # Distillation probes at the default budget then (400 steps), beside the roi and
    # roi_nodistill runs of the same seed (the augmented ablation's runs of that seed, same
    # commands): a softer teacher and student (RegionCLIP's 0.01 makes the targets nearly
    # one-hot), only confident regions, a later start.
    "roi_augmented": ("roi,steps=400", {}),
    "roi_nodistill_augmented": ("roi_nodistill,steps=400", {}),
    "distill_temperature0.05": ("roi,steps=400", {"teacher.temperature": 0.05,
                                                  "teacher.student_temperature": 0.05}),
    "distill_threshold0.5": ("roi,steps=400", {"teacher.threshold": 0.5}),
    "distill_warmup200": ("roi,steps=400", {"teacher.warmup_steps": 200}),
}
RECIPES = {name: (args, {**PAST_DEFAULTS, **overrides})
           for name, (args, overrides) in RECIPES.items()}

# At the default budget then (1,200 steps, augmentation off), one change each: the
# distillation teacher scoring region crops (RegionCLIP) or with its region head (the default
# for an EMA teacher), on top of the crop teacher a higher peak rate for both towers, on top of
# either teacher distillation that leaves the concept texts' embeddings alone (RegionCLIP's text
# encoder is fixed); a higher text tower rate, a masked-language-model warm start of the text
# tower, a heavier image-report term; distillation at a softer temperature (teacher and student;
# RegionCLIP's 0.01 scales cosines by 100); the contrastive temperature (shared by the global,
# region and negative-caption terms) starting sharper or softer than CLIP's 0.07: in 1,200 steps
# it moves little from where it starts (0.070 -> 0.062); a heavier region-caption term; the
# gradient clipped only at 100 rather than 1 (the logged norms are 6 to 26, so at 1 every step
# is clipped, and Adam then sees unit-norm gradients); SigLIP's sigmoid loss for the
# image-report term; half the batch for twice the steps (the same examples, about the same wall
# time; warm-ups kept in examples); half the peak rate. These ran before the sentence term
# became part of the default; no_sentence is that default without it.
CROP_TEACHER = {"teacher.regions": "crop", **TEMPERATURE_0_01}   # before teacher.regions='auto'
HEAD_TEACHER = {"teacher.regions": "head", **TEMPERATURE_0_01}   # what 'auto' picks for 'ema'
DEFAULT_RECIPES = {
    "crop_teacher": ("roi", CROP_TEACHER),
    "head_teacher": ("roi", HEAD_TEACHER),
    "lr1e-3": ("roi", {**CROP_TEACHER, "optimizer.learning_rate": 1e-3,
                       "optimizer.warmup_steps": 100}),
    "crop_teacher_fixed_concepts": ("roi", {**CROP_TEACHER, "teacher.fixed_concepts": True}),
    "head_teacher_fixed_concepts": ("roi", {**HEAD_TEACHER, "teacher.fixed_concepts": True}),
    "text_lr1e-3": ("roi", {**TEMPERATURE_0_01, "optimizer.tower_lr": "text=1e-3"}),
    "mlm300": ("roi", MLM),
    "global_weight2": ("roi", {"loss.global_weight": 2.0}),
    "head_teacher_temperature0.05": ("roi", {"teacher.temperature": 0.05,
                                             "teacher.student_temperature": 0.05}),
    "init_temperature0.04": ("roi", {"model.init_temperature": 0.04}),
    "init_temperature0.1": ("roi", {"model.init_temperature": 0.1}),
    "roi_weight2": ("roi", {"loss.roi_weight": 2.0}),
    "grad_clip_norm100": ("roi", {"optimizer.grad_clip_norm": 100.0}),
    "siglip": ("roi", {"loss.global_loss": "siglip"}),
    "batch16": ("roi,batch=16,steps=2400", {"optimizer.warmup_steps": 80,
                                            "teacher.warmup_steps": 200}),
    "lr2.5e-4": ("roi", {"optimizer.learning_rate": 2.5e-4}),
    "no_sentence": ("roi", {}),
}
RECIPES.update(DEFAULT_RECIPES)

# At the default with the sentence term (sentence_term: the ablation's roi run of that seed):
# the term at half weight; one hard negative per region caption rather than three (a quarter
# of the step's FLOPs are the negatives' text) and the steps that buys in about the same wall
# time; the masked-language-model warm start of the text tower; both.
SENTENCE_RECIPES = {
    "sentence_term": ("roi", {}),
    "sentence_weight0.5": ("roi", {"loss.sentence_weight": 0.5}),
    "negatives1_steps1400": ("roi,steps=1400", {"data.num_negatives": 1}),
    "warm_start": ("roi", MLM),
    "warm_start_negatives1_steps1400": ("roi,steps=1400", {"data.num_negatives": 1, **MLM}),
}
RECIPES.update(SENTENCE_RECIPES)

# Every recipe above ran before the default became one hard negative per caption, 1,400 steps
# and the text warm start (the last of SENTENCE_RECIPES): three negatives, 1,200 steps unless its
# arguments name the steps, from scratch unless it sets the warm start; those before
# SENTENCE_RECIPES also without the sentence term. Pinned, so that they remain what was run.
THREE_NEGATIVES = {"data.num_negatives": 3}
NO_WARM_START = {"text_pretrain.steps": 0}
NO_SENTENCE = {"loss.sentence_weight": 0.0, "data.sentences_per_report": 0}


def at_past_budget(args: str) -> str:
    """'roi' -> 'roi,steps=1200'; arguments that name the steps are kept."""
    return args if "steps=" in args else f"{args},steps=1200"


RECIPES = {name: (at_past_budget(args),
                  {**THREE_NEGATIVES, **NO_WARM_START,
                   **({} if name in SENTENCE_RECIPES else NO_SENTENCE), **overrides})
           for name, (args, overrides) in RECIPES.items()}

# (metric, label) of the table, in order.
COLUMNS = (
    ("zeroshot/auroc_mean", "zero-shot AUROC pos/neg (headline)"),
    ("zeroshot/auroc_mean_ensemble", "zero-shot AUROC ensemble"),
    ("zeroshot/accuracy_single_label", "zero-shot acc"),
    ("zeroshot/accuracy_single_label_findings", "zero-shot acc, images with a finding"),
    ("retrieval/image_to_report_R@5", "img->report R@5"),
    ("retrieval/image_to_report_median_rank", "median rank"),
    ("regions/region_to_caption_semantic_R@1", "semantic region R@1"),
    ("lesion_retrieval/R@5", "lesion R@5"),
    ("hard_negatives/accuracy/laterality", "laterality"),
    ("grounding/pointing_accuracy", "pointing"),
    ("grounding/cnr", "CNR"),
)


def run(name: str, seed: int, runs: str, extra: list[str]) -> dict:
    """Train + evaluate one recipe (or reuse a finished run) -> its results, with wall time."""
    args, overrides = RECIPES[name]
    workdir = os.path.join(runs, f"{name}-seed{seed}")
    flags = [f"--config.{k}={v}" for k, v in overrides.items()] + extra
    return runner.train_and_evaluate(runner.main_command(f"{args},seed={seed}", workdir, flags),
                                     workdir, name)


def markdown(per_recipe: dict, seed: int, note: str, extra: list[str] = (),
             table_name: str = "recipes") -> str:
    flags = f"; flags for every run: `{' '.join(extra)}`" if extra else ""
    lines = [f"Generated by `python experiments/recipes.py` on {datetime.date.today()} "
             f"({platform.machine()}, {os.cpu_count()} CPU cores{note}); seed {seed}{flags}; "
             "evaluation on the synthetic test split. Each recipe's config arguments and "
             f"overrides are in `RECIPES` ({table_name}.json beside this table).", "",
             "| recipe | " + " | ".join(label for _, label in COLUMNS) + " | wall (s) |",
             "|---|" + "---:|" * (len(COLUMNS) + 1)]
    for name, results in per_recipe.items():
        cells = ["-" if metric not in results else
                 f"{results[metric]:.0f}" if metric.endswith("median_rank")
                 else f"{results[metric]:.3f}" for metric, _ in COLUMNS]
        wall = results.get("run/wall_seconds")
        cells.append("-" if wall is None else f"{wall:.0f}")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--only", default="", help="comma-separated recipe names")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--parallel", type=int, default=1, help="runs at once")
    parser.add_argument("--runs", default=os.path.join(REPO, "runs", "recipes"))
    parser.add_argument("--out", default=os.path.join(HERE, "results"))
    parser.add_argument("--note", default="", help="appended to the table's machine line")
    parser.add_argument("--name", default="recipes",
                        help="file name of the table and its JSON in --out (NAME.md, NAME.json)")
    parser.add_argument("--extra", default="", help="space-separated flags for every run")
    options = parser.parse_args()
    names = [n for n in options.only.split(",") if n] or list(RECIPES)
    unknown = sorted(set(names) - set(RECIPES))
    if unknown:
        parser.error(f"unknown recipes {unknown}; choose from {list(RECIPES)}")
    extra = options.extra.split()
    with futures.ThreadPoolExecutor(options.parallel) as pool:
        done = dict(zip(names, pool.map(
            lambda n: run(n, options.seed, options.runs, extra), names)))
    table = markdown(done, options.seed, f", {options.note}" if options.note else "", extra,
                     options.name)
    os.makedirs(options.out, exist_ok=True)
    with open(os.path.join(options.out, f"{options.name}.json"), "w") as f:
        json.dump({"recipes": {n: RECIPES[n] for n in names}, "seed": options.seed,
                   "results": done}, f, indent=1)
    with open(os.path.join(options.out, f"{options.name}.md"), "w") as f:
        f.write(table)
    print(table)


if __name__ == "__main__":
    main()

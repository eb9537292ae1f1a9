"""Baselines and ablation on the embedded synthetic data: every variant, several seeds, one table.

    python experiments/ablation.py                      # 5 variants x 3 seeds, default budget
    python experiments/ablation.py --seeds=0,1 --args=steps=200 --runs=/tmp/ablation
    python experiments/ablation.py --readme             # also put the table into README.md
    python experiments/ablation.py --reuse=experiments/results/ablation.json   # add variants
    python experiments/ablation.py --finished-only      # the table of the runs finished so far

Each run is ``python -m rmc_jax.main --config=configs/base.py:VARIANT,seed=S[,ARGS]`` in its own
workdir under ``--runs`` (a finished run, one with ``eval/results.json``, is reused, so an
interrupted sweep continues where it stopped, and is evaluated again with ``--mode=eval`` when
its ``eval/prompts.json`` is not this rmc_jax's default prompts or its evaluation predates
``evals.max_regions``; ``--reuse`` takes the runs an
earlier sweep's JSON holds, so a sweep extended by variants trains only those). The script
then writes ``experiments/results/ablation.json`` (every run's metrics, plus mean, std and
95% interval per variant) and ``experiments/results/ablation.md`` (metric x variant, mean and
95% interval over seeds, and the targets checked).

Intervals are Student-t intervals over seeds, mean ± t(0.975, n-1) · s / sqrt(n) (with 3 seeds
t = 4.30: wide, honestly so). Comparisons between variants use the seeds both ran, paired by
seed (same data order and test split), as a t-interval of the per-seed differences.
Targets (``targets``): ``roi`` is not worse than ``global`` or ``medclip`` on any image-level
metric (the interval of roi - baseline reaches 0 or above), is ahead of both by +0.20 or more on
the region metrics (mean difference), and reaches the absolute targets (means over seeds).
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import math
import os
import platform
import sys
from concurrent import futures

import numpy as np

import runner

VARIANTS = ("global", "medclip", "roi", "roi_nodistill", "roi_noneg")
BASELINES = ("global", "medclip")
HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
HEADLINE = "zeroshot/auroc_mean"

# (metric, label, higher is better) shown in the table, in order; missing metrics show "-".
# The first row is the headline zero-shot metric.
TABLE = (
    (HEADLINE, "zero-shot AUROC, headline (CheXzero pos/neg prompt ensembles)", True),
    ("zeroshot/accuracy_single_label", "zero-shot accuracy, single-label (headline protocol)",
     True),
    ("zeroshot/accuracy_single_label_normal", "zero-shot accuracy, single-label: normal images",
     True),
    ("zeroshot/accuracy_single_label_findings",
     "zero-shot accuracy, single-label: images with a finding", True),
    ("zeroshot/accuracy_which_finding",
     "zero-shot accuracy, images with a finding: which finding (argmax among findings)", True),
    ("zeroshot/margin_first_component",
     "zero-shot finding margins: variance share of the first component (1 = one axis)", False),
    ("zeroshot/auroc_mean_ensemble", "zero-shot AUROC, positive-prompt ensemble (secondary)",
     True),
    ("zeroshot/accuracy_single_label_ensemble",
     "zero-shot accuracy, positive-prompt ensemble (secondary)", True),
    ("retrieval/image_to_report_R@5", "image->report R@5", True),
    ("retrieval/report_to_image_R@5", "report->image R@5", True),
    ("regions/region_to_caption_semantic_R@1", "region->caption semantic R@1 (head)", True),
    ("regions_crop/region_to_caption_semantic_R@1", "region->caption semantic R@1 (crop)", True),
    ("regions/region_to_caption_R@1", "region->caption exact R@1 (head)", True),
    ("lesion_retrieval/R@5", "lesion description->region R@5 (head)", True),
    ("lesion_retrieval_crop/R@5", "lesion description->region R@5 (crop)", True),
    ("grounding/pointing_accuracy", "grounding pointing accuracy", True),
    ("grounding/cnr", "grounding CNR", True),
    ("hard_negatives/accuracy/laterality", "hard negatives: laterality", True),
    ("hard_negatives_crop/accuracy/laterality", "hard negatives: laterality (crop)", True),
    ("hard_negatives/accuracy/zone", "hard negatives: zone", True),
    ("hard_negatives/accuracy/finding", "hard negatives: finding", True),
    ("hard_negatives/accuracy/negation", "hard negatives: negation", True),
    ("hard_negatives/accuracy/size", "hard negatives: size", True),
    ("hard_negatives/accuracy_mean", "hard negatives: mean", True),
)

# Image-level metrics on which roi must not fall behind the baselines (within the interval).
IMAGE_LEVEL = (
    (HEADLINE, "zero-shot AUROC"),
    ("zeroshot/accuracy_single_label", "zero-shot accuracy"),
    ("retrieval/image_to_report_R@5", "image->report R@5"),
    ("retrieval/report_to_image_R@5", "report->image R@5"),
)
# Region-level metrics on which roi must lead the baselines by at least REGION_MARGIN.
REGION_LEVEL = (
    ("regions/region_to_caption_semantic_R@1", "semantic region->caption R@1"),
    ("hard_negatives/accuracy/laterality", "laterality accuracy"),
    ("lesion_retrieval/R@5", "lesion description R@5"),
)
REGION_MARGIN = 0.20
# Absolute targets for roi (mean over seeds): (metric, label, threshold).
ABSOLUTE = (
    (HEADLINE, "zero-shot AUROC (headline)", 0.90),
    ("zeroshot/accuracy_single_label", "zero-shot accuracy (single-label)", 0.70),
    ("retrieval/image_to_report_R@5", "image->report R@5", 0.40),
    ("regions/region_to_caption_semantic_R@1", "semantic region->caption R@1", 0.60),
    ("hard_negatives/accuracy/laterality", "laterality accuracy", 0.97),
    ("grounding/pointing_accuracy", "grounding pointing accuracy", 0.60),
)
# A results.json from before the headline zero-shot protocol changed has these and not that.
STALE_KEY, CURRENT_KEY = "zeroshot/auroc_mean_posneg", "zeroshot/auroc_mean_ensemble"
# One from before the evaluation scored every region of an image (evals.max_regions) lacks this
# count: its region metrics covered an image's first data.max_regions regions only.
REGIONS_KEY = "eval/regions_beyond_max_regions"


def run(variant: str, seed: int, args: str, runs: str, extra: list[str] = ()) -> dict:
    """Train + evaluate one variant/seed (or reuse a finished run); its results.json, {} when
    the run failed."""
    workdir = run_dir(runs, variant, seed)
    config = f"{variant},seed={seed}" + (f",{args}" if args else "")
    name = f"{variant}-seed{seed}"
    results = runner.train_and_evaluate(runner.main_command(config, workdir, list(extra)),
                                        workdir, name)
    refuse_stale(results, f"{workdir}/eval/results.json",
                 f"delete {workdir} to rerun it, or pass another --runs")
    outdated = results and outdated_evaluation(results, workdir)
    if outdated:
        print(f"{name}: {outdated}: evaluating it again", flush=True)
        results = runner.evaluate_again(
            runner.main_command(config, workdir, list(extra) + ["--mode=eval"]), workdir, name)
    return results


def outdated_evaluation(results: dict, workdir: str) -> str:
    """Why a finished run's evaluation is not this rmc_jax's ('' when it is): other zero-shot
    prompts, or region metrics over an image's first regions only (before evals.max_regions)."""
    if scored_prompts(workdir) != current_prompts():
        return "its zero-shot prompts are not this rmc_jax's"
    if REGIONS_KEY not in results:
        return "its region metrics scored an image's first regions only"
    return ""


def current_prompts() -> dict:
    """{class: {'positive': [...], 'negative': [...]}}: the prompts this rmc_jax's evaluation
    scores the embedded data's classes with."""
    sys.path.insert(0, REPO)
    from rmc_jax.data.synthetic.source import LABEL_NAMES
    from rmc_jax.evaluate.tasks import default_prompts

    return default_prompts(LABEL_NAMES)


def scored_prompts(workdir: str) -> dict | None:
    """The prompts a finished run's evaluation scored its zero-shot task with (its
    ``eval/prompts.json``; None for an evaluation from before that file was written)."""
    path = os.path.join(workdir, "eval", "prompts.json")
    if not os.path.exists(path):
        return None
    with open(path) as f:
        return json.load(f).get("zeroshot")


def run_dir(runs: str, variant: str, seed: int) -> str:
    return os.path.join(runs, f"{variant}-seed{seed}")


def refuse_stale(results: dict, where: str, remedy: str) -> None:
    """Stops the sweep on results from before the headline zero-shot protocol changed."""
    if STALE_KEY in results and CURRENT_KEY not in results:
        raise SystemExit(f"{where} comes from an older rmc_jax (its zeroshot/auroc_mean is the "
                         "positive-prompt ensemble, and its medclip loss was not MedCLIP's): "
                         f"{remedy}")


def step_budget(args: str) -> int:
    """The steps a run of these config arguments trains (the default budget unless ``args``
    sets steps=)."""
    sys.path.insert(0, REPO)
    from configs import base

    return base.get_config(",".join(p for p in ("roi", args) if p)).total_steps


def reused_runs(path: str, variants, seeds, args: str, extra: list[str]) -> dict:
    """{variant: {seed: results}} of the runs in ``path`` (a JSON this script wrote) for these
    variants and seeds. A sweep with other config arguments, flags or step budget (the default
    budget changes with the code) trained something else, so it is refused."""
    with open(path) as f:
        saved = json.load(f)
    steps = step_budget(args)
    if saved.get("total_steps") != steps:
        raise SystemExit(f"--reuse={path} ran {saved.get('total_steps', 'an unrecorded number of')}"
                         f" steps, this sweep {steps}: its runs are not this sweep's")
    if saved.get("args", "") != args or list(saved.get("extra", [])) != list(extra):
        raise SystemExit(f"--reuse={path} ran with --args={saved.get('args', '')!r} "
                         f"--extra={' '.join(saved.get('extra', []))!r}, this sweep with "
                         f"--args={args!r} --extra={' '.join(extra)!r}: its runs are not this "
                         "sweep's")
    if saved.get("prompts") != current_prompts():
        raise SystemExit(f"--reuse={path} scored zero-shot classification with other prompts "
                         "than this rmc_jax's (or recorded none): its zero-shot metrics are not "
                         "this sweep's; leave out --reuse, and point --runs at its runs' workdirs "
                         "to have them evaluated again")
    runs = saved["runs"]
    reused = {v: {str(s): runs[v][str(s)] for s in seeds if str(s) in runs.get(v, {})}
              for v in variants}
    for v, by_seed in reused.items():
        for s, results in by_seed.items():
            refuse_stale(results, f"{path} ({v}, seed {s})", "leave out --reuse")
            if REGIONS_KEY not in results:
                raise SystemExit(f"--reuse={path} ({v}, seed {s}) was evaluated before the "
                                 "evaluation scored every region of an image "
                                 "(evals.max_regions): its region metrics are not this sweep's; "
                                 "leave out --reuse, and point --runs at its runs' workdirs to "
                                 "have them evaluated again")
    return reused


def t_quantile(df: int, p: float = 0.975) -> float:
    """Student-t quantile t(p, df) for p = 0.975 (two-sided 95%): exact table to df 30, then the
    Cornish-Fisher expansion around the normal quantile (error < 1e-4)."""
    if p != 0.975:
        raise ValueError("only the two-sided 95% quantile (p=0.975) is tabulated")
    table = (12.7062, 4.3027, 3.1824, 2.7764, 2.5706, 2.4469, 2.3646, 2.3060, 2.2622, 2.2281,
             2.2010, 2.1788, 2.1604, 2.1448, 2.1314, 2.1199, 2.1098, 2.1009, 2.0930, 2.0860,
             2.0796, 2.0739, 2.0687, 2.0639, 2.0595, 2.0555, 2.0518, 2.0484, 2.0452, 2.0423)
    if df < 1:
        raise ValueError(f"a t-interval needs at least 2 values (df >= 1), got df = {df}")
    if df <= len(table):
        return table[df - 1]
    z = 1.959964
    return (z + (z ** 3 + z) / (4 * df) + (5 * z ** 5 + 16 * z ** 3 + 3 * z) / (96 * df ** 2)
            + (3 * z ** 7 + 19 * z ** 5 + 17 * z ** 3 - 15 * z) / (384 * df ** 3))


def interval(values) -> dict:
    """{mean, std, n, low, high}: the 95% t-interval of the mean (low = high = mean for n = 1)."""
    values = np.asarray(values, np.float64)
    n, mean = len(values), float(values.mean())
    std = float(values.std(ddof=1)) if n > 1 else 0.0
    half = t_quantile(n - 1) * std / math.sqrt(n) if n > 1 else 0.0
    return {"mean": mean, "std": std, "n": n, "low": mean - half, "high": mean + half}


def aggregate(per_run: dict) -> dict:
    """{variant: {metric: {mean, std, n, low, high}}} over the seeds that report the metric."""
    summary = {}
    for variant, runs in per_run.items():
        metrics = sorted({k for r in runs.values() for k in r})
        summary[variant] = {metric: interval([r[metric] for r in runs.values() if metric in r])
                            for metric in metrics}
    return summary


@dataclasses.dataclass(frozen=True)
class Target:
    """One checked target: the measured value (a mean, or a mean difference with its 95%
    interval over seeds), what is required, and whether it is met (None: not measured)."""

    what: str
    value: float | None
    required: str
    met: bool | None
    low: float | None = None
    high: float | None = None
    difference: bool = False


def _seed_values(per_run: dict, variant: str, metric: str) -> dict[str, float]:
    """{seed: value} of ``metric``; for the global baselines, whose region head is not trained,
    region metrics come from the better (by mean) of the head and the crop baseline (the image
    tower on the cropped box)."""
    runs = per_run.get(variant, {})
    head = {seed: r[metric] for seed, r in runs.items() if metric in r}
    family, _, rest = metric.partition("/")
    if variant.startswith("roi") or family not in ("regions", "hard_negatives",
                                                   "lesion_retrieval"):
        return head
    crop = {seed: r[f"{family}_crop/{rest}"] for seed, r in runs.items()
            if f"{family}_crop/{rest}" in r}
    if not crop or (head and np.mean(list(head.values())) >= np.mean(list(crop.values()))):
        return head
    return crop


def targets(per_run: dict) -> list[Target]:
    """The benchmark's targets for ``roi`` against the runs of every variant ({variant: {seed:
    results}}): absolute ones on its means, and paired-by-seed differences with the baselines."""
    rows = []
    roi = {metric: _seed_values(per_run, "roi", metric)
           for metric in {m for m, *_ in IMAGE_LEVEL + REGION_LEVEL + ABSOLUTE}}
    for metric, label, threshold in ABSOLUTE:
        values = list(roi[metric].values())
        mean = float(np.mean(values)) if values else None
        rows.append(Target(f"roi {label}", mean, f">= {threshold:.2f}",
                           None if mean is None else mean >= threshold))
    for baseline in BASELINES:
        for metrics, margin in ((IMAGE_LEVEL, None), (REGION_LEVEL, REGION_MARGIN)):
            for metric, label in metrics:
                other = _seed_values(per_run, baseline, metric)
                seeds = sorted(set(roi[metric]) & set(other))
                what = f"roi - {baseline}, {label}"
                if not seeds:
                    required = ">= 0 (interval)" if margin is None else f">= +{margin:.2f}"
                    rows.append(Target(what, None, required, None, difference=True))
                    continue
                d = interval([roi[metric][s] - other[s] for s in seeds])
                if margin is None:  # not worse: the interval reaches 0
                    met, required = d["high"] >= 0, ">= 0 within the interval"
                else:
                    met, required = d["mean"] >= margin, f">= +{margin:.2f} (mean)"
                rows.append(Target(what, d["mean"], required, bool(met), d["low"], d["high"],
                                   difference=True))
    return rows


def paired_differences(per_run: dict, other: dict) -> dict:
    """{variant: {metric: interval of this sweep's value minus ``other``'s}} for the table's
    metrics, over the seeds both sweeps ran of that variant (paired by seed: same data order,
    same initialisation, same test split). ``per_run`` and ``other``: {variant: {seed: results}}."""
    out = {}
    for variant, runs in per_run.items():
        theirs = other.get(variant, {})
        for metric, *_ in TABLE:
            seeds = sorted(s for s in runs if s in theirs and metric in runs[s]
                           and metric in theirs[s])
            if seeds:
                out.setdefault(variant, {})[metric] = interval(
                    [runs[s][metric] - theirs[s][metric] for s in seeds])
    return out


def _cell(entry: dict | None, digits: int = 3, sign: str = "") -> str:
    """'mean [low, high]' of an interval ('-' when missing, the mean alone for one seed);
    ``sign='+'`` for differences."""
    if entry is None:
        return "-"
    spec = f"{sign}.{digits}f"
    value = f"{entry['mean']:{spec}}"
    return value if entry["n"] < 2 else f"{value} [{entry['low']:{spec}}, {entry['high']:{spec}}]"


def markdown(summary: dict, per_run: dict, args: str, seeds, note: str = "",
             extra: list[str] = (), against: tuple[str, dict, bool] | None = None) -> str:
    """The table (metric x variant), the targets checked and, with ``against`` = (name, its
    runs, whether its zero-shot prompts were these), the paired differences from another
    sweep."""
    variants = [v for v in VARIANTS if v in summary]
    lines = [
        "# Ablation on the embedded synthetic benchmark",
        "",
        f"Generated by `python experiments/ablation.py` on {datetime.date.today()} "
        f"({platform.machine()}, {os.cpu_count()} CPU cores, Python {platform.python_version()}"
        f"{', ' + note if note else ''})."
        f" Seeds {', '.join(map(str, seeds))}; config arguments: `{args or '(defaults)'}`"
        f" ({step_budget(args)} steps)"
        f"{'; flags for every run: `' + ' '.join(extra) + '`' if extra else ''}. "
        "Mean over seeds [95% interval: mean ± t(0.975, n-1)·s/√n]; evaluation on the "
        "synthetic test split. The first row is the headline zero-shot protocol.",
        "",
        "| metric | " + " | ".join(variants) + " |",
        "|---|" + "---|" * len(variants),
    ]
    for metric, label, _ in TABLE:
        cells = [_cell(summary[v].get(metric)) for v in variants]
        if any(c != "-" for c in cells):
            lines.append(f"| {label} | " + " | ".join(cells) + " |")
    walls = [summary[v].get("run/wall_seconds") for v in variants]
    if any(walls):
        lines.append("| wall time per run (s) | " + " | ".join(
            "-" if w is None else f"{w['mean']:.0f}" for w in walls) + " |")
    lines += ["", "## Targets", "",
              "Differences are roi minus the baseline, paired by seed, with their 95% interval; "
              "the global baselines' region scores are the better of their region head and the "
              "crop baseline.", "",
              "| target | measured | required | met |", "|---|---|---|---|"]
    for row in targets(per_run):
        if row.value is None:
            shown = "-"
        else:
            shown = f"{row.value:+.3f}" if row.difference else f"{row.value:.3f}"
            if row.low is not None and row.high is not None and row.low != row.high:
                shown += f" [{row.low:+.3f}, {row.high:+.3f}]"
        met = "-" if row.met is None else "yes" if row.met else "no"
        lines.append(f"| {row.what} | {shown} | {row.required} | {met} |")
    if against is not None:
        name, other, same_prompts = against
        differences = paired_differences(per_run, other)
        shown = [v for v in variants if v in differences]
        prompts = "" if same_prompts else (
            f" `{name}` scored zero-shot classification with other prompts (or recorded none): "
            "its zero-shot rows differ by the prompts as well.")
        lines += ["", f"## Against {name}", "",
                  f"This sweep minus `{name}`, variant by variant, paired by seed, with the 95% "
                  f"interval of the per-seed differences.{prompts}", "",
                  "| metric | " + " | ".join(shown) + " |", "|---|" + "---|" * len(shown)]
        for metric, label, _ in TABLE:
            cells = [_cell(differences[v].get(metric), sign="+") for v in shown]
            if any(c != "-" for c in cells):
                lines.append(f"| {label} | " + " | ".join(cells) + " |")
    lines += ["", "Runs: " + ", ".join(f"{v} ({len(per_run[v])} seeds)" for v in variants), ""]
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--args", default="", help="config arguments for every run, e.g. "
                        "'steps=200,batch=32'")
    parser.add_argument("--runs", default=os.path.join(REPO, "runs", "ablation"),
                        help="parent of the runs' workdirs")
    parser.add_argument("--out", default=os.path.join(HERE, "results"))
    parser.add_argument("--parallel", type=int, default=1,
                        help="runs at once (an accelerator host: as many as its cores feed)")
    parser.add_argument("--extra", default="", help="space-separated flags for every run, "
                        "e.g. '--config.data.workers=1'")
    parser.add_argument("--note", default="", help="appended to the table's machine line, "
                        "e.g. the accelerator")
    parser.add_argument("--name", default="ablation",
                        help="file name of the table and its JSON in --out (NAME.md, NAME.json)")
    parser.add_argument("--against", default="",
                        help="a JSON this script wrote for another sweep (other flags, another "
                        "commit): the table adds this sweep minus that one, paired by seed")
    parser.add_argument("--reuse", default="",
                        help="a JSON this script wrote for the same --args and --extra at the "
                        "same training numerics: its runs of these variants and seeds are taken "
                        "from it instead of being trained again (a sweep extended by variants)")
    parser.add_argument("--finished-only", action="store_true",
                        help="train nothing: the table of the runs already finished under --runs "
                        "(and --reuse); the others are left out and named")
    parser.add_argument("--readme", action="store_true",
                        help="also put the table into README.md (between its ablation markers)")
    options = parser.parse_args()
    seeds = [int(s) for s in options.seeds.split(",")]
    variants = [v for v in options.variants.split(",") if v]
    unknown = sorted(set(variants) - set(VARIANTS))
    if unknown:
        parser.error(f"unknown variants {unknown}; choose from {VARIANTS}")
    extra = options.extra.split()
    per_run = {v: {} for v in variants}
    if options.reuse:
        per_run = reused_runs(options.reuse, variants, seeds, options.args, extra)
    # seed-major: a cut sweep has every variant
    jobs = [(v, s) for s in seeds for v in variants if str(s) not in per_run[v]]
    if options.finished_only:
        unfinished = [(v, s) for v, s in jobs if not runner.finished(run_dir(options.runs, v, s))]
        if unfinished:
            print("left out, not finished: " + ", ".join(f"{v}-seed{s}" for v, s in unfinished))
        jobs = [job for job in jobs if job not in unfinished]
    with futures.ThreadPoolExecutor(options.parallel) as pool:
        done = pool.map(lambda job: run(*job, options.args, options.runs, extra), jobs)
        for (v, s), results in zip(jobs, done):
            if results:  # a failed run is left out (its log says why), not scored as zeros
                per_run[v][str(s)] = results
    per_run = {v: runs for v, runs in per_run.items() if runs}
    summary = aggregate(per_run)
    os.makedirs(options.out, exist_ok=True)
    with open(os.path.join(options.out, f"{options.name}.json"), "w") as f:
        json.dump({"args": options.args, "total_steps": step_budget(options.args),
                   "extra": extra, "seeds": seeds, "prompts": current_prompts(),
                   "summary": summary,
                   "targets": [dataclasses.asdict(t) for t in targets(per_run)],
                   "runs": per_run}, f, indent=1)
    against = None
    if options.against:
        with open(options.against) as f:
            other = json.load(f)
        against = (os.path.basename(options.against), other["runs"],
                   other.get("prompts") == current_prompts())
    table = markdown(summary, per_run, options.args, seeds, options.note, extra, against)
    with open(os.path.join(options.out, f"{options.name}.md"), "w") as f:
        f.write(table)
    if options.readme:
        write_readme(table)
    print(table)


def write_readme(table: str, path: str = os.path.join(REPO, "README.md")) -> None:
    """The table (its title dropped, headings one level down) between README's markers."""
    sys.path.insert(0, REPO)
    from tools.markdown_block import replace_block

    body = table.split("\n", 1)[1] if table.startswith("# ") else table
    replace_block(path, "ablation.py", body.replace("\n## ", "\n#### "))


if __name__ == "__main__":
    main()

"""Baselines and ablation on the embedded synthetic data: every variant, several seeds, one table.

    python experiments/ablation.py                      # 5 variants x 3 seeds, default budget
    python experiments/ablation.py --seeds=0,1 --args=steps=200 --runs=/tmp/ablation
    python experiments/ablation.py --readme             # also put the table into README.md

Each run is ``python -m rmc_jax.main --config=configs/base.py:VARIANT,seed=S[,ARGS]`` in its own
workdir under ``--runs`` (a finished run, one with ``eval/results.json``, is reused, so an
interrupted sweep continues where it stopped). The script then writes
``experiments/results/ablation.json`` (every run's metrics, plus mean and std per variant) and
``experiments/results/ablation.md`` (metric x variant, mean ± std over seeds, and the targets of
the embedded benchmark checked against the measured means).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import time

import numpy as np

VARIANTS = ("global", "medclip", "roi", "roi_nodistill", "roi_noneg")
HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)

# (metric, label, higher is better) shown in the table, in order; missing metrics show "-".
TABLE = (
    ("zeroshot/auroc_mean", "zero-shot AUROC (mean)", True),
    ("zeroshot/auroc_mean_posneg", "zero-shot AUROC (CheXzero pos/neg prompts)", True),
    ("zeroshot/accuracy_single_label", "zero-shot accuracy (single-label)", True),
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


def run(variant: str, seed: int, args: str, runs: str) -> dict:
    """Train + evaluate one variant/seed (or reuse a finished run); its results.json."""
    workdir = os.path.join(runs, f"{variant}-seed{seed}")
    results_path = os.path.join(workdir, "eval", "results.json")
    if not os.path.exists(results_path):
        config = f"{os.path.join(REPO, 'configs', 'base.py')}:{variant},seed={seed}"
        config += f",{args}" if args else ""
        command = [sys.executable, "-m", "rmc_jax.main", f"--config={config}",
                   f"--workdir={workdir}", "--config.progress_bar=off"]
        print("$", " ".join(command), flush=True)
        start = time.perf_counter()
        subprocess.run(command, check=True, cwd=REPO)
        with open(os.path.join(workdir, "wall_seconds.txt"), "w") as f:
            f.write(f"{time.perf_counter() - start:.1f}\n")
    with open(results_path) as f:
        results = json.load(f)
    wall = os.path.join(workdir, "wall_seconds.txt")
    if os.path.exists(wall):
        results["run/wall_seconds"] = float(open(wall).read())
    return results


def aggregate(per_run: dict) -> dict:
    """{variant: {metric: {mean, std, n}}} over the seeds that report the metric."""
    summary = {}
    for variant, runs in per_run.items():
        metrics = sorted({k for r in runs.values() for k in r})
        summary[variant] = {}
        for metric in metrics:
            values = np.array([r[metric] for r in runs.values() if metric in r], np.float64)
            summary[variant][metric] = {"mean": float(values.mean()),
                                        "std": float(values.std(ddof=1)) if len(values) > 1
                                        else 0.0, "n": int(len(values))}
    return summary


def targets(summary: dict) -> list[tuple[str, float | None, str, bool | None]]:
    """The embedded benchmark's targets: (what, measured, required, met)."""
    def mean(variant, metric):
        return summary.get(variant, {}).get(metric, {}).get("mean")

    def best_region_score(variant, metric):
        """roi variants: their region head; the global baselines, whose region head is not
        trained: the better of head and crop (image tower on the cropped box)."""
        head = mean(variant, metric)
        if variant.startswith("roi"):
            return head
        family, rest = metric.split("/", 1)
        scores = [x for x in (head, mean(variant, f"{family}_crop/{rest}")) if x is not None]
        return max(scores) if scores else None

    def region_r1(variant):
        return best_region_score(variant, "regions/region_to_caption_semantic_R@1")

    def laterality(variant):
        return best_region_score(variant, "hard_negatives/accuracy/laterality")

    rows = []

    def check(what, value, required, ok):
        rows.append((what, value, required, None if value is None else bool(ok(value))))

    check("roi zero-shot AUROC", mean("roi", "zeroshot/auroc_mean"), ">= 0.90",
          lambda v: v >= 0.90)
    check("roi laterality accuracy", laterality("roi"),
          ">= 0.95", lambda v: v >= 0.95)
    check("roi semantic region->caption R@1", region_r1("roi"), ">= 0.60", lambda v: v >= 0.60)
    for what, fn in (("semantic region->caption R@1", region_r1),
                     ("laterality accuracy", laterality)):
        roi, glob = fn("roi"), fn("global")
        gap = None if roi is None or glob is None else roi - glob
        check(f"roi - global, {what}", gap, ">= +0.20", lambda v: v >= 0.20)
    roi, glob = (mean(v, "retrieval/image_to_report_R@5") for v in ("roi", "global"))
    check("roi - global, image->report R@5", None if roi is None or glob is None else roi - glob,
          ">= -0.01", lambda v: v >= -0.01)
    return rows


def markdown(summary: dict, per_run: dict, args: str, seeds) -> str:
    variants = [v for v in VARIANTS if v in summary]
    lines = [
        "# Ablation on the embedded synthetic benchmark",
        "",
        f"Generated by `python experiments/ablation.py` on {datetime.date.today()} "
        f"({platform.machine()}, {os.cpu_count()} CPU cores, Python {platform.python_version()})."
        f" Seeds {', '.join(map(str, seeds))}; config arguments: `{args or '(defaults)'}`. "
        "Mean ± standard deviation over seeds; evaluation on the synthetic test split.",
        "",
        "| metric | " + " | ".join(variants) + " |",
        "|---|" + "---|" * len(variants),
    ]
    for metric, label, _ in TABLE + (("run/wall_seconds", "wall time per run (s)", False),):
        cells = []
        for v in variants:
            entry = summary[v].get(metric)
            cells.append("-" if entry is None else
                         f"{entry['mean']:.3f} ± {entry['std']:.3f}" if metric != "run/wall_seconds"
                         else f"{entry['mean']:.0f}")
        if any(c != "-" for c in cells):
            lines.append(f"| {label} | " + " | ".join(cells) + " |")
    lines += ["", "## Targets", "", "| target | measured | required | met |", "|---|---|---|---|"]
    for what, value, required, ok in targets(summary):
        shown = "-" if value is None else f"{value:+.3f}" if "global" in what else f"{value:.3f}"
        lines.append(f"| {what} | {shown} | {required} | "
                     f"{'-' if ok is None else 'yes' if ok else 'no'} |")
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
    parser.add_argument("--readme", action="store_true",
                        help="also put the table into README.md (between its ablation markers)")
    options = parser.parse_args()
    seeds = [int(s) for s in options.seeds.split(",")]
    variants = [v for v in options.variants.split(",") if v]
    unknown = sorted(set(variants) - set(VARIANTS))
    if unknown:
        parser.error(f"unknown variants {unknown}; choose from {VARIANTS}")
    per_run = {v: {} for v in variants}
    for s in seeds:  # seed-major: a sweep cut short still has every variant
        for v in variants:
            per_run[v][str(s)] = run(v, s, options.args, options.runs)
    summary = aggregate(per_run)
    os.makedirs(options.out, exist_ok=True)
    with open(os.path.join(options.out, "ablation.json"), "w") as f:
        json.dump({"args": options.args, "seeds": seeds, "summary": summary, "runs": per_run},
                  f, indent=1)
    table = markdown(summary, per_run, options.args, seeds)
    with open(os.path.join(options.out, "ablation.md"), "w") as f:
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

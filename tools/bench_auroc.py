"""AUROC at evaluation sizes: ``rmc_jax.evaluate.metrics.auroc`` (average ranks from
``scipy.stats.rankdata``) against the per-tie-group loop it replaced (``reference_auroc``).

    python tools/bench_auroc.py                    # 20,000 examples, continuous and tied scores
    python tools/bench_auroc.py --size 5000 20000 --repeats 7

For each size and kind of scores it checks that both give the same value (to 1e-12) and prints
the median time of ``--repeats`` calls of each, their ratio, and the time of one bootstrap
interval (``bootstrap_ci``, 200 resamples, as the evaluation computes for every AUROC it
reports) with each. Prints Markdown.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time

import numpy as np


def reference_auroc(scores: np.ndarray, labels: np.ndarray) -> float:
    """The former ``metrics.auroc``: sort, then average the 1-based ranks of every run of tied
    scores in a Python loop (Mann-Whitney U). NaN when only one class is present."""
    scores, labels = np.asarray(scores, np.float64), np.asarray(labels).astype(bool)
    n_pos, n_neg = int(labels.sum()), int((~labels).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    order = np.argsort(scores, kind="mergesort")
    ranks = np.empty(len(scores), np.float64)
    sorted_scores = scores[order]
    boundaries = np.flatnonzero(np.diff(sorted_scores)) + 1
    starts = np.concatenate([[0], boundaries])
    ends = np.concatenate([boundaries, [len(scores)]])
    for start, end in zip(starts, ends):
        ranks[order[start:end]] = 0.5 * (start + end - 1) + 1
    return float((ranks[labels].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def example(size: int, kind: str, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Scores of ``size`` examples (10% positive, shifted up by one): 'continuous' float32
    probabilities as a model gives them (few ties), or 'tied' (rounded to 2 decimals)."""
    rng = np.random.default_rng(seed)
    labels = rng.random(size) < 0.1
    scores = 1 / (1 + np.exp(-(rng.normal(size=size) + labels)))
    scores = scores.astype(np.float32) if kind == "continuous" else np.round(scores, 2)
    return scores, labels


def median_seconds(function, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main(argv=None) -> None:
    from rmc_jax.evaluate import metrics

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, nargs="+", default=[20000])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)
    print(f"Python {platform.python_version()}, NumPy {np.__version__}, "
          f"{platform.machine()}; median of {args.repeats} calls\n")
    print("| examples | scores | rankdata ms | loop ms | speed-up | |difference| "
          "| bootstrap (200) rankdata s | loop s |")
    print("|---:|---|---:|---:|---:|---:|---:|---:|")
    for size in args.size:
        for kind in ("continuous", "tied"):
            scores, labels = example(size, kind)
            new, old = metrics.auroc(scores, labels), reference_auroc(scores, labels)
            if abs(new - old) > 1e-12:
                raise AssertionError(f"{size} {kind}: {new!r} != {old!r}")
            t_new = median_seconds(lambda: metrics.auroc(scores, labels), args.repeats)
            t_old = median_seconds(lambda: reference_auroc(scores, labels), args.repeats)
            boot = [median_seconds(lambda f=f: metrics.bootstrap_ci(f, scores, labels), 1)
                    for f in (metrics.auroc, reference_auroc)]
            print(f"| {size:,} | {kind} | {t_new * 1e3:.2f} | {t_old * 1e3:.2f} | "
                  f"{t_old / t_new:.1f}x | {abs(new - old):.1e} | {boot[0]:.2f} | "
                  f"{boot[1]:.2f} |", flush=True)


if __name__ == "__main__":
    main()

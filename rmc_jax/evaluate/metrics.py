"""Metric primitives on NumPy arrays: AUROC, recall@K and ranks, accuracy, bootstrap CIs."""

from __future__ import annotations

import numpy as np
import scipy.stats


def auroc(scores: np.ndarray, labels: np.ndarray) -> float:
    """Area under the ROC curve: the Mann-Whitney U statistic from average ranks
    (``scipy.stats.rankdata``), so that tied scores count one half.

    NaN when only one class is present (AUROC is undefined there) or a score is NaN.
    """
    scores, labels = np.asarray(scores, np.float64), np.asarray(labels).astype(bool)
    n_pos, n_neg = int(labels.sum()), int((~labels).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = scipy.stats.rankdata(scores)  # 1-based, ties get the mean of their ranks
    return float((ranks[labels].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def ranks_of_positives(similarity: np.ndarray, positive: np.ndarray) -> np.ndarray:
    """For each query row, the 1-based rank of its best-ranked positive candidate.

    similarity, positive: [Q, C]. Ties count against the query (pessimistic).
    Returns [Q] ints (C + 1 for a query without positives).
    """
    similarity = np.asarray(similarity, np.float64)
    best = np.where(positive, similarity, -np.inf).max(axis=1)
    negatives_above = ((similarity >= best[:, None]) & ~positive).sum(axis=1)
    ranks = negatives_above + 1
    return np.where(positive.any(axis=1), ranks, similarity.shape[1] + 1)


def recall_at_k(ranks: np.ndarray, ks=(1, 5, 10)) -> dict[int, float]:
    ranks = np.asarray(ranks)
    return {k: float(np.mean(ranks <= k)) for k in ks}


def bootstrap_ci(metric, *arrays, n: int = 200, seed: int = 0, alpha: float = 0.05):
    """(low, high) percentile interval of ``metric(*resampled arrays)`` over ``n`` resamples
    of the rows (same indices for every array). NaN draws are ignored."""
    rng = np.random.default_rng(seed)
    size = len(arrays[0])
    values = []
    for _ in range(n):
        index = rng.integers(0, size, size)
        values.append(metric(*(a[index] for a in arrays)))
    values = np.asarray(values, np.float64)
    values = values[np.isfinite(values)]
    if not len(values):
        return float("nan"), float("nan")
    return (float(np.quantile(values, alpha / 2)), float(np.quantile(values, 1 - alpha / 2)))


def roc_curve(scores: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(false positive rate, true positive rate), one point per distinct score threshold plus
    the origin, thresholds descending (scikit-learn's ``roc_curve(drop_intermediate=False)``).

    The trapezoid area under it equals ``auroc``. Empty arrays when only one class is present.
    """
    scores, labels = np.asarray(scores, np.float64), np.asarray(labels).astype(bool)
    n_pos, n_neg = int(labels.sum()), int((~labels).sum())
    if n_pos == 0 or n_neg == 0:
        return np.zeros(0), np.zeros(0)
    order = np.argsort(-scores, kind="mergesort")
    sorted_scores, sorted_labels = scores[order], labels[order]
    # The last index of each run of tied scores: all tied examples cross the threshold together.
    last = np.concatenate([np.flatnonzero(np.diff(sorted_scores)), [len(scores) - 1]])
    tp = np.cumsum(sorted_labels)[last]
    fp = (last + 1) - tp
    return (np.concatenate([[0.0], fp / n_neg]), np.concatenate([[0.0], tp / n_pos]))


def recall_curve(ranks: np.ndarray, max_k: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(K = 1..max_k, recall@K) from the 1-based ranks of each query's first positive."""
    ranks = np.asarray(ranks)
    max_k = int(max_k or (ranks.max() if len(ranks) else 1))
    ks = np.arange(1, max_k + 1)
    if not len(ranks):
        return ks, np.zeros(len(ks))
    counts = np.bincount(np.minimum(ranks, max_k + 1), minlength=max_k + 2)
    return ks, np.cumsum(counts[1:max_k + 1]) / len(ranks)

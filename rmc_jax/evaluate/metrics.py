"""Metric primitives on NumPy arrays: AUROC, recall@K and ranks, accuracy, bootstrap CIs."""

from __future__ import annotations

import numpy as np


def auroc(scores: np.ndarray, labels: np.ndarray) -> float:
    """Area under the ROC curve (Mann-Whitney U with average ranks for ties).

    NaN when only one class is present (AUROC is undefined there).
    """
    scores, labels = np.asarray(scores, np.float64), np.asarray(labels).astype(bool)
    n_pos, n_neg = int(labels.sum()), int((~labels).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    order = np.argsort(scores, kind="mergesort")
    ranks = np.empty(len(scores), np.float64)
    sorted_scores = scores[order]
    # Average rank over each run of tied scores (1-based ranks).
    boundaries = np.flatnonzero(np.diff(sorted_scores)) + 1
    starts = np.concatenate([[0], boundaries])
    ends = np.concatenate([boundaries, [len(scores)]])
    for start, end in zip(starts, ends):
        ranks[order[start:end]] = 0.5 * (start + end - 1) + 1
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

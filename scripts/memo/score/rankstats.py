"""Rank statistics for comparing memorization measures: AUROC, rank percentiles, Spearman.

AUROC is the Mann–Whitney statistic (Mann & Whitney, 1947; Hanley & McNeil, 1982):
AUC = (R₊ − n₊(n₊ + 1)/2) / (n₊·n₋), R₊ the sum of the positives' ranks among all scores,
ties given their mid-rank, i.e. P(score of a positive > score of a negative) + ½·P(tie).
Its interval is a percentile bootstrap that resamples positives and negatives separately
(stratified, so each replicate keeps n₊ and n₋).
"""
from __future__ import annotations

import numpy as np
from scipy import stats

from memo.score.uncertainty import rank_correlation


def _scores_and_labels(scores, positive):
    s = np.asarray(scores, dtype=np.float64).ravel()
    p = np.asarray(positive).ravel()
    if p.dtype != bool:
        raise ValueError(f"positive must be a bool array; got {p.dtype}")
    if s.shape != p.shape:
        raise ValueError(f"scores and positive differ in length: {s.size} vs {p.size}")
    if np.isnan(s).any():
        raise ValueError("scores contain nan")
    if p.all() or not p.any():
        raise ValueError("AUROC needs at least one positive and one negative")
    return s, p


def _auc_from_ranks(ranks: np.ndarray, positive: np.ndarray) -> np.ndarray:
    """AUC per row of ranks (..., n) of n₊ positives (mask over the last axis)."""
    n_pos = int(positive.sum())
    n_neg = positive.size - n_pos
    r_pos = ranks[..., positive].sum(-1)
    return (r_pos - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)


def auroc(scores, positive) -> float:
    """Area under the ROC curve of `scores` separating `positive` (bool) from the rest;
    mid-ranks for ties (a tie counts ½). ValueError for nan scores or a single class."""
    s, p = _scores_and_labels(scores, positive)
    return float(_auc_from_ranks(stats.rankdata(s), p))


def auroc_interval(scores, positive, n_boot: int = 1000, seed: int = 0,
                   level: float = 0.95, chunk: int = 100) -> tuple[float, float]:
    """Percentile bootstrap interval of auroc at `level`: n_boot replicates, each resampling
    the positives and the negatives with replacement within their own class (seeded)."""
    s, p = _scores_and_labels(scores, positive)
    pos, neg = s[p], s[~p]
    rng = np.random.default_rng(seed)
    # replicate layout: positives first, then negatives
    mask = np.r_[np.ones(pos.size, bool), np.zeros(neg.size, bool)]
    aucs = []
    for start in range(0, n_boot, chunk):
        b = min(chunk, n_boot - start)
        rep = np.concatenate([pos[rng.integers(0, pos.size, (b, pos.size))],
                              neg[rng.integers(0, neg.size, (b, neg.size))]], axis=1)
        aucs.append(_auc_from_ranks(stats.rankdata(rep, axis=1), mask))
    q = 100 * np.array([(1 - level) / 2, (1 + level) / 2])
    lo, hi = np.percentile(np.concatenate(aucs), q)
    return float(lo), float(hi)


def rank_percentile(scores) -> np.ndarray:
    """(n,) percentile of each score's rank: 100·(r − 1)/(n − 1), r its mid-rank (1..n).

    0 = the lowest score, 100 = the highest; tied scores share the percentile of their
    mid-rank (all equal, or n = 1: 50). nan scores keep nan and are left out of the ranking.
    """
    s = np.asarray(scores, dtype=np.float64).ravel()
    out = np.full(s.shape, np.nan)
    ok = ~np.isnan(s)
    n = int(ok.sum())
    if n == 1:
        out[ok] = 50.0
    elif n > 1:
        out[ok] = 100.0 * (stats.rankdata(s[ok]) - 1) / (n - 1)
    return out


def spearman(a, b) -> float:
    """Spearman rank correlation over the examples where both are finite
    (uncertainty.rank_correlation); nan where it is undefined (< 3 such examples, or a
    constant side)."""
    r = rank_correlation(np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64))
    return float("nan") if r is None else r

"""Calibrated memorization scores: a permutation null of the K-fold score for every example,
from the models already trained.

Why: U_i is a log-mean-exp over (K−1)·L in-values and V_i one over L out-values; a log-mean-exp
of more draws of one distribution is larger (Jensen), so M_i > 0 on average even when nothing is
memorized, by more the more the models disagree about x_i. "M > 0" or "top 5 %" alone does not
say whether x_i is memorized.

The null hypothesis for example i: whether a model trained on x_i does not change its
log p(x_i). Within one repeat, which of the K fold models holds x_i out is decided by the random
partition alone; under the null it is then unrelated to the K values v[r, 0..K−1, i], so every
choice of held-out model per repeat (a "labelling", K^L of them) is equally likely to be the one
observed. Recomputing M under other labellings gives, per example:

    null_mean   the mean of M over labellings: the estimator's bias for this example
    M_corrected M − null_mean
    p_value     the share of labellings with M_null ≥ M (exact), or (1 + #{M_null ≥ M})/(B + 1)
                over B labellings drawn at random (independently per example)

Model-level effects (one model better than another for every example) stay inside a repeat and
are permuted with the labels, so they do not create false positives. What the test cannot tell
apart from memorization: anything other than x_i itself that systematically differs between the
held-out model and the others, for this example: in- and out-values computed in different ways
(other noise, other sample counts, another epoch), or a training-set effect that reaches x_i
only through examples that go with it into the same fold.

Arithmetic, per example: w = exp(v − max v) in float64; exact leave-one-out sums
loo[r, k] = Σ_{k'≠k} w[r, k'] (prefix plus suffix sums, no subtraction from a total); for a
labelling k*_r: in = Σ_r loo[r, k*_r], out = Σ_r w[r, k*_r],
M = log(in / ((K−1)·L)) − log(out / L) = log in − log out − log(K−1). Sums that underflow are
recomputed in log space. Work arrays are bounded (`_BLOCK` elements) by going blockwise over
examples and over labellings.
"""
from __future__ import annotations

import functools
import itertools
import math
from dataclasses import dataclass

import numpy as np
from scipy.special import logsumexp

from memo.config import experiments
from memo.errors import MemoError
from memo.score.uncertainty import rank_correlation, split_halves

# an experiment's defaults (memo/config/experiments.py), for callers that name none
DEFAULT_PERMUTATIONS = experiments.summary_options(None)["n_perm"]
DEFAULT_FDR_Q = experiments.summary_options(None)["fdr_q"]
# Work arrays hold about this many elements (float64: 64 MB) at a time.
_BLOCK = 1 << 23
# A sum of w below this may have lost its terms to underflow; recomputed in log space.
_UNDERFLOW = 1e-250
# Per-replicate recomputation of the null in the bootstrap, and split-half of M_corrected,
# run when their work (labellings × repeats × examples, summed) stays under this.
WORK_BUDGET = 1.5e9


class CalibrationError(ValueError, MemoError):
    """Values that cannot be calibrated (missing entries, inconsistent held-out folds)."""


@dataclass
class Calibration:
    M: np.ndarray            # (n,) observed M from the values (equals the summary's M to rounding)
    null_mean: np.ndarray    # (n,) mean of M over the labellings
    p_value: np.ndarray      # (n,)
    exact: bool              # every labelling enumerated (else B drawn at random)
    n_labellings: int        # labellings used: K^L when exact, else B

    @property
    def min_p(self) -> float:
        return min_p(self.exact, self.n_labellings)

    @property
    def M_corrected(self) -> np.ndarray:
        return self.M - self.null_mean


def labellings(folds: int, repeats: int) -> int:
    """K^L: the number of ways to choose the held-out model in every repeat."""
    return int(folds) ** int(repeats)


def is_exact(folds: int, repeats: int, n_perm: int) -> bool:
    """Enumerate all K^L labellings when there are no more of them than B."""
    return labellings(folds, repeats) <= n_perm


def min_p(exact: bool, n_labellings: int) -> float:
    """The smallest p-value the design can give: 1/K^L (exact) or 1/(B + 1) (sampled)."""
    return 1.0 / n_labellings if exact else 1.0 / (n_labellings + 1)


def design_min_p(folds: int, repeats: int, n_perm: int) -> float:
    exact = is_exact(folds, repeats, n_perm)
    return min_p(exact, labellings(folds, repeats) if exact else n_perm)


def check_inputs(values, held_out) -> tuple[np.ndarray, np.ndarray]:
    """values (L, K, n) finite, held_out (L, n) in 0..K−1; raises CalibrationError."""
    values = np.asarray(values)
    held_out = np.asarray(held_out)
    if values.ndim != 3 or held_out.shape != (values.shape[0], values.shape[2]):
        raise CalibrationError(f"values must be (L, K, n) and held_out (L, n); got "
                               f"{values.shape} and {held_out.shape}")
    r, k, n = values.shape
    if r < 1 or k < 2:
        raise CalibrationError(f"need at least one repeat and two folds; got L={r}, K={k}")
    bad = ~np.isfinite(values)
    if bad.any():
        rr, kk, ii = np.nonzero(bad)
        raise CalibrationError(
            f"{int(bad.sum())} of {values.size} model values are missing or not finite (first: "
            f"example {ii[0]} under repeat {rr[0]} fold {kk[0]}); the calibration needs every "
            "fold model's log p of every example at the final epoch")
    if held_out.size and (held_out.min() < 0 or held_out.max() >= k):
        raise CalibrationError(f"held-out fold outside 0..{k - 1}")
    return values, held_out.astype(np.int64)


# ----------------------------------------------------------------------------------------------
# the score under a labelling, for one block of examples


class _Block:
    """Precomputed sums of one block of examples: values (L, K, nb) in float64."""

    def __init__(self, v: np.ndarray):
        r, k, nb = v.shape
        self.r, self.k, self.nb = r, k, nb
        self.lv = v - v.max(axis=(0, 1))                       # <= 0, max 0 per example
        w = np.exp(self.lv)
        pre = np.cumsum(w, axis=1)
        suf = np.cumsum(w[:, ::-1], axis=1)[:, ::-1]
        loo = np.zeros_like(w)
        loo[:, 1:] += pre[:, :-1]
        loo[:, :-1] += suf[:, 1:]
        # flat, indexed by (r·K + k)·nb + column
        self.w = w.ravel()
        self.loo = loo.ravel()
        self.base = ((np.arange(r) * k * nb)[:, None] + np.arange(nb)[None, :])[None]  # (1, L, nb)
        self._llo = None
        self.log_km1 = math.log(k - 1)

    def llo(self) -> np.ndarray:
        """log of loo, computed in log space (only for sums that underflow)."""
        if self._llo is None:
            out = np.empty_like(self.lv)
            for j in range(self.k):
                others = np.delete(self.lv, j, axis=1)
                out[:, j] = logsumexp(others, axis=1)
            self._llo = out.ravel()
        return self._llo

    def index_shared(self, labels: np.ndarray) -> np.ndarray:
        """(B, L, nb) flat indices for labellings shared by all examples: labels (B, L)."""
        return (labels * self.nb)[:, :, None] + self.base

    def index_per_example(self, labels: np.ndarray) -> np.ndarray:
        """Flat indices for labels (B, L, nb), one labelling per example and row (in place)."""
        labels *= self.nb
        labels += self.base
        return labels

    def scores(self, idx: np.ndarray) -> np.ndarray:
        """(B, nb): M under the labellings whose flat indices are idx (B, L, nb)."""
        s_in = np.take(self.loo, idx).sum(axis=1)
        s_out = np.take(self.w, idx).sum(axis=1)
        with np.errstate(divide="ignore"):
            m = np.log(s_in) - np.log(s_out) - self.log_km1
        redo = (s_in < _UNDERFLOW) | (s_out < _UNDERFLOW)
        if redo.any():
            b, j = np.nonzero(redo)
            rows = idx[b, :, j]                                  # (m, L)
            lv = self.lv.ravel()
            m[b, j] = (logsumexp(self.llo()[rows], axis=1) - logsumexp(lv[rows], axis=1)
                       - self.log_km1)
        return m


@functools.lru_cache(maxsize=4)
def _all_labellings(k: int, r: int) -> np.ndarray:
    """(K^L, L): every labelling, the first repeat varying slowest (cached: the bootstrap
    asks for the same ones in every replicate)."""
    out = np.array(list(itertools.product(range(k), repeat=r)), dtype=np.int64).reshape(-1, r)
    out.flags.writeable = False
    return out


def calibrate(values, held_out, n_perm: int = DEFAULT_PERMUTATIONS, seed: int = 0,
              exact: bool | None = None, p_values: bool = True) -> Calibration:
    """The permutation null of M for every example (module docstring).

    values: (L, K, n), log p of example i under fold model k of repeat r (whether it trained on
    i or held it out). held_out: (L, n), the fold whose model held example i out in repeat r.
    n_perm: B, the number of labellings drawn per example when K^L > B; with K^L <= B all K^L
    are enumerated (exact=True/False forces either). seed: the generator of the drawn
    labellings. p_values=False skips counting (the null mean alone).
    """
    values, held_out = check_inputs(values, held_out)
    r, k, n = values.shape
    total = labellings(k, r)
    if exact is None:
        exact = total <= n_perm
    if not exact and n_perm < 1:
        raise CalibrationError("n_perm must be at least 1")
    used = total if exact else int(n_perm)
    rng = np.random.default_rng(seed)
    everything = _all_labellings(k, r) if exact else None

    # examples per block: all labellings of a block at once up to 4096 of them, else in chunks
    nb = max(1, min(n, _BLOCK // (r * min(used, 4096))))
    M = np.empty(n)
    null_sum = np.zeros(n)
    ge = np.zeros(n, dtype=np.int64)
    for s in range(0, n, nb):
        sl = slice(s, min(n, s + nb))
        blk = _Block(values[:, :, sl].astype(np.float64))
        m_obs = blk.scores(blk.index_per_example(held_out[None, :, sl].copy()))[0]
        M[sl] = m_obs
        # ">=" with a rounding allowance: the observed labelling, met again among the null
        # ones, must count as a tie (conservative), whatever the order of the sums
        floor = m_obs - 1e-9 * (1.0 + np.abs(m_obs))
        chunk = max(1, _BLOCK // (r * blk.nb))
        for b0 in range(0, used, chunk):
            nbatch = min(chunk, used - b0)
            if exact:
                idx = blk.index_shared(everything[b0:b0 + nbatch])
            else:
                lab = rng.integers(0, k, size=(nbatch, r, blk.nb), dtype=np.int64)
                idx = blk.index_per_example(lab)
            m_null = blk.scores(idx)
            null_sum[sl] += m_null.sum(axis=0)
            if p_values:
                ge[sl] += (m_null >= floor).sum(axis=0)
    null_mean = null_sum / used
    if not p_values:
        p = np.full(n, np.nan)
    elif exact:
        p = ge / used
    else:
        p = (1.0 + ge) / (used + 1.0)
    return Calibration(M=M, null_mean=null_mean, p_value=p, exact=bool(exact), n_labellings=used)


# ----------------------------------------------------------------------------------------------
# false discovery rate


def benjamini_hochberg(p, q: float = DEFAULT_FDR_Q) -> tuple[np.ndarray, float]:
    """(flags, cutoff): Benjamini–Hochberg at level q over the finite p-values.

    The k-th smallest of m p-values is compared with q·k/m; every p up to the largest that
    passes is flagged. cutoff is that p-value (nan when nothing is flagged). The expected share
    of false flags among the flagged is at most q (independent or positively dependent tests).
    """
    p = np.asarray(p, dtype=np.float64)
    ok = np.isfinite(p)
    flags = np.zeros(p.shape, dtype=bool)
    m = int(ok.sum())
    if m == 0:
        return flags, math.nan
    ps = np.sort(p[ok])
    passed = np.flatnonzero(ps <= q * np.arange(1, m + 1) / m)
    if passed.size == 0:
        return flags, math.nan
    cutoff = float(ps[passed[-1]])
    return ok & (p <= cutoff), cutoff


def q_values(p) -> np.ndarray:
    """Benjamini–Hochberg adjusted p-values: q_(k) = min over j >= k of p_(j)·m/j (capped at
    1) over the m finite p-values, nan elsewhere. An example is flagged at level q exactly
    when its q-value is at most q (`benjamini_hochberg`)."""
    p = np.asarray(p, dtype=np.float64)
    out = np.full(p.shape, np.nan)
    ok = np.flatnonzero(np.isfinite(p))
    if ok.size == 0:
        return out
    order = ok[np.argsort(p[ok], kind="stable")]
    m = ok.size
    scaled = p[order] * m / np.arange(1, m + 1)
    out[order] = np.minimum(1.0, np.minimum.accumulate(scaled[::-1])[::-1])
    return out


def needed_at_minimum(p_min: float, n: int, q: float) -> int:
    """How many examples must share the smallest attainable p-value for BH to flag any:
    the k-th smallest p passes when p <= q·k/n, so k >= p_min·n/q."""
    return max(1, math.ceil(p_min * n / q - 1e-9))


def design_note(folds: int, repeats: int, n_perm: int, n: int, q: float) -> str | None:
    """One sentence when the design cannot reach BH's first threshold q/n, else None."""
    exact = is_exact(folds, repeats, n_perm)
    total = labellings(folds, repeats)
    p_min = design_min_p(folds, repeats, n_perm)
    if p_min <= q / n:
        return None
    need = needed_at_minimum(p_min, n, q)
    how = (f"K^L = {folds}^{repeats} = {total} labellings" if exact else
           f"B = {n_perm} drawn labellings")
    reach = (f"nothing can be flagged unless at least {need} of the {n} examples reach it"
             if need <= n else "nothing can be flagged")
    text = (f"the smallest attainable p-value {p_min:.3g} ({how}) is above BH's first "
            f"threshold q/n = {q / n:.3g}: {reach}")
    if total >= n / q:
        text += f"; raise the number of labellings to at least {math.ceil(n / q)} (--n-perm)"
    else:
        text += f"; K^L must be at least n/q = {math.ceil(n / q)} (more repeats or folds)"
    return text


# ----------------------------------------------------------------------------------------------
# uncertainty of M_corrected


def _replicate_repeats(counts: np.ndarray) -> np.ndarray:
    return np.repeat(np.arange(counts.size), counts)


def bootstrap_affordable(folds: int, repeats: int, n: int, n_boot: int,
                         budget: float = WORK_BUDGET) -> bool:
    """Whether the null can be enumerated anew in every bootstrap replicate."""
    return n_boot * labellings(folds, repeats) * repeats * n <= budget


def bootstrap_corrected(values, held_out, weights: np.ndarray, level: float = 0.95):
    """Percentile interval of M_corrected over bootstrap replicates of the repeats, the null
    mean recomputed (every labelling enumerated) in every replicate.

    weights: (n_boot, L) repeat multiplicities (uncertainty.bootstrap_weights; the same
    replicates as M's interval). A repeat drawn twice enters as two repeats, each with its own
    held-out choice in the null. Returns (low, high), each (n,).
    """
    values, held_out = check_inputs(values, held_out)
    r, k, n = values.shape
    weights = np.asarray(weights, dtype=np.int64)
    q = 100 * np.array([(1 - level) / 2, (1 + level) / 2])
    lo, hi = np.empty(n), np.empty(n)
    # blocks of examples, so that the replicates held for the percentiles stay bounded
    step = max(1, _BLOCK // max(1, len(weights)))
    for s in range(0, n, step):
        sl = slice(s, min(n, s + step))
        reps = np.empty((len(weights), sl.stop - sl.start))
        for b, counts in enumerate(weights):
            idx = _replicate_repeats(counts)
            c = calibrate(values[idx, :, sl], held_out[idx, sl], exact=True, p_values=False)
            reps[b] = c.M_corrected
        lo[sl], hi[sl] = np.percentile(reps, q, axis=0)
    return lo, hi


def split_half_corrected(values, held_out, seed: int = 0, n_splits: int = 10,
                         n_perm: int = DEFAULT_PERMUTATIONS,
                         budget: float = WORK_BUDGET) -> tuple[float, int]:
    """(Spearman correlation of M_corrected between two halves of the repeats, splits used).

    The halves are those of uncertainty.split_half_reliability (uncertainty.split_halves, same
    seed: same splits); each half is calibrated on its own. As many of the n_splits splits as
    the work budget allows are averaged, at least one. nan for L < 2.
    """

    values, held_out = check_inputs(values, held_out)
    r, k, n = values.shape
    if r < 2:
        return math.nan, 0
    halves = (r // 2, r - r // 2)
    cost = sum(min(labellings(k, h), n_perm) * h * n for h in halves)
    splits = max(1, min(n_splits, int(budget // max(cost, 1))))
    out = []
    for j, halves_j in enumerate(split_halves(r, seed, splits)):
        m = [calibrate(values[half], held_out[half], n_perm=n_perm, seed=seed + 1 + j,
                       p_values=False).M_corrected for half in halves_j]
        rho = rank_correlation(m[0], m[1])
        if rho is not None:
            out.append(rho)
    return (float(np.mean(out)) if out else math.nan), splits

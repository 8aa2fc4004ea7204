"""Uncertainty of the memorization score: bootstrap over repeats, split-half reliability, ESS flags.

The K-fold estimator (the paper) gives example i, in each repeat r, K−1 "in" values (models that
saw x_i) and one "out" value (the model that did not). The summary keeps, per repeat and example,
the log-sum-exp of those values and their number:

    in_lse[r, i]  = logsumexp of example i's in-values in repeat r     in_count[r, i]  (K−1, or 0)
    out_lse[r, i] = logsumexp of example i's out-values in repeat r    out_count[r, i] (1, or 0)

From these partial sums the score of any multiset of repeats follows without the raw values:

    U_i = log Σ_r w_r·exp(in_lse[r, i]) − log Σ_r w_r·in_count[r, i]       (same for V_i)
    M_i = U_i − V_i

with w_r the multiplicity of repeat r (all ones: the plain estimate; a multinomial draw: one
bootstrap replicate; a 0/1 mask: a subset of the repeats).

Repeats are the resampling unit. Within one repeat the folds come from one random partition, so
the values of different folds are dependent; different repeats use independent partitions and
fresh models, so they are i.i.d. given the data. Missing entries (count 0) may hold any value in
the lse arrays (typically -inf or nan); they are ignored.
"""
from __future__ import annotations

import math
import warnings

import numpy as np
from scipy import stats

from memo.files.summary import spearman_brown  # one definition, beside the file that stores it

# Work arrays hold at most about this many float64 elements (~128 MB) at a time.
_BLOCK_ELEMENTS = 1 << 24
# Below this, a weighted sum of exp(lse − max) may have lost the selected terms to underflow
# (the exp of terms more than ~708 nats under the per-example maximum); such entries are
# recomputed exactly.
_UNDERFLOW = 1e-250

# Importance-sampling effective sample size (Kish, (Σw)²/Σw², between 1 and N) is flagged as low
# when it falls under max(ESS_THRESHOLD_MIN, ESS_THRESHOLD_FRACTION · N). See `ess_flags`.
ESS_THRESHOLD_FRACTION = 0.02
ESS_THRESHOLD_MIN = 5.0


# ----------------------------------------------------------------------------------------------
# the score from per-repeat partial sums


def _as_inputs(lse, count):
    lse = np.asarray(lse, dtype=np.float64)
    count = np.asarray(count, dtype=np.float64)
    if lse.ndim != 2 or lse.shape != count.shape:
        raise ValueError(f"lse and count must both be (R, n) arrays; got {lse.shape} and {count.shape}")
    if np.any(count < 0):
        raise ValueError("counts must be non-negative")
    # missing entries contribute nothing, whatever the lse array holds there
    return np.where(count > 0, lse, -np.inf), count


def _as_weights(weights, n_repeats: int) -> tuple[np.ndarray, bool]:
    """(B, R) float weights and whether the caller passed a single (R,) vector (or None)."""
    if weights is None:
        return np.ones((1, n_repeats)), True
    w = np.asarray(weights, dtype=np.float64)
    single = w.ndim == 1
    w = np.atleast_2d(w)
    if w.ndim != 2 or w.shape[1] != n_repeats:
        raise ValueError(f"weights must have shape ({n_repeats},) or (B, {n_repeats}); got "
                         f"{np.shape(weights)}")
    if np.any(w < 0) or not np.all(np.isfinite(w)):
        raise ValueError("weights must be finite and non-negative")
    return w, single


def _weighted_lme(lse: np.ndarray, count: np.ndarray, w: np.ndarray) -> np.ndarray:
    """(B, n): log(Σ_r w_br·exp(lse_ri)) − log(Σ_r w_br·count_ri); nan where the count sum is 0.

    lse must hold -inf where count is 0. Computed as a matrix product on exp(lse − max_r lse),
    which is exact up to rounding except where every selected term lies > ~700 nats below the
    unselected maximum; those entries are recomputed term by term.
    """
    top = lse.max(axis=0)                                        # (n,)
    shift = np.where(np.isfinite(top), top, 0.0)
    with np.errstate(invalid="ignore"):
        scaled = np.exp(lse - shift)                             # (R, n), 0 for missing
    total = w @ scaled                                           # (B, n)
    denom = w @ count                                            # (B, n)
    present = (w > 0).astype(np.float64) @ np.isfinite(lse).astype(np.float64) > 0
    with np.errstate(divide="ignore", invalid="ignore"):
        out = np.log(total) + shift
        # weights that select values yet a (near-)zero sum: underflow, recompute exactly
        redo = present & (total < _UNDERFLOW)
        if redo.any():
            b, i = np.nonzero(redo)
            terms = lse[:, i].T + np.log(w[b])                   # (k, R)
            m = terms.max(axis=1, keepdims=True)
            out[b, i] = (m[:, 0] + np.log(np.exp(terms - m).sum(axis=1)))
        out = out - np.log(denom)
    out[denom <= 0] = np.nan
    return out


def _plain_lme(lse: np.ndarray, count: np.ndarray) -> np.ndarray:
    """(n,): log(Σ_r exp(lse_ri)) − log(Σ_r count_ri), every repeat once; nan where no value.

    lse must hold -inf where count is 0."""
    with np.errstate(divide="ignore", invalid="ignore"):
        total = count.sum(axis=0)
        out = np.logaddexp.reduce(lse, axis=0) - np.log(total)
    return np.where(total > 0, out, np.nan)


def score_from_repeats(in_lse, in_count, out_lse, out_count, weights=None):
    """(U, V, M) from per-repeat partial sums, with optional repeat multiplicities.

    in_lse, in_count, out_lse, out_count: (R, n) arrays (see the module docstring).
    weights: None (every repeat once), (R,), or (B, R) non-negative multiplicities — e.g.
    bootstrap draws. Returns arrays of shape (n,) for None or (R,) weights, (B, n) for (B, R).
    U (V) is nan where the selected repeats hold no in- (out-) value for the example, and M is
    nan wherever U or V is. Computed in blocks of examples so that memory stays bounded.
    """
    in_lse, in_count = _as_inputs(in_lse, in_count)
    out_lse, out_count = _as_inputs(out_lse, out_count)
    if in_lse.shape != out_lse.shape:
        raise ValueError(f"in and out arrays differ in shape: {in_lse.shape} vs {out_lse.shape}")
    r, n = in_lse.shape
    if weights is None:
        # Every repeat once (the summary's scores): a running log-add over repeats, the
        # arithmetic summaries were always made with. The matrix product below agrees only to
        # rounding (~1e-14 nats), which would make rebuilt summary files differ from earlier ones.
        U, V = _plain_lme(in_lse, in_count), _plain_lme(out_lse, out_count)
        return U, V, U - V
    w, single = _as_weights(weights, r)
    U = np.empty((w.shape[0], n))
    V = np.empty((w.shape[0], n))
    step = max(1, _BLOCK_ELEMENTS // max(1, w.shape[0] + r))
    for s in range(0, n, step):
        sl = slice(s, s + step)
        U[:, sl] = _weighted_lme(in_lse[:, sl], in_count[:, sl], w)
        V[:, sl] = _weighted_lme(out_lse[:, sl], out_count[:, sl], w)
    M = U - V
    if single:
        return U[0], V[0], M[0]
    return U, V, M


# ----------------------------------------------------------------------------------------------
# bootstrap over repeats


def bootstrap_weights(n_repeats: int, n_boot: int, seed: int = 0) -> np.ndarray:
    """(n_boot, R) multinomial repeat multiplicities: R repeats drawn with replacement."""
    rng = np.random.default_rng(seed)
    return rng.multinomial(n_repeats, np.full(n_repeats, 1.0 / n_repeats), size=n_boot)


def bootstrap(in_lse, in_count, out_lse, out_count, n_boot: int = 1000, seed: int = 0,
              level: float = 0.95, weights=None):
    """Per-example bootstrap standard error and percentile interval of M, resampling repeats.

    Each replicate draws R repeats with replacement (the same draw for every example, since a
    repeat is one partition shared by all examples) and recomputes M from the partial sums.
    Returns (se, ci_low, ci_high), each (n,): se is the standard deviation over replicates
    (ddof=1); the interval holds the (1−level)/2 and (1+level)/2 percentiles of the replicates.
    Replicates in which an example has no in- or no out-value are left out for that example.

    The bootstrap SE of a mean of R i.i.d. terms is the plug-in estimate, biased low by the
    factor √((R−1)/R) (5 % at R = 10); it is reported as is.

    With R < 2 everything is nan: a single repeat resampled with replacement always reproduces
    itself, so the replicates carry no information about the spread across repeats (the
    bootstrap would report SE = 0, which would be wrong, not certain). The folds within one
    repeat are not exchangeable replicates (they share one partition), so they cannot stand in.
    """
    in_lse, in_count = _as_inputs(in_lse, in_count)
    out_lse, out_count = _as_inputs(out_lse, out_count)
    r, n = in_lse.shape
    nan = np.full(n, np.nan)
    if r < 2 or n_boot < 2:
        return nan, nan.copy(), nan.copy()
    # weights: the (n_boot, R) replicates when the caller shares them (else drawn from seed)
    w = (bootstrap_weights(r, n_boot, seed) if weights is None else weights).astype(np.float64)
    q = 100 * np.array([(1 - level) / 2, (1 + level) / 2])
    se, lo, hi = np.empty(n), np.empty(n), np.empty(n)
    # all replicates of a block of examples at once: percentiles need every replicate
    step = max(1, _BLOCK_ELEMENTS // (n_boot + r))
    for s in range(0, n, step):
        sl = slice(s, s + step)
        _, _, m = score_from_repeats(in_lse[:, sl], in_count[:, sl], out_lse[:, sl],
                                     out_count[:, sl], weights=w)         # (B, nb)
        if np.isnan(m).any():
            with warnings.catch_warnings():  # all-nan columns warn; they give nan, as they should
                warnings.simplefilter("ignore", RuntimeWarning)
                se[sl] = np.nanstd(m, axis=0, ddof=1)
                lo[sl], hi[sl] = np.nanpercentile(m, q, axis=0)
        else:
            se[sl] = m.std(axis=0, ddof=1)
            lo[sl], hi[sl] = np.percentile(m, q, axis=0)
    # where the full-data score itself is undefined, so is its uncertainty
    _, _, full = score_from_repeats(in_lse, in_count, out_lse, out_count)
    bad = ~np.isfinite(full)
    se[bad], lo[bad], hi[bad] = np.nan, np.nan, np.nan
    return se, lo, hi


# ----------------------------------------------------------------------------------------------
# split-half reliability


def split_halves(r: int, seed: int, n_splits: int):
    """The seeded splits of R repeats into halves of ⌊R/2⌋ and ⌈R/2⌉ (index arrays), in order:
    the same seed gives the same splits to every split-half estimate."""
    rng = np.random.default_rng(seed)
    for _ in range(max(1, n_splits)):
        perm = rng.permutation(r)
        yield perm[: r // 2], perm[r // 2:]


def rank_correlation(a: np.ndarray, b: np.ndarray) -> float | None:
    """Spearman correlation over the examples where both are finite; None with fewer than 3
    such examples or a constant side (undefined)."""
    ok = np.isfinite(a) & np.isfinite(b)
    if ok.sum() < 3 or np.ptp(a[ok]) == 0 or np.ptp(b[ok]) == 0:
        return None
    return float(stats.spearmanr(a[ok], b[ok])[0])


def split_half_reliability(in_lse, in_count, out_lse, out_count, seed: int = 0,
                           n_splits: int = 10) -> float:
    """Spearman correlation between M computed on two disjoint halves of the repeats.

    Each split draws a random (seeded) permutation of the R repeats and cuts it into halves of
    ⌊R/2⌋ and ⌈R/2⌉ repeats; M is computed from each half and the two are rank-correlated over
    the examples where both are finite. The result is the mean over `n_splits` such splits
    (different splits share repeats, so averaging lowers the dependence on one arbitrary cut
    rather than adding independent information). With R = 2 or 3 only one distinct split
    exists up to order and every draw gives it.

    This is the reliability of a score from R/2 repeats. The Spearman–Brown formula
    (`spearman_brown`) projects it to the full R repeats, assuming exchangeable repeats.
    Returns nan for R < 2 (no two disjoint non-empty halves) or fewer than 3 usable examples.
    """
    in_lse, in_count = _as_inputs(in_lse, in_count)
    out_lse, out_count = _as_inputs(out_lse, out_count)
    r = in_lse.shape[0]
    if r < 2:
        return float("nan")
    values = []
    for first, second in split_halves(r, seed, n_splits):
        w = np.zeros((2, r))
        w[0, first] = 1
        w[1, second] = 1
        _, _, m = score_from_repeats(in_lse, in_count, out_lse, out_count, weights=w)
        rho = rank_correlation(m[0], m[1])
        if rho is not None:
            values.append(rho)
    return float(np.mean(values)) if values else float("nan")


# ----------------------------------------------------------------------------------------------
# importance-sampling effective sample size


def ess_threshold(n_is, fraction: float = ESS_THRESHOLD_FRACTION,
                  minimum: float = ESS_THRESHOLD_MIN):
    """max(minimum, fraction · n_is): the ESS below which an estimate is flagged."""
    return np.maximum(minimum, fraction * np.asarray(n_is, dtype=np.float64))


def ess_flags(ess, n_is, fraction: float = ESS_THRESHOLD_FRACTION,
              minimum: float = ESS_THRESHOLD_MIN) -> np.ndarray:
    """Boolean mask: importance-sampling estimates whose ESS is low.

    Flagged: ESS < max(minimum, fraction · N) — by default max(5, 2 % of N), i.e. 5.12 at the
    paper's N = 256 and 5 at N = 128.

    Why: with Kish's ESS the delta-method standard deviation of log p̂ is about
    √(1/ESS − 1/N) nats, ≈ 0.45 at ESS = 5 — already a sizeable error for a single log p,
    and, worse, when the estimate rests on a handful of weights neither that error estimate
    nor the ESS itself can be trusted: the weight distribution is heavy-tailed and log p̂ is
    then typically biased low by an amount the samples cannot reveal. The absolute floor
    guards small N; the fraction holds larger sample budgets to the same relative standard
    (no more than ~1 in 50 samples effectively used), which scales with N as the importance
    distribution's mismatch with the posterior does. nan ESS (missing) is not flagged.
    `n_is` may be a scalar or an array broadcastable against `ess`.
    """
    ess = np.asarray(ess, dtype=np.float64)
    with np.errstate(invalid="ignore"):
        return ess < ess_threshold(n_is, fraction, minimum)


# Above this share of low-ESS examples (among all, or among the flagged) the summary suggests a
# larger n_is: one example in ten whose log p rests on a handful of effective samples, and the
# top of the ranking is where they gather (the importance distribution fits worst there).
LOW_ESS_HIGH_SHARE = 0.10


def low_ess_share(low_ess, ess_in, ess_out, among=None) -> tuple[int, int]:
    """(low, of): how many examples are low_ess among those with an ESS at all (exact
    likelihoods have none: nan, never low), optionally only among the `among` mask."""
    known = np.isfinite(np.asarray(ess_in, float)) | np.isfinite(np.asarray(ess_out, float))
    if among is not None:
        known = known & np.asarray(among, bool)
    return int((np.asarray(low_ess, bool) & known).sum()), int(known.sum())


def suggested_n_is(ess_in, ess_out, n_is: int, low_ess=None, cover: float = 0.9,
                   fraction: float = ESS_THRESHOLD_FRACTION,
                   minimum: float = ESS_THRESHOLD_MIN) -> tuple[int | None, int]:
    """(the n_is that would lift `cover` of the liftable low-ESS examples over the threshold,
    a power of two; how many low ones no n_is lifts), or (None, 0) when none is low.

    The ESS of a fixed importance distribution grows in proportion to the number of samples
    N, so an example at ESS e with N samples has about e·N'/N at N'. The threshold
    max(minimum, fraction·N') grows with N' too: an example whose ESS is under `fraction` of N
    (the distribution misses the posterior) stays low at any N, and only the floor can be
    cleared, at N' ≥ minimum·N/e. The suggestion covers the smaller e of in- and held-out."""
    ess = np.fmin(np.asarray(ess_in, float), np.asarray(ess_out, float))   # nan only if both
    low = ess_flags(ess, n_is, fraction, minimum) if low_ess is None else (
        np.asarray(low_ess, bool) & np.isfinite(ess))
    if not low.any():
        return None, 0
    e = ess[low]
    liftable = e >= fraction * n_is
    if not liftable.any():
        return None, int(low.sum())
    need = minimum * n_is / np.quantile(e[liftable], 1 - cover)
    return int(2 ** math.ceil(math.log2(max(need, n_is + 1)))), int((~liftable).sum())

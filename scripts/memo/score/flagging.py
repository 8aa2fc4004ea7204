"""Which examples to flag as memorized, and how far to trust the flags (docs/calibration.md).

The per-example test of our method compares an example's log p under the models that trained
on it with its log p under the model that held it out, repeat by repeat:

    d_r = mean of the K−1 in-values of repeat r − the out-value of repeat r
    s²  = the in-values' variance within a repeat, pooled over the L repeats (df L·(K−2))
    t   = mean_r d_r / sqrt(s² · (1 + 1/(K−1)) / L),   p = P(T_{L(K−2)} ≥ t)   (one-sided)

Under the null (training on x_i leaves its log p alone) the K models of a repeat are
exchangeable for x_i; if their values are normal given the repeat, t follows Student's t with
L·(K−2) degrees of freedom exactly: effects of a repeat cancel in d_r, and the in-values'
spread (which memorization does not widen) estimates the variance. Its smallest p-value is not
bounded by the K^L relabellings of the permutation test, so BH can flag at 11–21 models.

With L·(K−2) = 6 degrees of freedom (the demo) each example's s² is itself noisy; the default
test ("moderated-t") shrinks it towards a prior fitted on all examples' variances, the
empirical-Bayes moderated t of Smyth (2004, Stat. Appl. Genet. Mol. Biol. 3:3), which adds
the prior's d0 degrees of freedom. Normality (and the prior) are assumptions; the control
images (never trained on) measure whether the flag rate holds, and `control_report` says so
with an interval.

Also here (Benjamini–Hochberg itself is memo.score.calibration's): the share of examples
whose null is false (Storey's π₁ with a bootstrap interval), and the controls' flag rate with
its Clopper–Pearson interval and the FDR estimate it implies.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import special, stats

from memo.config import experiments

# the tests an experiment can choose (permutation: memo.score.calibration), and its default
TESTS = experiments.SUMMARY_TESTS
DEFAULT_TEST = experiments.summary_options(None)["test"]
STOREY_LAMBDA = 0.5


class FlaggingError(ValueError):
    """A design the test cannot be computed on."""


@dataclass(frozen=True)
class TTest:
    """The repeat-paired t-test of every example (or control image)."""
    t: np.ndarray            # (n,) statistic
    p: np.ndarray            # (n,) one-sided p-value: in-values above the held-out value
    df: float                # degrees of freedom of the reference t (prior_df added when moderated)
    prior_df: float          # d0 of the variances' prior (0: not moderated; inf: one variance)
    prior_var: float         # s0² of the variances' prior (nan: not moderated)

    @property
    def prior(self) -> tuple[float, float]:
        return self.prior_df, self.prior_var


def out_mask(shape: tuple, held_out) -> np.ndarray:
    """(R, K, n) bool: True where fold model k held example i out in repeat r."""
    mask = np.zeros(shape, dtype=bool)
    np.put_along_axis(mask, np.asarray(held_out)[:, None, :].astype(np.int64), True, axis=1)
    return mask


def _differences(values, held_out):
    """(d (R, n): mean in-value − out-value per repeat, s² (n,) and its df, the variance
    factor f with Var(mean_r d_r) = f·σ²)."""
    values = np.asarray(values, dtype=np.float64)
    R, K, n = values.shape
    if K < 2:
        raise FlaggingError(f"the t-test needs K >= 2 folds (got {K})")
    held = out_mask(values.shape, held_out)
    out = np.where(held, values, 0.0).sum(1)                            # (R, n)
    ins = np.where(held, np.nan, values)                                # (R, K, n)
    d = np.nanmean(ins, axis=1) - out                                   # (R, n)
    if K >= 3:   # the in-values' spread within each repeat, pooled over repeats
        return d, np.nanvar(ins, axis=1, ddof=1).mean(0), R * (K - 2), (1 + 1 / (K - 1)) / R
    if R < 2:
        raise FlaggingError("the t-test needs K >= 3 folds, or K = 2 with at least 2 repeats")
    return d, d.var(0, ddof=1), R - 1, 1 / R     # K = 2: the differences' spread over repeats


def variance_ratio(values, held_out) -> float:
    """A check of the test's variance model: the spread of d_r over repeats against what the
    in-values' spread predicts for it, s²·(1 + 1/(K−1)), each averaged over the examples. Both
    estimate Var(d_r) when the held-out value varies as an in-value does; a ratio well above 1
    means the test's standard errors are too small (training on x_i narrowing its in-values,
    say), which the control images, whose values are all held-out ones, cannot show. nan with
    one repeat or K = 2 (then the test uses the spread over repeats itself)."""
    values = np.asarray(values, dtype=np.float64)
    R, K, _ = values.shape
    if R < 2 or K < 3:
        return float("nan")
    d, s2, _, factor = _differences(values, held_out)
    return float(d.var(0, ddof=1).mean() / (s2.mean() * factor * R))


def _trigamma_inverse(y: float) -> float:
    """x with trigamma(x) = y (y > 0), by Smyth's (2004) Newton iteration."""
    x = 0.5 + 1 / y
    for _ in range(100):
        tri = special.polygamma(1, x)
        step = tri * (1 - tri / y) / special.polygamma(2, x)
        x += step
        if -step / x < 1e-10:
            break
    return float(x)


def fit_prior(s2: np.ndarray, df: float) -> tuple[float, float]:
    """(d0, s0²) of the scaled inverse-χ² prior of the examples' variances, by Smyth's (2004)
    moments of log s²: the spread of log s² beyond what df alone gives sets d0 (inf when there
    is none: one variance for all)."""
    s2 = np.asarray(s2, dtype=np.float64)
    s2 = s2[np.isfinite(s2) & (s2 > 0)]
    if s2.size < 3:
        raise FlaggingError(f"the moderated t-test needs at least 3 examples with a spread "
                            f"(got {s2.size}); use --test t")
    e = np.log(s2) - special.digamma(df / 2) + np.log(df / 2)
    excess = e.var(ddof=1) - special.polygamma(1, df / 2)
    if excess <= 0:
        return float("inf"), float(np.exp(e.mean()))
    d0 = 2 * _trigamma_inverse(excess)
    return d0, float(np.exp(e.mean() + special.digamma(d0 / 2) - np.log(d0 / 2)))


def t_test(values, held_out, moderate: bool = True,
           prior: tuple[float, float] | None = None) -> TTest:
    """The repeat-paired t-test of every example: values (R, K, n) every fold model's log p,
    held_out (R, n) the fold that held each example out.

    moderate: each example's variance is shrunk towards the prior fitted on all of them (or
    the `prior` given: the training examples' prior for the control images), with d0 more
    degrees of freedom (Smyth 2004)."""
    d, s2, df, factor = _differences(values, held_out)
    if moderate:
        d0, s0 = fit_prior(s2, df) if prior is None else prior
        var = np.full_like(s2, s0) if np.isinf(d0) else (d0 * s0 + df * s2) / (d0 + df)
        ref_df = float(df + d0)
    else:
        d0, s0, var, ref_df = 0.0, float("nan"), s2, float(df)
    se = np.sqrt(var * factor)
    with np.errstate(divide="ignore", invalid="ignore"):
        t = np.where(se > 0, d.mean(0) / se, 0.0)   # no spread at all: no evidence either way
    return TTest(t, stats.t.sf(t, ref_df), ref_df, float(d0), float(s0))


def p_values(test: str, values, held_out, prior=None) -> TTest:
    """The flagging test's p-values (TTest) of one of the t-tests in TESTS."""
    if test not in ("moderated-t", "t"):
        raise FlaggingError(f"{test!r} is not a t-test")
    return t_test(values, held_out, moderate=test == "moderated-t", prior=prior)


def threshold(flagged: int, q: float, n: int) -> float:
    """Where the controls are counted: BH's boundary q·k/n for the k examples flagged (q/n,
    the first boundary, when none is). Counting them at the largest flagged p-value instead,
    which lies below the boundary and is chosen by the data, would understate the false
    discovery rate when few examples are flagged."""
    return q * max(int(flagged), 1) / n


def storey_pi1(p: np.ndarray, lam: float = STOREY_LAMBDA) -> float:
    """Storey's estimate of the share of examples whose null is false: 1 − #{p > λ}/(n(1 − λ)),
    clipped to [0, 1]."""
    p = np.asarray(p, dtype=float)
    p = p[np.isfinite(p)]
    if p.size == 0:
        return float("nan")
    pi0 = np.mean(p > lam) / (1 - lam)
    return float(np.clip(1 - pi0, 0.0, 1.0))


def storey_interval(p: np.ndarray, n_boot: int = 1000, seed: int = 0,
                    lam: float = STOREY_LAMBDA) -> tuple[float, float]:
    """95 % percentile bootstrap interval of storey_pi1 over examples (they are treated as
    independent; p-values of examples held out by one model are not quite)."""
    p = np.asarray(p, dtype=float)
    p = p[np.isfinite(p)]
    if p.size == 0 or n_boot < 2:
        return float("nan"), float("nan")
    rng = np.random.default_rng([seed, 31])
    over = (p > lam).astype(np.float64)
    # the statistic depends on the count over λ alone: resample that count
    counts = rng.binomial(p.size, over.mean(), size=n_boot)
    pi1 = np.clip(1 - counts / (p.size * (1 - lam)), 0.0, 1.0)
    lo, hi = np.quantile(pi1, [0.025, 0.975])
    return float(lo), float(hi)


def clopper_pearson(k: int, n: int, level: float = 0.95) -> tuple[float, float]:
    """Exact (Clopper–Pearson, 1934) two-sided interval for a binomial share k/n at `level`:
    the α/2 quantile of Beta(k, n − k + 1) and the 1 − α/2 quantile of Beta(k + 1, n − k),
    0 at k = 0 and 1 at k = n. n = 0 gives (0, 1)."""
    if not 0 <= k <= n:
        raise ValueError(f"need 0 <= k <= n; got k={k}, n={n}")
    alpha = 1.0 - level
    lo = 0.0 if k == 0 else float(stats.beta.ppf(alpha / 2, k, n - k + 1))
    hi = 1.0 if k == n else float(stats.beta.ppf(1 - alpha / 2, k + 1, n - k))
    return lo, hi


def control_report(control_p: np.ndarray, at: float, n: int, flagged: int) -> dict:
    """The controls at the flagging threshold `at`: how many are flagged, the share with its
    95 % interval, and the FDR estimate it implies for the n training examples,
    n · share / flagged (nan with nothing flagged), capped at 1."""
    control_p = np.asarray(control_p, dtype=float)
    C = int(control_p.size)
    k = int((control_p <= at).sum())
    rate = k / C if C else float("nan")
    lo, hi = clopper_pearson(k, C)
    fdr = min(1.0, n * rate / flagged) if flagged and C else float("nan")
    fdr_hi = min(1.0, n * hi / flagged) if flagged and C else float("nan")
    return {"n": C, "flagged": k, "rate": rate, "rate_ci": [lo, hi], "threshold": at,
            "fdr_estimate": fdr, "fdr_upper": fdr_hi}

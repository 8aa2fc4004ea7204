"""Figure 7 (not in the paper): how certain the scores are.

(a) final-epoch M against the width of its bootstrap 95 % interval over repeats (or its
standard error when only that is known; needs L >= 2 repeats); (b) histogram of the mean
importance-sampling effective sample size per example, in-fold and held-out models (needs
ESS in the summary). Panels without data are left out.
"""
from __future__ import annotations

import numpy as np
from matplotlib.figure import Figure

from memo.score import uncertainty

from .common import (COLORS, HIGH_Q, TEXTWIDTH, Result, edges_for, finite,
                     highly_memorized, num, pct, placeholder, short, tex_escape)


def ess_threshold(meta: dict) -> float | None:
    """meta's "ess_threshold", else the flagging rule of memo/score/uncertainty.py for meta's N."""
    if meta.get("ess_threshold") is not None:
        return float(meta["ess_threshold"])
    if not meta.get("n_is"):
        return None
    fraction = meta.get("ess_threshold_fraction", uncertainty.ESS_THRESHOLD_FRACTION)
    return float(uncertainty.ess_threshold(meta["n_is"], fraction))


def ess_summary(s) -> dict:
    """Median ESS and the share of examples below the ESS threshold (in, out)."""
    thr = ess_threshold(s.meta)
    out = {"threshold": thr}
    for key, v in (("in", s.ess_in), ("out", s.ess_out)):
        v = finite(v)
        out[f"median_{key}"] = float(np.median(v)) if v.size else np.nan
        out[f"below_{key}"] = float((v < thr).mean()) if v.size and thr is not None else np.nan
    return out


def spread(s) -> tuple[str, np.ndarray] | None:
    """('interval', 95 % interval width) or ('se', standard error) of final M, or None."""
    if s.repeats >= 2:
        width = s.M_ci_high - s.M_ci_low
        if np.isfinite(width).any():
            return "interval", width
        if np.isfinite(s.M_se).any():
            return "se", s.M_se
    return None


def figure(M, sp, ess_in, ess_out, threshold, n_is) -> Figure:
    panels = (sp is not None) + (ess_in is not None)
    fig = Figure(figsize=(TEXTWIDTH if panels == 2 else 3.6, 2.5), layout="constrained")
    axes = list(np.atleast_1d(fig.subplots(1, panels)))
    letter = iter("ab")
    if sp is not None:
        kind, y = sp
        ax = axes.pop(0)
        ok = np.isfinite(M) & np.isfinite(y)
        mem, thr = highly_memorized(np.where(ok, M, np.nan), HIGH_Q)
        ax.scatter(M[ok & ~mem], y[ok & ~mem], s=1.5, lw=0, alpha=0.5, color=COLORS["regular"],
                   rasterized=True, label="regular")
        ax.scatter(M[mem], y[mem], s=1.5, lw=0, alpha=0.8, color=COLORS["memorized"],
                   rasterized=True, label=r"top $5\%$ by $M$")
        yy = y[ok & (y > 0)]
        if yy.size and yy.max() / yy.min() > 100:
            ax.set_yscale("log")
        ax.set_xlabel("memorization score $M$ (final epoch)")
        ax.set_ylabel(r"width of the $95\%$ interval" if kind == "interval"
                      else "standard error of $M$")
        ax.set_title(f"({next(letter)}) bootstrap over repeats", loc="left")
        ax.legend(markerscale=4)
    if ess_in is not None:
        ax = axes.pop(0)
        both = np.concatenate([finite(ess_in), finite(ess_out)])
        edges = edges_for(np.append(both, [0.0] + ([n_is] if n_is else [])), 40)
        for label, v, color in (("in-fold models", ess_in, COLORS["regular"]),
                                ("held-out models", ess_out, COLORS["memorized"])):
            v = finite(v)
            if v.size:
                ax.stairs(np.histogram(v, edges)[0], edges, color=color, lw=0.9, label=label)
        if threshold is not None:
            ax.axvline(threshold, color="k", ls="--", lw=0.6,
                       label=f"threshold ({short(threshold)})")
        ax.set_xlabel("mean effective sample size per example")
        ax.set_ylabel("number of examples")
        ax.set_title(f"({next(letter)}) importance sampling", loc="left")
        ax.legend()
    return fig


def caption(s, sp, ess) -> str:
    M = s.M_final
    text = f"Uncertainty of the memorization scores of {tex_escape(s.name)}. "
    letter = iter("ab")
    if sp is not None:
        kind, y = sp
        ok = np.isfinite(M) & np.isfinite(y)
        mem, thr = highly_memorized(np.where(ok, M, np.nan), HIGH_Q)
        text += (f"({next(letter)}) Final-epoch $M_i$ against the "
                 + ("width of its bootstrap 95\\,\\% interval" if kind == "interval" else
                    "bootstrap standard error of $M_i$")
                 + f" over the $L = {s.repeats}$ repeats (median {num(np.median(y[ok]))}). ")
        if kind == "interval":
            sure = np.mean(s.M_ci_low[mem] > thr) if mem.any() else np.nan
            text += (f"For {pct(sure)} of the observations in the top 5\\,\\% by $M$ the whole "
                     "interval "
                     f"lies above the 95th percentile ({num(thr)}). ")
        text += interval_text(s) + reliability_text(s)
    if ess is not None:
        text += (f"({next(letter)}) Mean effective sample size of the importance-sampling "
                 f"estimate of $\\log p(x_i)$ ($N = {s.meta.get('n_is', '?')}$ samples); medians "
                 f"{num(ess['median_in'])} (in-fold models) and {num(ess['median_out'])} "
                 "(held-out models)")
        if ess["threshold"] is not None:
            text += (f"; below the threshold of {num(ess['threshold'])}: {pct(ess['below_in'])} "
                     f"and {pct(ess['below_out'])}")
        text += ". "
    return text.strip()


def covers(s) -> str:
    """What a bootstrap interval over repeats covers, for this summary's method."""
    fixed = (s.meta.get("method") or {}).get("eval_noise") == "fixed"
    return ("These intervals give the spread over repeats: how much the score would move if "
            "the $L$ repeats were drawn again (new random partitions into folds, new training "
            "runs, new importance samples), for this data set; not the choice of the data set"
            + (", nor the evaluation noise (binarization or dequantization), which is the same "
               "for every model here" if fixed else "") + ". ")


def interval_text(s) -> str:
    """The M_corrected interval: how it was made and what it covers."""
    how = (s.calibration or {}).get("interval")
    if not s.calibrated or how in (None, "none"):
        return covers(s)
    text = ("The summary also holds a 95\\,\\% interval of the calibrated score "
            "$M_{\\mathrm{corrected}}$: ")
    if how == "recomputed":
        text += ("its null mean was recomputed from all labellings in every bootstrap "
                 "replicate, so the interval includes how the bias estimate varies. ")
    else:
        text += ("the interval of $M$ shifted by the null mean of all repeats (recomputing the "
                 "null in every replicate was too costly), so it leaves out how the bias "
                 "estimate itself varies over repeats. ")
    ok = np.isfinite(s.M_corrected_ci_low)
    if s.memorized.any() and ok.any():
        text += (f"For {pct(float(np.mean(s.M_corrected_ci_low[s.memorized & ok] > 0)))} of the "
                 "flagged observations the interval lies above 0. ")
    return text + covers(s)


def reliability_text(s) -> str:
    """Split-half correlation and its Spearman–Brown projection, each named for what it is."""
    if not np.isfinite(s.split_half):
        return ""
    L = s.repeats
    h = s.meta.get("split_half_repeats") or [L // 2, L - L // 2]
    text = (f"Reliability of $M$: Spearman correlation of the scores from two halves of the "
            f"repeats ({h[0]} and {h[1]} repeats) {num(s.split_half, 2)}, the reliability of a "
            f"score from half the repeats; its Spearman--Brown projection to all $L = {L}$ repeats, "
            f"the reliability of the score reported, {num(s.reliability, 2)}. ")
    if np.isfinite(s.split_half_corrected):
        text += (f"For $M_{{\\mathrm{{corrected}}}}$: {num(s.split_half_corrected, 2)} and "
                 f"{num(s.reliability_corrected, 2)}. ")
    return text


def make(summaries, **_) -> Result:
    s = summaries[0]
    title = "Uncertainty of M"
    sp = spread(s)
    have_ess = np.isfinite(s.ess_in).any() or np.isfinite(s.ess_out).any()
    if sp is None and not have_ess:
        return placeholder(title, "one repeat and no effective sample sizes")
    ess = ess_summary(s) if have_ess else None
    fig = figure(s.M_final, sp, s.ess_in if have_ess else None, s.ess_out,
                 ess["threshold"] if ess else None, s.meta.get("n_is"))
    return Result(fig, caption(s, sp, ess), title)

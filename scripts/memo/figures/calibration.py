"""Figure 0 (not in the paper): the calibrated memorization score (memo/score/calibration.py).

(a) final-epoch M against M_corrected = M − the mean of M under the permutation null (the
estimator's bias for that example), flagged examples marked; (b) histogram of the permutation
p-values, which is flat where nothing is memorized. Needs a calibrated summary.
"""
from __future__ import annotations

import numpy as np
from matplotlib.figure import Figure

from .common import (COLORS, TEST_NAMES, TEXTWIDTH, Result, count, finite, flag_info,
                     flag_label,
                     flag_text, num, pct, placeholder, tex_escape)

UNIFORM_BINS = 20


def per_value_bins(info: dict) -> bool:
    """Whether the histogram has one bin per attainable p-value (an exact null with few)."""
    return info["test"] == "permutation" and bool(info["exact"]) and info["labellings"] <= 50


def p_edges(info: dict) -> np.ndarray:
    """Bins of the p-value histogram: one per attainable value when an exact null has few
    (p = j/K^L, density 1 per bin under the null), else UNIFORM_BINS over [0, 1]."""
    if per_value_bins(info):
        total = info["labellings"]
        return (np.arange(total + 1) + 0.5) / total
    return np.linspace(0, 1, UNIFORM_BINS + 1)


def figure(M, Mc, p, info, control_p=None) -> Figure:
    fig = Figure(figsize=(TEXTWIDTH, 2.5), layout="constrained")
    ax_a, ax_b = fig.subplots(1, 2)
    mem = info["mask"]
    ok = np.isfinite(M) & np.isfinite(Mc)
    ax_a.scatter(M[ok & ~mem], Mc[ok & ~mem], s=1.5, lw=0, alpha=0.5, color=COLORS["regular"],
                 rasterized=True, label="not flagged")
    if (ok & mem).any():
        ax_a.scatter(M[ok & mem], Mc[ok & mem], s=2, lw=0, alpha=0.9,
                     color=COLORS["memorized"], rasterized=True, label=flag_label(info))
    lo, hi = np.nanmin(M[ok]), np.nanmax(M[ok])
    ax_a.plot([lo, hi], [lo, hi], color="k", ls="--", lw=0.6, label="no correction")
    ax_a.axhline(0, color=COLORS["line"], lw=0.5)
    ax_a.set_xlabel("memorization score $M$ (final epoch)")
    ax_a.set_ylabel(r"$M_{\mathrm{corrected}} = M - $ null mean")
    ax_a.set_title("(a) score and calibrated score", loc="left")
    ax_a.legend(markerscale=4)

    edges = p_edges(info)
    pp = finite(p)
    dens = np.histogram(pp, edges)[0] / (max(pp.size, 1) * np.diff(edges))
    ax_b.stairs(dens, edges, fill=True, color=COLORS["regular"], alpha=0.35, lw=0)
    ax_b.stairs(dens, edges, color=COLORS["regular"], lw=0.8)
    top = dens.max() if dens.size else 1.0
    if control_p is not None and len(control_p):
        cp = finite(control_p)
        cdens = np.histogram(cp, edges)[0] / (max(cp.size, 1) * np.diff(edges))
        ax_b.stairs(cdens, edges, color=COLORS["memorized"], lw=0.8, ls=":",
                    label="control images (never trained on)")
        top = max(top, cdens.max())
    ax_b.axhline(1, color="k", ls="--", lw=0.6, label="uniform (nothing memorized)")
    ax_b.set_xlim(0, edges[-1])
    ax_b.set_ylim(0, max(1.2, 1.1 * top))
    ax_b.set_xlabel("permutation p-value" if info["test"] == "permutation" else
                    "p-value ($t$-test)")
    ax_b.set_ylabel("density")
    ax_b.set_title("(b) p-values", loc="left")
    ax_b.legend()
    return fig


def caption(s, info) -> str:
    M, Mc, p = s.M_final, s.M_corrected, s.p_value
    K, L = s.meta.get("folds", "K"), s.repeats
    how = (f"all $K^L = {count(info['labellings'])}$ labellings enumerated" if info["exact"]
           else f"$B = {count(info['labellings'])}$ labellings drawn at random per observation")
    low = float(np.mean(p <= 0.05))
    text = (f"Calibrated memorization scores of {tex_escape(s.name)} ($K = {K}$ folds, "
            f"$L = {L}$ repeats). If training on $x_i$ does not change the model's "
            "$\\log p(x_i)$, the model that held $x_i$ out is, within each repeat, exchangeable "
            "with the $K-1$ that trained on it; recomputing $M_i$ with every choice of held-out "
            f"model per repeat ({how}) gives the null distribution of $M_i$. "
            "(a) $M_i$ against $M_i$ minus the mean of that null, the estimator's bias for $x_i$ "
            f"(median bias {num(np.nanmedian(s.null_mean))} nats; median $M$ "
            f"{num(np.nanmedian(M))}, median corrected score {num(np.nanmedian(Mc))}; "
            f"{pct(float(np.mean(Mc[np.isfinite(Mc)] > 0)))} above 0). "
            f"(b) Histogram of the p-values of the flagging test ({TEST_NAMES[info['test']]}) "
            + ("(one bin per attainable value $j/K^L$) " if per_value_bins(info) else "")
            + ("and of the control images' (dotted) " if s.n_controls else "")
            + f"with the uniform density expected where nothing is memorized; "
            f"{pct(low)} have $p \\leq 0.05$. " + flag_text(s))
    text += ("Memorization is what the test detects, and anything else that differs "
             "systematically between the held-out model and the others for $x_i$ (values "
             "computed differently for in- and held-out examples) would be taken for it; "
             "effects of one model on all examples are permuted with it and do not matter.")
    return text


def make(summaries, **_) -> Result:
    s = summaries[0]
    title = "Calibrated memorization scores"
    info = flag_info(s)
    if info is None:
        return placeholder(title, "the summary was made without calibration")
    fig = figure(s.M_final, s.M_corrected, s.p_value, info, s.control_p_value)
    return Result(fig, caption(s, info), title,
                  info={"flagged": info["count"], "can_flag": info["can_flag"],
                        "min_p": info["min_p"]})

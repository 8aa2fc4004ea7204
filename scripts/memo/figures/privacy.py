"""Figure (not in the paper): memorization under differentially private training (`make dp`).

One experiment per privacy budget, the same data, folds and evaluation (docs/privacy.md):
(a) quantiles of M and the median of M_corrected against ε; (b) the full model's test loss
and the mean held-out log p (V) against ε: what privacy costs the model; (c) on the planted
benchmark (memo/data/planted.py), the AUROC of M for the planted singletons against ε.
"""
from __future__ import annotations

import numpy as np
from matplotlib.figure import Figure

from memo.measures import measures
from memo.data import planted
from memo.score import privacy

from .common import SERIES_COLORS, TEXTWIDTH, Result, finite, num, placeholder, tex_escape, warn


def epsilon(s) -> float:
    """The target ε of a summary's experiment (inf: not private)."""
    p = s.meta.get("privacy") or {}
    return float(p.get("epsilon", np.inf)) if p else np.inf


def spent(s) -> float:
    p = s.meta.get("privacy") or {}
    return float(p.get("epsilon_spent", np.nan)) if p else np.nan


def roles(s) -> np.ndarray | None:
    """The planted roles of the summary's examples, or None (not the planted set, or no data)."""
    if s.meta.get("data") != "planted":
        return None
    from memo import data   # imports torch: only here
    try:
        return data.planted_layout().role[s.index]
    except data.DataMissingError as e:
        warn(f"no planted roles for {s.name} ({str(e).splitlines()[0]}); AUROC left out")
        return None


def rows(summaries) -> list[dict]:
    out = []
    for s in sorted(summaries, key=epsilon, reverse=True):
        m, mc = finite(s.M_final), finite(s.M_corrected)
        q = np.quantile(m, [0.5, 0.95, 0.999]) if m.size else [np.nan] * 3
        p = s.meta.get("privacy") or {}
        role = roles(s)
        a = (np.nan,) * 3 if role is None else measures.singleton_auroc(s.M_final, role)
        bound = privacy.summary_bound(s) if p else None
        ok = None if bound is None else np.isfinite(bound) & np.isfinite(s.M_final)
        out.append({"name": s.name, "epsilon": epsilon(s), "spent": spent(s),
                    "sigma": float(p.get("noise_multiplier", np.nan)) if p else np.nan,
                    "median": q[0], "q95": q[1], "q999": q[2],
                    "median_corrected": float(np.median(mc)) if mc.size else np.nan,
                    "q95_corrected": float(np.quantile(mc, 0.95)) if mc.size else np.nan,
                    "test_loss": (float(s.full_losses_test[-1]) if s.full_losses_test.size
                                  else np.nan),
                    "heldout_logp": float(np.nanmean(s.V[-1])),
                    "auroc": a[0], "auroc_low": a[1], "auroc_high": a[2],
                    # the Rényi-DP bound on each example's M (memo/score/privacy.py)
                    "bound_median": (np.nan if not (ok is not None and ok.any())
                                     else float(np.median(bound[ok]))),
                    "above_bound": (np.nan if not (ok is not None and ok.any())
                                    else float(np.mean(s.M_final[ok] > bound[ok])))})
    return out


def label(eps: float) -> str:
    return "none" if not np.isfinite(eps) else f"{eps:g}"


def figure(rs: list[dict]) -> Figure:
    fig = Figure(figsize=(TEXTWIDTH, 2.2), layout="constrained")
    axes = fig.subplots(1, 3)
    x = np.arange(len(rs))
    ticks = [label(r["epsilon"]) for r in rs]
    ax = axes[0]
    for key, name, color in (("median", "median", SERIES_COLORS[0]),
                             ("q95", "0.95-quantile", SERIES_COLORS[1]),
                             ("q999", "0.999-quantile", SERIES_COLORS[2]),
                             ("median_corrected", "median $M_{\\mathrm{corrected}}$",
                              SERIES_COLORS[3]),
                             ("q95_corrected", "0.95-quantile of $M_{\\mathrm{corrected}}$",
                              SERIES_COLORS[4])):
        ax.plot(x, [r[key] for r in rs], marker="o", ms=3, color=color, label=name,
                ls="--" if "corrected" in key else "-")
    bounds = np.array([r["bound_median"] for r in rs])
    if np.isfinite(bounds).any():
        ax.plot(x, bounds, marker="v", ms=3, color="k", ls=":",
                label="median bound on $M$ (R\\'enyi DP)")
    ax.set_ylabel("$M$ (nats)")
    ax.set_title("(a) memorization score", loc="left")
    ax.legend(fontsize=5)
    ax = axes[1]
    ax.plot(x, [r["test_loss"] for r in rs], marker="o", ms=3, color=SERIES_COLORS[0],
            label="full model's test loss")
    ax.plot(x, [-r["heldout_logp"] for r in rs], marker="s", ms=3, color=SERIES_COLORS[1],
            ls="--", label="$-$mean held-out $\\log p$")
    ax.set_ylabel("nats")
    ax.set_title("(b) cost to the model", loc="left")
    ax.legend(fontsize=5)
    ax = axes[2]
    a = np.array([r["auroc"] for r in rs])
    if np.isfinite(a).any():
        lo = np.array([r["auroc_low"] for r in rs])
        hi = np.array([r["auroc_high"] for r in rs])
        ax.errorbar(x, a, yerr=[a - lo, hi - a], marker="o", ms=3, capsize=2,
                    color=SERIES_COLORS[0])
        ax.axhline(0.5, color="k", lw=0.5, ls=":")
        ax.set_ylim(0, 1)
        ax.set_ylabel("AUROC of $M$, singletons")
    else:
        ax.text(0.5, 0.5, "no planted examples", ha="center", va="center",
                transform=ax.transAxes)
    ax.set_title("(c) planted singletons", loc="left")
    for ax in axes:
        ax.set_xticks(x, ticks)
        ax.set_xlabel("target $\\varepsilon$")
    return fig


def table(rs: list[dict]) -> dict:
    def c(v, digits=3):
        return num(v, digits) if np.isfinite(v) else "--"
    head = ["target $\\varepsilon$", "spent", "$\\sigma$", "median $M$", "95\\,\\%", "99.9\\,\\%",
            "$M_{\\mathrm{corr}}$ median", "95\\,\\%", "bound median", "$M >$ bound",
            "test loss", "held-out $\\log p$", "AUROC"]
    body = [[label(r["epsilon"]), c(r["spent"]), c(r["sigma"]), c(r["median"]), c(r["q95"]),
             c(r["q999"]), c(r["median_corrected"]), c(r["q95_corrected"]),
             c(r["bound_median"]),
             "--" if not np.isfinite(r["above_bound"]) else f"{100 * r['above_bound']:.1f}\\,\\%",
             c(r["test_loss"], 4),
             c(r["heldout_logp"], 4),
             "--" if not np.isfinite(r["auroc"]) else
             f"{num(r['auroc'], 2)} ({num(r['auroc_low'], 2)}--{num(r['auroc_high'], 2)})"]
            for r in rs]
    return {"columns": head, "rows": body}


def caption(rs: list[dict]) -> str:
    names = ", ".join(tex_escape(r["name"]) for r in rs)
    text = ("Memorization under differentially private training (DP-SGD, Poisson sampling, "
            "RDP accountant; docs/privacy.md): one experiment per target $\\varepsilon$ "
            f"({names}), each with the same data, folds and evaluation, every model trained "
            "privately. (a) Quantiles of $M$ and the median of $M_{\\mathrm{corrected}}$ at the "
            "last epoch (dashed: the calibrated score, which removes the estimator's bias; that bias "
            "grows with the spread of the fold models' values, which the noise of private "
            "training widens); (b) the full model's test loss and the mean held-out $\\log p$ "
            "($V$): what privacy costs the model; (c) the AUROC of $M$ for the planted "
            "singletons against regular examples, with 95\\,\\% bootstrap intervals. ")
    priv = [r for r in rs if np.isfinite(r["epsilon"])]
    if priv:
        text += ("$\\varepsilon$ spent by the accountant: " + "; ".join(
            f"target {label(r['epsilon'])}: {num(r['spent'])} ($\\sigma = {num(r['sigma'])}$)"
            for r in priv) + ". ")
    text += ("$M$'s in- and out-terms average over training sets that differ from each other "
             "by one substitution, so the fold models' R\\'enyi-DP curve bounds it, whatever "
             "$\\delta$ (docs/privacy.md): the dotted line is the median over examples of that "
             "bound, computed per example from its out-values (a plug-in estimate: with few "
             "repeats it sees little of their spread); ``$M >$ bound'' is the share of examples "
             "whose estimate exceeds it, which only the noise of the estimate allows.")
    return text


def make(summaries, **_) -> Result:
    title = "Memorization against the privacy budget"
    if not any(s.meta.get("privacy") for s in summaries):
        return placeholder(title, "no summary of a private experiment")
    rs = rows(summaries)
    return Result(figure(rs), caption(rs), title, info={"table": table(rs), "rows": rs})

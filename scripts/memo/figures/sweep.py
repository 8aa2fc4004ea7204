"""Figure (not in the paper): the training-set size sweep (scripts/sweep.py), drawn from its file
(memo/files/sweep.py).

(a) The ratio d1/d2 of the distances from the full model's samples to their nearest and
second-nearest training images (median and 1 % quantile): the 1/3 rule of the
diffusion-memorization work calls a sample a copy below 1/3, and the share of copies (in the
caption) is its memorization ratio; the same for held-out real images, which cannot be copies.
(b) The full model's final training and test loss: the generalization gap.
"""
from __future__ import annotations

import numpy as np
from matplotlib.figure import Figure

from .common import SERIES_COLORS, TEXTWIDTH, Result, count, num, placeholder


def figure(sw: dict) -> Figure:
    have_m = bool(np.isfinite(sw["M_median"]).any())
    fig = Figure(figsize=(TEXTWIDTH, 2.3), layout="constrained")
    axes = fig.subplots(1, 3 if have_m else 2)
    ax_a, ax_b = axes[:2]
    n = sw["n"]
    for key, name, color, style in (("", "model samples", SERIES_COLORS[0], "-"),
                                    ("control_", "held-out real images", SERIES_COLORS[1], "--")):
        ax_a.plot(n, sw[f"{key}median_ratio"], color=color, ls=style, marker="o", ms=3,
                  label=f"{name}, median")
        ax_a.plot(n, sw[f"{key}low_ratio"], color=color, ls=style, marker="v", ms=3, lw=0.6,
                  label=f"{name}, 1st percentile")
    ax_a.axhline(1 / 3, color="k", lw=0.6, ls=":", label="copy below 1/3")
    ax_a.set_ylim(0, 1)
    ax_a.set_xlabel("training images $n$")
    ax_a.set_ylabel("$d_1 / d_2$")
    ax_a.set_title("(a) $d_1/d_2$ of samples", loc="left")
    ax_a.legend(fontsize=5)
    ax_b.plot(n, sw["train_loss"], marker="o", ms=3, color=SERIES_COLORS[0], label="training")
    ax_b.plot(n, sw["test_loss"], marker="o", ms=3, color=SERIES_COLORS[1], ls="--",
              label="test")
    if have_m:
        ax_c = axes[2]
        for key, label, color, style in (("M_median", "median $M$", SERIES_COLORS[0], "-"),
                                         ("M_q95", "0.95-quantile", SERIES_COLORS[1], "-"),
                                         ("M_top", "mean of top 10", SERIES_COLORS[2], "-"),
                                         ("Mc_median", "median $M_{\\mathrm{corrected}}$",
                                          SERIES_COLORS[3], "--")):
            ax_c.plot(n, sw[key], marker="o", ms=3, color=color, ls=style, label=label)
        ax_c.set_xlabel("training images $n$")
        ax_c.set_ylabel("$M$ (nats)")
        ax_c.set_title("(c) memorization score", loc="left")
        ax_c.legend(fontsize=5)
    for ax in axes:   # one tick per size, plain numbers
        ax.set_xscale("log")
        ax.set_xticks(n, [f"{int(k) // 1000}k" if k >= 1000 else str(int(k)) for k in n])
        ax.minorticks_off()
    ax_b.set_xlabel("training images $n$")
    ax_b.set_ylabel("negative ELBO (nats)")
    ax_b.set_title("(b) full model's losses", loc="left")
    ax_b.legend()
    return fig


def _snapshots(sw: dict) -> str:
    """The highest copy rate over the full model's snapshots, as Gu et al. report it."""
    if not np.isfinite(sw["ratio_max"]).any():
        return ""
    kept = sorted({int(k) for k in sw["snapshots"] if np.isfinite(k)})
    return ("Highest share over the full model's snapshots ("
            + "/".join(map(str, kept)) + " per size): " + ", ".join(
                f"{num(100 * r, 2)}\\,\\%" for r in sw["ratio_max"]) + ". ")


def caption(sw: dict) -> str:
    n = sw["n"].astype(int)
    parts = [f"$n = {count(int(k))}$: {num(100 * r, 2)}\\,\\% ({num(100 * lo, 2)}--"
             f"{num(100 * hi, 2)})" for k, r, lo, hi in zip(n, sw["ratio"], sw["low"], sw["high"])]
    text = ("Training-set size sweep on nested subsets of Fashion-MNIST (the first $n$ "
            "images), one model trained on each for about the same number of steps, so the "
            "smaller sets for more epochs "
            f"({', '.join(str(int(e)) for e in sw['epochs'])}): size and passes over the data "
            "change together, and every difference between sizes may come from either. "
            f"(a) The ratio $d_1/d_2$ of the distances from each of "
            f"{count(int(sw['meta']['samples']))} samples (decoder means of "
            "$z \\sim \\mathcal{N}(0, I)$) to its nearest and second-nearest distinct training "
            "image, median and 1\\,\\% quantile; below $1/3$ a sample is a copy. Share of "
            "copies with 95\\,\\% Clopper--Pearson intervals: " + "; ".join(parts) + ". "
            + _snapshots(sw) + "The "
            "dashed lines apply the same rule to held-out real images, which cannot be copies. "
            "(b) Final training and test loss of each model. ")
    if np.isfinite(sw["M_median"]).any():
        k = int(sw["meta"].get("top_k", 10))
        text += ("(c) Quantiles of $M$ and the median of $M_{\\mathrm{corrected}}$ at the last "
                 "epoch, from the $K$-fold models of each size: median " + ", ".join(
                     f"{num(v, 2)}" for v in sw["M_median"]) + f"; mean of the {k} largest "
                 "(a tail of the same count at every size) " + ", ".join(
                     f"{num(v, 3)}" for v in sw["M_top"]) + " nats. ")
    if float(np.max(sw["ratio"])) <= float(np.max(sw["control_high"])):
        text += ("At no size does the copy rate exceed the held-out images' rate: these VAEs' "
                 "decoder means are too smooth to reproduce a training image closely, so "
                 "sample copying does not see the memorization that $M$ measures.")
    return text


def make(summaries, *, sweep=None, **_) -> Result:
    title = "Training-set size sweep"
    if sweep is None:
        return placeholder(title, "no sweep file")
    return Result(figure(sweep), caption(sweep), title,
                  info={"sizes": sweep["n"].astype(int).tolist(), "ratio": sweep["ratio"].tolist()})

"""Figure 6 (main Fig. 5, supplement Figs 12-13): the nearest-neighbour distance ratio
rho_i = d(x_i, nearest validation/test image) / d(x_i, nearest model sample) against M.

(a) mean rho +- 1.96 SE per bin of M (width: a round number giving about 25 bins over the
1st-99th percentile of M; the paper used 2 for MNIST); bins with fewer than two observations
have no standard error and are left out. (b) histograms of rho, the top 5 % by M vs regular.
"""
from __future__ import annotations

import numpy as np
from matplotlib.figure import Figure
from scipy import stats

from .common import (COLORS, HIGH_Q, TEXTWIDTH, Result, count, edges_for, finite, flag_info,
                     flag_label, flag_text, highly_memorized, nice_step, num, placeholder,
                     tex_escape)

TARGET_BINS = 25
MIN_COUNT = 2


def bin_width(M: np.ndarray, target: int = TARGET_BINS) -> float:
    lo, hi = np.quantile(finite(M), [0.01, 0.99])
    return nice_step((hi - lo) / target)


def binned_means(M: np.ndarray, rho: np.ndarray, width: float, min_count: int = MIN_COUNT):
    """(bin centres, mean rho, SE, counts) for bins of M holding at least min_count."""
    ok = np.isfinite(M) & np.isfinite(rho)
    M, rho = M[ok], rho[ok]
    edges = np.arange(np.floor(M.min() / width), np.ceil(M.max() / width) + 1) * width
    if len(edges) < 2:
        edges = np.array([edges[0], edges[0] + width])
    b = np.clip(np.searchsorted(edges, M, side="right") - 1, 0, len(edges) - 2)
    n = np.bincount(b, minlength=len(edges) - 1)
    s1 = np.bincount(b, rho, minlength=len(edges) - 1)
    s2 = np.bincount(b, rho ** 2, minlength=len(edges) - 1)
    keep = n >= min_count
    n, s1, s2 = n[keep], s1[keep], s2[keep]
    mean = s1 / n
    var = np.maximum(s2 - n * mean ** 2, 0) / (n - 1)
    centers = ((edges[:-1] + edges[1:]) / 2)[keep]
    return centers, mean, np.sqrt(var / n), n


def figure(M, rho, mem, width, flagged=None, flag=None) -> Figure:
    fig = Figure(figsize=(TEXTWIDTH, 2.4), layout="constrained")
    ax_a, ax_b = fig.subplots(1, 2)
    centers, mean, se, _ = binned_means(M, rho, width)
    ax_a.errorbar(centers, mean, yerr=1.96 * se, fmt="o", ms=2, lw=0.7, capsize=1.5,
                  color=COLORS["regular"])
    ax_a.axhline(1, color="k", ls="--", lw=0.6)
    if len(centers):
        ax_a.set_xlim(centers[0] - width, centers[-1] + width)
    ax_a.set_xlabel(f"memorization score $M$ (bins of width {num(width)})")
    ax_a.set_ylabel(r"mean $\rho$ $\pm$ 1.96 SE")
    ax_a.set_title(r"(a) distance ratio per bin of $M$", loc="left")

    edges = edges_for(rho, 40, (0.0, 0.999))
    for label, sel, color in (("regular", ~mem, COLORS["regular"]),
                              (r"top $5\%$ by $M$", mem, COLORS["memorized"])):
        r = finite(rho[sel])
        dens = np.histogram(r, edges)[0] / (max(r.size, 1) * np.diff(edges))
        ax_b.stairs(dens, edges, fill=True, color=color, alpha=0.35, lw=0)
        ax_b.stairs(dens, edges, color=color, lw=0.8, label=label)
    if flagged is not None:   # the calibrated set beside the top 5 %
        r = finite(rho[flagged])
        dens = np.histogram(r, edges)[0] / (max(r.size, 1) * np.diff(edges))
        ax_b.stairs(dens, edges, color="k", lw=0.8, ls="--", label=flag)
    ax_b.axvline(1, color="k", ls="--", lw=0.6)
    ax_b.set_xlim(edges[0], edges[-1])
    ax_b.set_xlabel(r"distance ratio $\rho$")
    ax_b.set_ylabel("density")
    ax_b.set_title(r"(b) distribution of $\rho$", loc="left")
    ax_b.legend()
    return fig


def caption(s, M, rho, mem, width, flagged=None) -> str:
    ok = np.isfinite(M) & np.isfinite(rho)
    _, _, _, n = binned_means(M, rho, width)
    left_out = int(ok.sum() - n.sum())
    r_s = stats.spearmanr(M[ok], rho[ok])[0] if ok.sum() > 2 else np.nan
    mh, mr = np.mean(rho[ok & mem]), np.mean(rho[ok & ~mem])
    text = ("Nearest-neighbour distance ratio $\\rho_i$: distance from training image $x_i$ to "
            "the nearest validation or test image divided by its distance to the nearest "
            "sample of the full model (images at $16\\times16$; $\\rho_i > 1$: a model sample is "
            f"closer than any held-out image), for {tex_escape(s.name)} "
            f"({tex_escape(s.dataset)}). (a) Mean of $\\rho_i$ per bin of the final-epoch "
            f"memorization score (width {num(width)}) with error bars of $\\pm 1.96$ standard "
            "errors; the dashed line is $\\rho = 1$.")
    if left_out:
        text += (f" Bins with fewer than {MIN_COUNT} observations are not shown "
                 f"({count(left_out)} observations).")
    text += (" (b) Distribution of $\\rho_i$ for the top 5\\,\\% by $M$ and regular "
             f"observations. Mean $\\rho$: {num(mh)} (top 5\\,\\%) and {num(mr)} (regular); "
             f"Spearman correlation of $\\rho_i$ with $M_i$: {num(r_s, 2)}. ")
    if flagged is not None:
        text += ("Dashed black: the observations flagged as memorized by the calibrated test "
                 f"(mean $\\rho$ {num(np.mean(rho[ok & flagged]))}). ")
    return text + flag_text(s)


def make(summaries, *, nn=None, **_) -> Result:
    s = summaries[0]
    title = "Nearest-neighbour distance ratio"
    if nn is None:
        return placeholder(title, "no nearest-neighbour file")
    M, rho = s.M_final, nn.rho
    ok = np.isfinite(M) & np.isfinite(rho)
    if ok.sum() < 2:
        return placeholder(title, "too few finite values")
    mem, _ = highly_memorized(np.where(ok, M, np.nan), HIGH_Q)
    width = bin_width(M[ok])
    fi = flag_info(s)
    flagged = fi["mask"] & ok if fi is not None and (fi["mask"] & ok).sum() >= 2 else None
    return Result(figure(M, rho, mem, width, flagged, flag_label(fi) if fi else None),
                  caption(s, M, rho, mem, width, flagged), title,
                  info={"bin_width": width, "flagged": fi["count"] if fi else None})

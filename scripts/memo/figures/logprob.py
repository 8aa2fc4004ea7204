"""Figure 5 (supplement Figs 10-11): the top 5 % by M against the other observations over bins of
the log probability U_i = log P_A(x_i | D) at the final epoch.

(a) stacked counts per bin, the number in the top 5 % by M written above each bar, and
columns of example images joined to their bin by dashed lines; (b) the proportions per bin.

Example images: `N_COLS` bins, evenly spaced among the bins holding at least `N_ROWS`
observations; in each, max(1, N_ROWS // 2) top-5 % observations where the bin has
any (one for the default three rows) and regular ones for the rest, drawn uniformly without replacement by
`np.random.default_rng([seed, bin])` -- the choice in one bin depends only on the seed and
that bin. The frame colour tells which group an image is in.
"""
from __future__ import annotations

import matplotlib
import numpy as np
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import ConnectionPatch, Patch

from .common import (COLORS, HIGH_Q, TEXTWIDTH, Result, bin_of, count, edges_for, flag_info,
                     flag_label, flag_text, highly_memorized, lr_label, mosaic, num, pct,
                     placeholder, show, tex_escape)

TARGET_BINS = 25
RANGE_Q = (0.001, 1.0)    # the lowest 0.1 % of U are pooled into the first bar
N_COLS, N_ROWS = 6, 3


def counts(U: np.ndarray, mem: np.ndarray, edges: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(regular, top 5 % by M) counts per bin; U beyond the edges goes to the end bins."""
    ok = np.isfinite(U)
    b = bin_of(U[ok], edges)
    nb = len(edges) - 1
    high = np.bincount(b[mem[ok]], minlength=nb)
    return np.bincount(b, minlength=nb) - high, high


def select_examples(U: np.ndarray, mem: np.ndarray, edges: np.ndarray, seed: int,
                    n_cols: int = N_COLS, n_rows: int = N_ROWS) -> list[tuple[int, np.ndarray]]:
    """[(bin, positions of its example images)] from left to right (rule in the docstring)."""
    ok = np.isfinite(U)
    b = np.full(U.shape, -1)
    b[ok] = bin_of(U[ok], edges)
    sizes = np.bincount(b[ok], minlength=len(edges) - 1)
    eligible = np.flatnonzero(sizes >= n_rows)
    if eligible.size == 0:
        return []
    picks = np.unique(eligible[np.linspace(0, eligible.size - 1, min(n_cols, eligible.size))
                               .round().astype(int)])
    out = []
    for k in picks:
        rng = np.random.default_rng([seed, int(k)])
        high = np.flatnonzero((b == k) & mem)
        low = np.flatnonzero((b == k) & ~mem)
        n_high = min(high.size, max(1, n_rows // 2))
        n_high = max(n_high, n_rows - low.size)             # too few regular ones
        chosen = np.concatenate([rng.choice(high, n_high, replace=False),
                                 rng.choice(low, n_rows - n_high, replace=False)])
        out.append((int(k), chosen))
    return out


def figure(edges, regular, high, examples=None, images=None, mem=None, flagged=None,
           flag=None) -> Figure:
    """flagged: (counts per bin of the calibrated flag, its legend label) or None."""
    with_images = bool(examples) and images is not None
    fig = Figure(figsize=(TEXTWIDTH, 6.0 if with_images else 4.0))
    left, width = 0.1, 0.88
    if with_images:
        ax_a = fig.add_axes([left, 0.37, width, 0.29])
        ax_b = fig.add_axes([left, 0.07, width, 0.2], sharex=ax_a)
    else:
        ax_a = fig.add_axes([left, 0.47, width, 0.46])
        ax_b = fig.add_axes([left, 0.1, width, 0.27], sharex=ax_a)
    centers, w = (edges[:-1] + edges[1:]) / 2, 0.9 * np.diff(edges)
    total = regular + high

    ax_a.bar(centers, regular, w, color=COLORS["regular"])
    ax_a.bar(centers, high, w, bottom=regular, color=COLORS["memorized"])
    if flagged is not None:
        ax_a.stairs(flagged, edges, color="k", lw=0.8)
    ax_a.set_ylim(0, 1.18 * max(total.max(), 1))
    rot = 90 if len(centers) > 14 else 0
    for x, t, h in zip(centers, total, high):
        if t:
            ax_a.text(x, t + 0.02 * total.max(), str(h), ha="center", va="bottom",
                      fontsize=5.5, rotation=rot)
    ax_a.set_ylabel("number of observations")
    title_a = r"(a) counts; numbers above the bars: top $5\%$ by $M$"
    if with_images:   # above the example images, clear of the dashed lines
        fig.text(left, 0.985, title_a, va="top", size=matplotlib.rcParams["axes.titlesize"])
    else:
        ax_a.set_title(title_a, loc="left")
    handles = [Patch(color=COLORS["memorized"], label=r"top $5\%$ by $M$"),
               Patch(color=COLORS["regular"], label="regular")]
    if flagged is not None:
        handles.append(Line2D([], [], color="k", lw=0.8, label=flag))
    ax_a.legend(handles=handles, loc="best",
                frameon=True, facecolor="white", edgecolor="none", framealpha=1)
    ax_a.patch.set_facecolor("none")   # the dashed lines below run behind bars and legend
    ax_a.tick_params(labelbottom=False)

    with np.errstate(invalid="ignore", divide="ignore"):
        share = np.where(total > 0, high / total, np.nan)
    has = total > 0
    ax_b.bar(centers[has], 1 - share[has], w[has], color=COLORS["regular"])
    ax_b.bar(centers[has], share[has], w[has], bottom=1 - share[has], color=COLORS["memorized"])
    ax_b.axhline(1 - high.sum() / max(total.sum(), 1), color="k", ls="--", lw=0.6)
    if flagged is not None:
        # the calibrated set beside the top 5 %: its share per bin
        with np.errstate(invalid="ignore", divide="ignore"):
            fshare = np.where(total > 0, flagged / total, np.nan)
        ax_b.plot(centers[has], fshare[has], "o-", ms=2, lw=0.7, color="k", label=flag)
        ax_b.legend(loc="lower left", frameon=True, facecolor="white", edgecolor="none")
    ax_b.set_ylim(0, 1)
    ax_b.set_ylabel("proportion")
    ax_b.set_xlabel(r"$\log P_{\mathcal{A}}(x_i \mid \mathcal{D})$ (nats)")
    ax_b.set_title("(b) proportions per bin; dashed: overall share of regular observations",
                   loc="left")
    ax_b.set_xlim(edges[0], edges[-1])

    if with_images:
        col_w = width / len(examples)
        for j, (b, idx) in enumerate(examples):
            # an equal-aspect axes shrinks to its image, so (0.5, 0) is the image's bottom
            ax = fig.add_axes([left + (j + 0.05) * col_w, 0.7, 0.9 * col_w, 0.25])
            frames = [COLORS["memorized"] if mem[i] else COLORS["regular"] for i in idx]
            show(ax, mosaic(images[idx], len(idx), 1, frames=frames))
            top = total[b] + 0.12 * total.max()          # above the bar and its number
            fig.add_artist(ConnectionPatch(
                xyA=(0.5, 0), coordsA=ax.transAxes, xyB=(centers[b], top),
                coordsB=ax_a.transData, ls="--", lw=0.5, color=COLORS["line"], zorder=-1))
    return fig


def caption(s, edges, regular, high, examples, seed, pooled_low, above_median,
            flagged=None) -> str:
    total = regular + high
    text = ("The top 5\\,\\% by the final-epoch memorization score $M$ (orange) and "
            "regular (blue) observations in bins of the log probability "
            f"$\\log P_{{\\mathcal{{A}}}}(x_i \\mid \\mathcal{{D}})$ (bin width "
            f"{num(edges[1] - edges[0])}) for {tex_escape(s.name)} "
            f"({tex_escape(s.dataset)}, {lr_label(s.meta.get('lr'))}, "
            f"$n = {count(total.sum())}$). (a) Counts; the number above each bar is its number "
            "of top-5\\,\\% observations. ")
    if pooled_low:
        text += (f"The first bar also holds the {count(pooled_low)} observations below "
                 f"{num(edges[0])}. ")
    if examples:
        text += ("Above: training images from several bins, joined by dashed lines to their "
                 "bin; an orange frame marks an image in the top 5\\,\\% by $M$, a blue frame a "
                 f"regular one (drawn at random with seed {seed}, one top-5\\,\\% image per column "
                 "where the bin has any). ")
    text += ("(b) The proportion of both groups per bin. "
             f"Of the {count(high.sum())} observations in the top 5\\,\\% by $M$, "
             f"{pct(above_median)} have a log probability above the median of all observations "
             "(50\\,\\% if memorization were unrelated to it). ")
    if flagged is not None:
        text += (f"Black lines: the {count(flagged.sum())} observations flagged as memorized by "
                 "the calibrated test (Benjamini--Hochberg over the permutation p-values), their "
                 "number per bin in (a) and their share per bin in (b). ")
    return text + flag_text(s)


def make(summaries, *, images=None, seed=42, **_) -> Result:
    s = summaries[0]
    title = "Memorization vs log probability"
    U, M = s.U_final, s.M_final
    ok = np.isfinite(U) & np.isfinite(M)
    if not ok.any():
        return placeholder(title, "no finite scores")
    U = np.where(ok, U, np.nan)
    mem, _ = highly_memorized(np.where(ok, M, np.nan), HIGH_Q)
    edges = edges_for(U, TARGET_BINS, RANGE_Q)
    regular, high = counts(U, mem, edges)
    examples = select_examples(U, mem, edges, seed) if images is not None else []
    pooled_low = int((U[ok] < edges[0]).sum())
    above_median = float((U[mem] > np.median(U[ok])).mean()) if mem.any() else np.nan
    fi = flag_info(s)
    flagged = None
    if fi is not None and fi["count"]:
        _, flagged = counts(U, fi["mask"] & ok, edges)
    fig = figure(edges, regular, high, examples, images, mem, flagged,
                 flag_label(fi) if fi else None)
    info = {"bin_width": float(edges[1] - edges[0]), "seed": seed,
            "examples": [[b, idx.tolist()] for b, idx in examples],
            "flagged": fi["count"] if fi else None}
    text = caption(s, edges, regular, high, examples, seed, pooled_low, above_median, flagged)
    return Result(fig, text, title, info=info)

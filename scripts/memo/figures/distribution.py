"""Figure 4: density histogram of the final-epoch memorization score with its 95th percentile
marked; several experiments share one set of bins.

The axis spans the 0.05th to the 99.9th percentile of the pooled scores (the far tail would
squeeze the bulk into a few bins); the caption counts what lies beyond. Densities are relative
to all finite scores, so the area shown is the share inside the axis.
"""
from __future__ import annotations

import numpy as np
from matplotlib.figure import Figure

from .common import (HIGH_Q, SERIES_COLORS, Result, count, edges_for, finite, num, placeholder,
                     series_labels, short, tex_escape)

RANGE_Q = (0.0005, 0.999)
TARGET_BINS = 60


def densities(M: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """Histogram density over `edges`, normalised by the number of all finite M."""
    m = finite(M)
    counts, _ = np.histogram(m, edges)
    return counts / (max(m.size, 1) * np.diff(edges))


def figure(series: list[tuple[str, np.ndarray]], edges: np.ndarray) -> Figure:
    """series: (label, final-epoch M (n,))."""
    fig = Figure(figsize=(4.2, 2.4), layout="constrained")
    ax = fig.subplots()
    for (label, M), color in zip(series, SERIES_COLORS):
        ax.stairs(densities(M, edges), edges, fill=True, color=color, alpha=0.3, lw=0)
        ax.stairs(densities(M, edges), edges, color=color, lw=0.8, label=label)
        p95 = np.quantile(finite(M), HIGH_Q)
        ax.axvline(p95, color=color, ls="--", lw=0.8,
                   label=f"$95$th percentile ({short(p95)})")
    ax.set_xlim(edges[0], edges[-1])
    ax.set_xlabel("memorization score $M$ (nats)")
    ax.set_ylabel("density")
    ax.legend()
    return fig


def caption(summaries, edges) -> str:
    parts = []
    for s in summaries:
        m = finite(s.M_final)
        p95 = np.quantile(m, HIGH_Q)
        out = int(((m < edges[0]) | (m > edges[-1])).sum())
        parts.append(f"{tex_escape(s.name)}: median {num(np.median(m))}, 95th percentile "
                     f"{num(p95)}, range {num(m.min())} to {num(m.max())}"
                     + (f" ({count(out)} scores beyond the axis)" if out else "")
                     + (f"; median bias under no memorization {num(np.nanmedian(s.null_mean))}, "
                        f"median calibrated score {num(np.nanmedian(s.M_corrected))}"
                        if s.calibrated else ""))
    return ("Distribution of the memorization score at the final epoch (density histogram, bin "
            f"width {num(edges[1] - edges[0])}); the dashed line marks the 95th percentile, above "
            "which observations are the top 5\\,\\% by $M$. The horizontal axis is cut at the "
            f"{100 * RANGE_Q[0]:g}th and {100 * RANGE_Q[1]:g}th percentiles of all scores. "
            f"{'; '.join(parts)}. The score is biased upward when nothing is memorized (more "
            "in-values than held-out ones enter its log-mean-exp), so neither $M > 0$ nor the "
            "top 5\\,\\% alone shows memorization; see the calibrated scores.")


def make(summaries, **_) -> Result:
    title = "Distribution of M"
    finals = [s.M_final for s in summaries]
    if not any(finite(M).size for M in finals):
        return placeholder(title, "no finite scores")
    edges = edges_for(np.concatenate(finals), TARGET_BINS, RANGE_Q)
    series = list(zip(series_labels(summaries), finals))
    return Result(figure(series, edges), caption(summaries, edges), title,
                  info={"bin_width": float(edges[1] - edges[0])})

"""Figure 3: upper quantiles of the memorization score against the training epoch
(q = 0.95 and 0.999), one line per experiment.
"""
from __future__ import annotations

import numpy as np
from matplotlib.figure import Figure

from .common import (SERIES_COLORS, TEXTWIDTH, Result, lr_label, num, placeholder,
                     series_labels, tex_escape)

QS = (0.95, 0.999)


def quantiles(M: np.ndarray, qs=QS) -> np.ndarray:
    """(len(qs), E) quantiles of each epoch's finite scores (nan for an empty epoch)."""
    out = np.full((len(qs), M.shape[0]), np.nan)
    for e, row in enumerate(M):
        row = row[np.isfinite(row)]
        if row.size:
            out[:, e] = np.quantile(row, qs)
    return out


def figure(series: list[tuple[str, np.ndarray, np.ndarray]], qs=QS) -> Figure:
    """series: (label, epochs (E,), quantiles (len(qs), E))."""
    fig = Figure(figsize=(TEXTWIDTH, 2.3), layout="constrained")
    axes = fig.subplots(1, len(qs))
    for j, (ax, q) in enumerate(zip(axes, qs)):
        for (label, epochs, Q), color in zip(series, SERIES_COLORS):
            ax.plot(epochs, Q[j], color=color, marker="o", ms=2.5, label=label)
        ax.set_title(f"({'ab'[j]}) $q = {q:g}$")
        ax.set_xlabel("epoch")
        ax.set_ylabel(f"{q:g}-quantile of $M$ (nats)")
    axes[0].legend()
    return fig


def caption(summaries, series, qs=QS) -> str:
    parts = []
    for s, (_, epochs, Q) in zip(summaries, series):
        vals = " and ".join(f"{num(Q[j, -1])} ($q = {q:g}$)" for j, q in enumerate(qs))
        part = (f"{tex_escape(s.name)} ({lr_label(s.meta.get('lr'))}) reaches {vals} "
                f"at epoch {epochs[-1]}")
        if len(epochs) > 1:
            part += f", from {num(Q[0, 0])} and {num(Q[1, 0])} at epoch {epochs[0]}"
        parts.append(part)
    return ("Upper quantiles of the memorization score $M_i$ over the training epochs at which "
            f"$\\log p(x)$ was evaluated: (a) $q = {qs[0]:g}$, (b) $q = {qs[1]:g}$. "
            f"{'; '.join(parts)}.")


def make(summaries, **_) -> Result:
    title = "Quantiles of M over epochs"
    labels = series_labels(summaries)
    series = [(lab, s.epochs, quantiles(s.M)) for s, lab in zip(summaries, labels)]
    if all(np.isnan(Q).all() for _, _, Q in series):
        return placeholder(title, "no finite scores")
    return Result(figure(series), caption(summaries, series), title)

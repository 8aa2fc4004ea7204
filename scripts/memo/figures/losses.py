"""Figure 2: training and test loss (negative ELBO per example) of the model trained on all
of D, per epoch; several experiments (bmnist at two learning rates) in one panel.
"""
from __future__ import annotations

import numpy as np
from matplotlib.figure import Figure

from .common import (SERIES_COLORS, Result, lr_label, num, placeholder, series_labels,
                     tex_escape)


def figure(curves: list[tuple[str, np.ndarray, np.ndarray]]) -> Figure:
    """curves: (label, train (epochs,), test (epochs,)) per experiment."""
    fig = Figure(figsize=(4.2, 2.4), layout="constrained")
    ax = fig.subplots()
    for (label, train, test), color in zip(curves, SERIES_COLORS):
        ax.plot(np.arange(1, len(train) + 1), train, color=color, label=f"{label}, train")
        if len(test):
            ax.plot(np.arange(1, len(test) + 1), test, color=color, ls="--",
                    label=f"{label}, test")
    ax.set_xlabel("epoch")
    ax.set_ylabel("negative ELBO per example (nats)")
    ax.legend(ncols=1 if len(curves) == 1 else 2)
    return fig


def caption(summaries, curves) -> str:
    parts = []
    for s, (_, train, test) in zip(summaries, curves):
        last = f"{num(train[-1])} (train)"
        if len(test):
            last += f" and {num(test[-1])} (test), a gap of {num(test[-1] - train[-1])}"
        parts.append(f"{tex_escape(s.name)} ({lr_label(s.meta.get('lr'))}): {last}")
    data = ", ".join(sorted({tex_escape(s.dataset) for s in summaries}))
    return (f"Loss of the model trained on all of {data}: mean negative ELBO per example on the "
            "training set (solid) and on the test set (dashed) after each epoch. "
            f"After the last epoch: {'; '.join(parts)}. A small gap between the two curves "
            "means little overfitting, which need not mean little memorization (compare the "
            "quantiles of the memorization score).")


def make(summaries, **_) -> Result:
    title = "Loss curves of the full models"
    have = [(s, lab) for s, lab in zip(summaries, series_labels(summaries))
            if len(s.full_losses_train)]
    if not have:
        return placeholder(title, "no loss curves in the summary")
    curves = [(lab, s.full_losses_train, s.full_losses_test) for s, lab in have]
    return Result(figure(curves), caption([s for s, _ in have], curves), title)

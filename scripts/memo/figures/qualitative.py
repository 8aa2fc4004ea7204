"""Figure 1 (supplement Figs 7-9): the training images with the lowest, median and highest
final-epoch memorization score, in three grids, each image with its index beneath and a frame
when it is flagged.

The score ranked by is M_corrected (M less its permutation-null mean, docs/calibration.md) when
the summary is calibrated, M otherwise; the flag rests on the test's p-value, so a flagged
image need not be among the highest (the flagged list and the gallery figure order by p).
"""
from __future__ import annotations

import numpy as np
from matplotlib.figure import Figure

from .common import (COLORS, TEXTWIDTH, Result, count, flag_info, flag_text, lr_label, num,
                     placeholder, short, show, tex_escape)
from .gallery import below, framed

ROWS, COLS = 3, 5   # 15 images per grid, ordered by M row by row


def select(M: np.ndarray, k: int = ROWS * COLS) -> dict[str, np.ndarray]:
    """Positions of the k lowest, k closest to the median and k highest finite M, each by M."""
    ok = np.flatnonzero(np.isfinite(M))
    k = min(k, len(ok) // 3)
    order = ok[np.argsort(M[ok], kind="stable")]
    low, high = order[:k], order[len(order) - k:]
    near = ok[np.argsort(np.abs(M[ok] - np.median(M[ok])), kind="stable")]
    near = near[~np.isin(near, np.concatenate([low, high]))][:k]   # the three grids are disjoint
    return {"low": low, "median": near[np.argsort(M[near], kind="stable")], "high": high}


def figure(M: np.ndarray, images: np.ndarray, sel: dict[str, np.ndarray], index: np.ndarray,
           flagged: np.ndarray, symbol: str = "M") -> Figure:
    """Three grids; under each image its index in the training set, a frame when flagged."""
    fig = Figure(figsize=(TEXTWIDTH, 2.5), layout="constrained")
    titles = {"low": "(a) lowest", "median": "(b) around the median", "high": "(c) highest"}
    for sub, (key, idx) in zip(fig.subfigures(1, 3, wspace=0.04), sel.items()):
        axes = sub.subplots(ROWS, COLS, squeeze=False)
        for ax in axes.ravel():
            ax.set_axis_off()
        for j, i in enumerate(idx):
            ax = axes.flat[j]
            show(ax, framed(images[i], COLORS["memorized"] if flagged[i] else None))
            below(ax, f"{int(index[i])}")
        sub.suptitle(f"{titles[key]}\n${short(M[idx].min())} \\leq {symbol} \\leq "
                     f"{short(M[idx].max())}$", fontsize=8)
    return fig


def calibrated(s, high: np.ndarray) -> str:
    """How the highest-scoring images fare under the calibration."""
    fi = flag_info(s)
    if fi is None:
        return ""
    return (f" A frame marks the flagged; of the {len(high)} highest, "
            f"{int(fi['mask'][high].sum())} are flagged as memorized (the flag rests on the "
            "test's $p$-value, not on the rank; the flagged list and the gallery order by it) "
            f"and {int((s.M_corrected[high] > 0).sum())} have a positive calibrated score. "
            + flag_text(s))


def caption(M: np.ndarray, sel: dict[str, np.ndarray], dataset: str, lr,
            corrected: bool = False) -> str:
    k = len(sel["low"])
    ok = M[np.isfinite(M)]
    score = ("calibrated memorization scores $M_{\\mathrm{c}}$ (M\\_corrected: $M$ less its "
             "permutation-null mean)" if corrected else "memorization scores $M$")
    return (f"Training images of {tex_escape(dataset)} ({lr_label(lr)}) with (a) the {k} "
            f"lowest, (b) the {k} closest to the median and (c) the {k} highest {score} at the "
            f"final epoch, each grid ordered by score row by row, the image's index in the "
            f"training set beneath it. Scores run from "
            f"{num(M[sel['low'][0]])} at the top left of (a) to {num(M[sel['high'][-1]])} at the "
            f"bottom right of (c); the median is {num(np.median(ok))} "
            f"($n = {count(len(ok))}$).")


def make(summaries, *, images=None, **_) -> Result:
    s = summaries[0]
    title = "Low, median and high memorization"
    if images is None:
        return placeholder(title, "training images not available")
    corrected = flag_info(s) is not None and bool(np.isfinite(s.M_corrected).any())
    M = s.M_corrected if corrected else s.M_final
    sel = select(M)
    if len(sel["low"]) == 0:
        return placeholder(title, "no finite scores")
    text = caption(M, sel, s.dataset, s.meta.get("lr"), corrected) + calibrated(s, sel["high"])
    fig = figure(M, images, sel, s.index, np.asarray(s.memorized, bool),
                 r"M_{\mathrm{c}}" if corrected else "M")
    return Result(fig, text.strip(), title,
                  info={"ranked_by": "M_corrected" if corrected else "M",
                        "selected": {k: v.tolist() for k, v in sel.items()},
                        "indices": {k: s.index[v].tolist() for k, v in sel.items()}})

"""Figure 1 (supplement Figs 7-9): the training images with the lowest, median and highest
final-epoch memorization score, in three grids.
"""
from __future__ import annotations

import numpy as np
from matplotlib.figure import Figure

from .common import (TEXTWIDTH, Result, count, flag_info, flag_text, lr_label, mosaic, num,
                     placeholder, short, show, tex_escape)

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


def figure(M: np.ndarray, images: np.ndarray, sel: dict[str, np.ndarray]) -> Figure:
    fig = Figure(figsize=(TEXTWIDTH, 1.75), layout="constrained")
    axes = fig.subplots(1, 3)
    titles = {"low": "(a) lowest", "median": "(b) around the median", "high": "(c) highest"}
    for ax, (key, idx) in zip(axes, sel.items()):
        show(ax, mosaic(images[idx], ROWS, COLS, gap=1))
        ax.set_title(f"{titles[key]}\n${short(M[idx].min())} \\leq M \\leq {short(M[idx].max())}$")
    return fig


def calibrated(s, high: np.ndarray) -> str:
    """How the highest-scoring images fare under the calibration."""
    fi = flag_info(s)
    if fi is None:
        return ""
    return (f" Of the {len(high)} highest, {int(fi['mask'][high].sum())} are flagged as "
            f"memorized and {int((s.M_corrected[high] > 0).sum())} have a positive calibrated "
            "score. " + flag_text(s))


def caption(M: np.ndarray, sel: dict[str, np.ndarray], dataset: str, lr) -> str:
    k = len(sel["low"])
    ok = M[np.isfinite(M)]
    return (f"Training images of {tex_escape(dataset)} ({lr_label(lr)}) with (a) the {k} "
            f"lowest, (b) the {k} closest to the median and (c) the {k} highest memorization "
            f"scores at the final epoch, each grid ordered by score row by row. Scores run from "
            f"{num(M[sel['low'][0]])} at the top left of (a) to {num(M[sel['high'][-1]])} at the "
            f"bottom right of (c); the median is {num(np.median(ok))} "
            f"($n = {count(len(ok))}$).")


def make(summaries, *, images=None, **_) -> Result:
    s = summaries[0]
    title = "Low, median and high memorization"
    if images is None:
        return placeholder(title, "training images not available")
    M = s.M_final
    sel = select(M)
    if len(sel["low"]) == 0:
        return placeholder(title, "no finite scores")
    text = caption(M, sel, s.dataset, s.meta.get("lr")) + calibrated(s, sel["high"])
    return Result(figure(M, images, sel), text.strip(),
                  title, info={"selected": {k: v.tolist() for k, v in sel.items()}})

"""The answer as a picture: the flagged images, strongest evidence first (the order of
analysis/<exp>_flagged.csv, memo/score/flagged.py), each beside its nearest other training
image and the full model's sample nearest to it, with index and score under each; the control
images' false-positive estimate in the title.

Distances are those of the nearest-neighbour file: Euclidean between images average-pooled
2×2 to 16×16 in [0, 1] (memo/measures/neighbours.py). The nearest training image is found
here, from the images (only the shown few are queries); the samples come from the
nearest-neighbour file (format 2 on), without it that column is left out.
"""
from __future__ import annotations

import math

import numpy as np
import torch
from matplotlib.figure import Figure

from memo.measures import neighbours
from memo.score import flagged as flagged_list
from memo.score.calibration import q_values

from .common import (COLORS, TEXTWIDTH, Result, count, flag_info, flag_text, placeholder,
                     short, show, tex_escape)

CAP = 24          # at most this many flagged images on the page: "first CAP of M"
FALLBACK = 6      # none flagged: this many strongest by evidence, labelled as not flagged
PER_ROW = 3       # (image, neighbour, sample) groups per row


def nearest_training(images: np.ndarray, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(position, distance) of each row's nearest other training image, by the nearest-neighbour
    file's own distance and search (memo/measures/neighbours.py: 2×2-pooled pixels, ties to the
    lowest position); an exact duplicate elsewhere gives distance 0; (-1, inf) with no other."""
    x = neighbours.downsample(torch.from_numpy(np.ascontiguousarray(images)))
    where, best = np.full(len(rows), -1, dtype=np.int64), np.full(len(rows), np.inf)
    if len(x) < 2:
        return where, best
    for k, i in enumerate(rows):   # a few dozen rows: each against all but itself
        d, j = neighbours.nearest_distances(x[i:i + 1], torch.cat([x[:i], x[i + 1:]]))
        where[k], best[k] = int(j[0]) + (int(j[0]) >= i), float(d[0])
    return where, best


def choose(s) -> tuple[np.ndarray, int, str]:
    """(positions to show, how many are flagged, what they are): the flagged ones in evidence
    order up to CAP; with none flagged the FALLBACK strongest by evidence (by M without a
    calibration)."""
    info = flag_info(s)
    if info is not None and info["count"]:
        rows = flagged_list.flagged_order(s)
        return rows[:CAP], info["count"], "flagged"
    if info is not None:
        return flagged_list.by_evidence(s)[:FALLBACK], 0, "strongest"
    M = np.where(np.isfinite(s.M_final), s.M_final, -np.inf)
    return np.argsort(-M, kind="stable")[:FALLBACK], 0, "highest M"


def controls_title(s) -> str:
    """The controls' false-positive estimate, in a line for the title."""
    ctl = (s.calibration or {}).get("controls")
    if not ctl:
        return "no control images: the false-positive rate is not measured"
    lo, hi = ctl["rate_ci"]
    text = (rf"controls: {ctl['flagged']} of {ctl['n']} pass "
            rf"(${100 * ctl['rate']:.2g}\%$; 95$\%$ interval ${100 * lo:.2g}$ to "
            rf"${100 * hi:.2g}\%$)")
    if np.isfinite(ctl.get("fdr_estimate") or np.nan):
        text += rf", est. false flags ${100 * ctl['fdr_estimate']:.2g}\%$"
    return text


def figure(s, images, rows, neighbour, d_neighbour, nn, title) -> Figure:
    with_samples = nn is not None and nn.samples is not None
    per = 3 if with_samples else 2
    n_rows = max(1, math.ceil(len(rows) / PER_ROW))
    height = 0.45 + 1.05 * n_rows   # inches: the title, then rows with two lines of text each
    fig = Figure(figsize=(TEXTWIDTH, height))   # fixed margins: a constrained layout of up to
    fig.suptitle(title, fontsize=7, y=1 - 0.05 / height, va="top")     # 72 axes is slow
    axes = fig.subplots(n_rows, PER_ROW * per, squeeze=False, gridspec_kw=dict(
        left=0.01, right=0.99, top=1 - 0.45 / height, bottom=0.25 / height, hspace=0.45,
        wspace=0.12))
    mc = s.M_corrected if np.isfinite(s.M_corrected).any() else s.M_final
    score = r"$M_{\mathrm{c}}$" if np.isfinite(s.M_corrected).any() else "$M$"
    q = q_values(s.p_value)
    for ax in axes.ravel():
        ax.set_axis_off()
    for j, i in enumerate(rows):
        r, c = divmod(j, PER_ROW)
        ax = axes[r, c * per: (c + 1) * per]
        frame = COLORS["memorized"] if s.memorized[i] else None
        show(ax[0], framed(images[i], frame))
        mark = r" $\bullet$ESS" if s.low_ess[i] else ""
        below(ax[0], f"{int(s.index[i])}{mark}\n{score} {short(mc[i])}"
                     + (f", $q$ {q[i]:.1g}" if np.isfinite(q[i]) else ""))
        show(ax[1], framed(images[neighbour[j]]))
        below(ax[1], f"{int(s.index[neighbour[j]])}\n$d$ {d_neighbour[j]:.2f}")
        if with_samples:
            k = int(nn.nn_model[i])
            show(ax[2], framed(nn.samples[k]))
            below(ax[2], f"sample {k}\n$d$ {nn.d_model[i]:.2f}")
    return fig


def framed(img: np.ndarray, color: str | None = None, width: int = 2) -> np.ndarray:
    """(H, W, 3) uint8 with a coloured border (white without a colour)."""
    from matplotlib.colors import to_rgb
    img = np.asarray(img).transpose(1, 2, 0)
    img = np.repeat(img, 3, axis=2) if img.shape[2] == 1 else img[..., :3]
    H, W, _ = img.shape
    out = np.empty((H + 2 * width, W + 2 * width, 3), np.uint8)
    out[:] = (np.array(to_rgb(color or "white")) * 255).astype(np.uint8)
    out[width:width + H, width:width + W] = img
    return out


def below(ax, text: str) -> None:
    ax.text(0.5, -0.04, text, transform=ax.transAxes, ha="center", va="top", fontsize=5,
            linespacing=1.0)


def caption(s, rows, flagged, what, with_samples) -> str:
    cols = ("the image (a frame marks it flagged), its nearest other training image" +
            (" and the full model's sample nearest to it" if with_samples else ""))
    text = (f"{tex_escape(s.name)} ({tex_escape(s.dataset)}): ")
    if what == "flagged":
        shown = (f"the {count(len(rows))} flagged images" if len(rows) == flagged else
                 f"the first {count(len(rows))} of {count(flagged)} flagged images")
        text += (f"{shown}, strongest evidence first (the flagging test's $p$-value, the order "
                 r"of \texttt{analysis/" + tex_escape(s.name) + r"\_flagged.csv}). ")
    elif what == "strongest":
        text += (f"none is flagged; shown instead, labelled as not flagged, the {len(rows)} "
                 "with the strongest evidence (smallest $p$-value). ")
    else:
        text += (f"no calibration, so nothing is flagged; shown instead the {len(rows)} "
                 "highest $M$. ")
    text += (f"Each group: {cols}. Under the image its index in the training set, "
             r"$M_{\mathrm{c}}$ (M\_corrected) and its Benjamini--Hochberg $q$-value; "
             r"``$\bullet$ESS'' marks low\_ess (an importance-sampling effective sample size "
             "under the threshold for an in- or held-out model, docs/flagged.md); under a "
             "neighbour its index or sample number and the distance $d$ (images pooled to "
             r"$16\times16$, pixels in $[0, 1]$). ")
    if not with_samples:
        text += ("The model's samples are not shown: no nearest-neighbour file with samples "
                 "(\\texttt{make nn-" + tex_escape(s.name) + "}). ")
    if s.repeats == 2:
        text += ("With $L = 2$ repeats the interval of $M_{\\mathrm{c}}$ in the flagged list "
                 "is the range of three bootstrap replicates, the estimate among them "
                 "(docs/calibration.md). ")
    return text + flag_text(s)


def make(summaries, *, images=None, nn=None, **_) -> Result:
    s = summaries[0]
    title = "Flagged images and their nearest neighbours"
    if images is None:
        return placeholder(title, "training images not available")
    rows, flagged, what = choose(s)
    if len(rows) == 0:
        return placeholder(title, "no finite scores")
    neighbour, d = nearest_training(images, rows)
    info = flag_info(s)
    at = f"$q = {short(100 * info['q'])}\\%$" if info else ""
    head = {"flagged": (f"{flagged:,} flagged at {at}, strongest evidence first"
                        + ("" if len(rows) == flagged else
                           f": the first {len(rows)} of {flagged:,}")),
            "strongest": (f"none flagged at {at}; shown: the {len(rows)} with the strongest "
                          "evidence (smallest $p$), not flagged"),
            "highest M": f"no calibration; shown: the {len(rows)} highest $M$, not flagged"}[what]
    with_samples = nn is not None and nn.samples is not None
    fig = figure(s, images, rows, neighbour, d, nn, head + "\n" + controls_title(s))
    return Result(fig, caption(s, rows, flagged, what, with_samples), title,
                  info={"shown": s.index[rows].tolist(), "flagged": flagged, "what": what,
                        "neighbours": s.index[neighbour].tolist(),
                        "samples": with_samples})

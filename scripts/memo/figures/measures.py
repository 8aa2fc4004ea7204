"""Figure (not in the paper): the field's other memorization measures against M (memo/measures/).

One panel per measure: its rank percentile against that of M, the planted one-offs, rare-class
singletons and duplicates marked (the planted benchmark, memo/data/planted.py); with it the
benchmark table (AUROC of one-offs and of rare-class singletons vs regular examples, the
duplicates' mean rank percentile, Spearman with M over regular examples, models trained and CPU
seconds). Needs analysis/<exp>_measures.npz.
"""
from __future__ import annotations

import numpy as np
from matplotlib.figure import Figure

from memo.files.measures import MeasureSet
from memo.measures import measures
from memo.data import planted
from memo.score import rankstats

from .common import COLORS, TEXTWIDTH, Result, count, num, placeholder, tex_escape

ROLE_STYLE = {planted.REGULAR: ("regular", COLORS["regular"], 1.5, 0.35),
              planted.SINGLETON: ("rare-class singleton", "#D55E00", 9, 1.0),
              planted.DUPLICATE: ("duplicated image", "#009E73", 9, 1.0),
              planted.ONEOFF: ("one-off", "#CC79A7", 9, 1.0)}
COLS = 4
SHORT = {"M_corrected": r"$M_{\mathrm{corrected}}$", "neg_log_px": r"$-\log p(x)$",
         "final_loss": "final loss", "loss_sum": "summed training loss",
         "self_influence": "self-influence", "curvature": "curvature (mean)",
         "curvature_final": "curvature (final)", "copies": "copies (1/3 rule)"}


def panels(ms: MeasureSet) -> list[str]:
    """The measures drawn against M: every other one with finite values."""
    return [k for k in measures.MEASURES
            if k != "M" and k in ms.values and np.isfinite(ms.values[k]).any()]


def figure(ms: MeasureSet, names: list[str]) -> Figure:
    rows = -(-len(names) // COLS)
    fig = Figure(figsize=(TEXTWIDTH, 1.75 * rows + 0.35), layout="constrained")
    axes = np.atleast_1d(fig.subplots(rows, COLS, sharex=True, sharey=True)).ravel()
    x = rankstats.rank_percentile(np.nan_to_num(ms.values["M"], nan=-np.inf))
    role = ms.role if ms.role is not None else np.zeros(ms.n, np.int64)
    for ax, name in zip(axes, names):
        y = rankstats.rank_percentile(np.nan_to_num(ms.values[name], nan=-np.inf))
        for r, (label, color, size, alpha) in ROLE_STYLE.items():
            sel = role == r
            if sel.any():
                ax.scatter(x[sel], y[sel], s=size, lw=0, alpha=alpha, color=color,
                           rasterized=True, label=label, marker="o" if r == 0 else "^")
        ax.set_title(SHORT.get(name, name))
        ax.set_xlim(0, 100)
        ax.set_ylim(0, 100)
    for ax in axes[len(names):]:
        ax.set_axis_off()
    for ax in axes[::COLS]:
        ax.set_ylabel("rank pct. of measure")
    for ax in axes[(rows - 1) * COLS:]:
        ax.set_xlabel("rank pct. of $M$")
    if ms.role is not None:
        axes[0].legend(fontsize=5, markerscale=1, loc="lower right")
    return fig


def _cell(v, digits=3) -> str:
    return num(v, digits) if np.isfinite(v) else "--"


def _auroc(r: dict, key: str) -> str:
    if not np.isfinite(r[key]):
        return "--"
    return f"{num(r[key], 2)} ({num(r[key + '_low'], 2)}--{num(r[key + '_high'], 2)})"


def table(rows: list[dict], planted_set: bool) -> dict:
    """The benchmark table for the report: column heads and LaTeX cells."""
    head = ["measure"]
    if planted_set:
        head += ["AUROC one-offs (95\\,\\% CI)", "AUROC rare-class singletons",
                 "duplicates' rank pct."]
    head += ["Spearman with $M$", "models", "CPU s"]
    cells = []
    for r in rows:
        row = [measures.MEASURES[r["measure"]]]
        if planted_set:
            row += [_auroc(r, "oneoff_auroc"), _auroc(r, "auroc"),
                    _cell(r["duplicate_percentile"], 1)]
        row += ["" if r["measure"] == "M" else _cell(r["spearman_M"], 2), count(r["models"]),
                _cell(r["cpu_seconds"], 0)]
        cells.append(row)
    return {"columns": head, "rows": cells}


def caption(ms: MeasureSet, rows: list[dict]) -> str:
    text = (f"Other memorization measures of {tex_escape(ms.experiment)} against $M$: each "
            "example's rank percentile under a measure (higher: more memorized as the measure "
            "has it) against its rank percentile under $M$ at the last epoch. The one-model "
            "measures use the model trained on all of $\\mathcal{D}$ (its weights at epochs "
            + ", ".join(map(str, ms.epochs)) + "). ")
    if ms.role is not None:
        n_o = int((ms.role == planted.ONEOFF).sum())
        n_s = int((ms.role == planted.SINGLETON).sum())
        n_d = int((ms.role == planted.DUPLICATE).sum())
        text += (f"Planted: {n_o} one-offs, synthetic images unlike any other training image, "
                 f"and {n_s} singletons of a class the rest of the set lacks (a correct "
                 f"measure scores both high), and {n_d} copies of "
                 f"{len(set(ms.group[ms.group >= 0].tolist()))} duplicated images (removing one "
                 "copy leaves the others, so a correct leave-out measure does not score them "
                 "high). ")
        for key, what in (("oneoff_auroc", "one-offs"), ("auroc", "rare-class singletons")):
            best = max((r for r in rows if np.isfinite(r[key])), key=lambda r: r[key],
                       default=None)
            if best is not None:
                text += (f"Highest AUROC of {what} against regular examples: "
                         f"{measures.MEASURES[best['measure']]} ({num(best[key], 2)}). ")
    c = ms.copying
    if c:
        text += (f"By the 1/3 rule, {num(100 * c['ratio'], 2)}\\,\\% of {count(c['samples'])} "
                 f"samples copy a training image (95\\,\\% interval {num(100 * c['low'], 2)}--"
                 f"{num(100 * c['high'], 2)}\\,\\%)")
        if "control_ratio" in c:
            text += (f"; the rule fires for {num(100 * c['control_ratio'], 2)}\\,\\% of "
                     f"{count(c['control_n'])} held-out real images, which cannot be copies")
        text += ". "
    text += ("CPU seconds: training of the models a measure needs (where recorded) plus "
             "computing it, on the machine that made the files.")
    return text


def make(summaries, *, measures_set=None, **_) -> Result:
    title = "Other memorization measures against M"
    if measures_set is None:
        return placeholder(title, "no measures file")
    ms = measures_set
    names = panels(ms)
    if not names:
        return placeholder(title, "no measure has finite values")
    rows = measures.benchmark(ms)
    return Result(figure(ms, names), caption(ms, rows), title,
                  info={"table": table(rows, ms.role is not None),
                        "benchmark": rows, "copying": ms.copying})

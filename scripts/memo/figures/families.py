"""Figure (not in the paper): which examples two model families memorize, drawn from the
comparison file analysis/families.json (scripts/compare_families.py, memo/files/families.py).

One row per compared pair (the same training set, K and L): (a) M of family a against M of
family b per example (symlog axes), flagged examples and planted roles marked; (b) how much
their top 5 % by M and their flags overlap; (c) images in one family's top 5 % and below the
other's median M, side by side.
"""
from __future__ import annotations

import numpy as np
from matplotlib.figure import Figure

from memo.data import planted

from .common import (COLORS, SERIES_COLORS, TEXTWIDTH, Result, count, mosaic, num, pct,
                     placeholder, show, tex_escape, training_images)

SHOWN = 6            # images per family in panel (c)
ROLE_MARKS = {planted.SINGLETON: ("rare class", SERIES_COLORS[2], "s"),
              planted.ONEOFF: ("one-offs", SERIES_COLORS[3], "D"),
              planted.DUPLICATE: ("duplicated", SERIES_COLORS[4], "^")}


def example_images(doc: dict) -> list[dict[str, np.ndarray] | None]:
    """Per pair, uint8 (k, C, H, W) images of only_a and only_b from its data set (None, with
    a warning, where the data are not on this machine)."""
    out = []
    for p in doc["pairs"]:
        images = training_images(p["data"], f"the {p['data']} family comparison")
        out.append(None if images is None else
                   {k: images[p["index"][p[k][:SHOWN]]] for k in ("only_a", "only_b")})
    return out


def label(row: dict) -> str:
    return tex_escape(row["model"].removeprefix("Bernoulli"))


def _scatter(ax, p: dict) -> None:
    a, b = p["M_a"], p["M_b"]
    fa = p["flagged_a"] if p["flagged_a"] is not None else np.zeros(p["n"], int)
    fb = p["flagged_b"] if p["flagged_b"] is not None else np.zeros(p["n"], int)
    kinds = [((fa == 0) & (fb == 0), "flagged by neither", COLORS["regular"], 2),
             ((fa == 1) & (fb == 1), "flagged by both", COLORS["memorized"], 5)]
    kinds += [((fa == 1) & (fb == 0), f"by {label(p['families'][0])} only", SERIES_COLORS[1], 4),
              ((fa == 0) & (fb == 1), f"by {label(p['families'][1])} only", SERIES_COLORS[2], 4)]
    for sel, name, color, size in kinds:
        if sel.any():
            ax.scatter(a[sel], b[sel], s=size, color=color, lw=0, label=name, alpha=0.7,
                       rasterized=True)
    if p["role"] is not None:
        for role, (name, color, marker) in ROLE_MARKS.items():
            sel = p["role"] == role
            if sel.any():
                ax.scatter(a[sel], b[sel], s=9, marker=marker, facecolor="none",
                           edgecolor="k", lw=0.5, label=name)
    finite = np.concatenate([a[np.isfinite(a)], b[np.isfinite(b)]])
    lo, hi = float(finite.min()), float(finite.max())
    ax.plot([lo, hi], [lo, hi], color=COLORS["line"], lw=0.5, ls=":")
    ax.set_xscale("symlog", linthresh=1.0)
    ax.set_yscale("symlog", linthresh=1.0)
    ax.set_xlabel(f"$M$, {label(p['families'][0])} (nats)")
    ax.set_ylabel(f"$M$, {label(p['families'][1])} (nats)")
    ax.legend(fontsize=4.5, markerscale=1.5, loc="upper left")


def overlaps(p: dict) -> list[tuple[str, int, int, int]]:
    """(what, only a, both, only b) for the top fraction and, where both have them, the flags."""
    ta, tb = set(p["top_a"].tolist()), set(p["top_b"].tolist())
    out = [("top by $M$", len(ta - tb), len(ta & tb), len(tb - ta))]
    if p["flagged_a"] is not None and p["flagged_b"] is not None:
        fa, fb = p["flagged_a"] == 1, p["flagged_b"] == 1
        out.append(("flagged", int((fa & ~fb).sum()), int((fa & fb).sum()),
                    int((fb & ~fa).sum())))
    return out


def _bars(ax, p: dict) -> None:
    rows = overlaps(p)
    names = [label(r) for r in p["families"]]
    for i, (what, only_a, both, only_b) in enumerate(rows):
        left = 0
        for k, (value, color) in enumerate(((only_a, SERIES_COLORS[1]),
                                            (both, COLORS["memorized"]),
                                            (only_b, SERIES_COLORS[2]))):
            ax.barh(i, value, left=left, color=color,
                    label=(f"{names[0]} only", "both", f"{names[1]} only")[k] if i == 0 else None)
            if value:
                ax.text(left + value / 2, i, str(value), ha="center", va="center", fontsize=5)
            left += value
    ax.set_yticks(range(len(rows)), [r[0] for r in rows])
    ax.set_ylim(len(rows) - 0.5, -1.4)   # top to bottom, room for the legend above the bars
    ax.set_xlabel("examples")
    ax.legend(fontsize=5, loc="upper right", ncol=3, handlelength=1, columnspacing=0.8)


def _images(fig, spec, p: dict, images, panel: str) -> None:
    grid = spec.subgridspec(2, 1, hspace=0.35)
    for k, key in enumerate(("only_a", "only_b")):
        ax = fig.add_subplot(grid[k])
        ax.set_axis_off()
        name = label(p["families"][k])
        if images is None or not len(images[key]):
            ax.text(0.5, 0.5, "no images" if images is None else "none", ha="center",
                    va="center", fontsize=6, transform=ax.transAxes)
        else:
            show(ax, mosaic(images[key], 1, SHOWN, gap=1), upscale=2)
        ax.set_title(f"({panel}) {name} only" if k == 0 else f"{name} only", loc="left")


def figure(doc: dict, images: list | None) -> Figure:
    pairs = doc["pairs"]
    fig = Figure(figsize=(TEXTWIDTH, 2.1 * len(pairs)), layout="constrained")
    spec = fig.add_gridspec(len(pairs), 3, width_ratios=[1.0, 0.9, 1.2])
    for i, p in enumerate(pairs):
        ax = fig.add_subplot(spec[i, 0])
        _scatter(ax, p)
        ax.set_title(f"({chr(97 + 3 * i)}) {tex_escape(p['data'])}: $M$ per example",
                     loc="left")
        ax = fig.add_subplot(spec[i, 1])
        _bars(ax, p)
        ax.set_title(f"({chr(98 + 3 * i)}) overlap, top ${100 * doc['top']:g}\\,\\%$",
                     loc="left")
        _images(fig, spec[i, 2], p, None if images is None else images[i], chr(99 + 3 * i))
    return fig


def _auroc(row: dict, key: str) -> str:
    v = row[f"auroc_{key}"]
    if v is None:
        return "--"
    lo, hi = row[f"auroc_{key}_low"], row[f"auroc_{key}_high"]
    return num(v, 2) + ("" if lo is None else f" ({num(lo, 2)}--{num(hi, 2)})")


def table(doc: dict) -> dict:
    """The numbers beside the figure: one row per family and data set."""
    columns = ["family (data)", r"held-out $\log p$", "$M$ median", r"$M$ 95\,\%",
               r"$M$ 99.9\,\%", "flags", "controls flagged", "AUROC rare", "AUROC one-offs",
               "CPU min"]
    rows = []
    for p in doc["pairs"]:
        for r in p["families"]:
            ctl = ("--" if r["controls"] is None
                   else pct(r["controls_flagged"] / r["controls"]))
            rows.append([f"{label(r)} ({tex_escape(p['data'])})",
                         "--" if r["heldout_log_p"] is None else num(r["heldout_log_p"], 4),
                         num(r["M_median"]), num(r["M_95"]), num(r["M_99.9"]),
                         "--" if r["flags"] is None else count(r["flags"]), ctl,
                         _auroc(r, "rare"), _auroc(r, "oneoff"),
                         "--" if r["cpu_minutes"] is None else num(r["cpu_minutes"], 2)])
    return {"columns": columns, "rows": rows}


def caption(doc: dict) -> str:
    top = pct(doc["top"])
    text = ("Which examples two model families memorize on the same training set, with the "
            "same $K$, $L$ and splits. Per data set: (left) $M$ of each example under both "
            "families (symmetric log axes, dotted: equal), coloured by which family flags it "
            "(Benjamini--Hochberg)")
    if any(p["role"] is not None for p in doc["pairs"]):
        text += ", planted examples outlined"
    text += (f"; (middle) the examples in each family's top {top} by $M$ and its flags, and "
             "those in both; (right) images in one family's top "
             f"{top} and below the other's median $M$, the largest difference first. ")
    for p in doc["pairs"]:
        a, b = (label(r) for r in p["families"])
        text += (f"{tex_escape(p['data'])} ({tex_escape(p['families'][0]['experiment'])}, "
                 f"{tex_escape(p['families'][1]['experiment'])}; $n = {count(p['n'])}$): "
                 f"Spearman of $M$ {num(p['spearman'], 2)}; {pct(p['top_overlap'])} of {a}'s "
                 f"top {top} is also {b}'s (chance {top})")
        if p.get("flags_a") is not None:
            text += (f"; flags {count(p['flags_a'])} ({a}) and {count(p['flags_b'])} ({b}), "
                     f"{count(p['flags_both'])} by both")
        text += ". "
    text += ("The planted AUROC is $M$'s for the rare-class singletons and for the one-offs "
             "against the regular examples (95\\,\\% bootstrap intervals), as the planted "
             "benchmark reports it. With few repeats each family's own ranking is noisy "
             "(its split-half reliability), which bounds how far two families can agree.")
    return text


def make(summaries, *, families=None, **_) -> Result:
    title = "Which examples each family memorizes"
    if families is None or not families["pairs"]:
        return placeholder(title, "no family comparison file")
    return Result(figure(families, example_images(families)), caption(families), title,
                  info={"table": table(families),
                        "pairs": [[r["experiment"] for r in p["families"]]
                                  for p in families["pairs"]]})

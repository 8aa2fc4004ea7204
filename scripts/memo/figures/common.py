"""Shared pieces of the figures: reading the training images, style, data-driven bins, image
mosaics, and writing one figure as `.pgf`, LaTeX-typeset `.pdf`, `.png` preview and `.tex`
wrapper. Summaries, nearest-neighbour and measures files are read by their owners in memo/files.
"""
from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import matplotlib
import numpy as np
from matplotlib.colors import to_rgb
from matplotlib.figure import Figure

from memo import fileio
from memo.files.summary import Summary, SummaryError

HIGH_Q = 0.95          # "top 5 % by M": final-epoch M above its 95th percentile (paper figures)
TEXTWIDTH = 6.3        # inches; figures are drawn at the size they are printed
PNG_DPI = 150
COLORS = {"regular": "#0072B2", "memorized": "#E69F00", "line": "#555555"}
SERIES_COLORS = ["#0072B2", "#D55E00", "#009E73", "#CC79A7", "#56B4E9", "#E69F00"]

# One preamble for matplotlib's text metrics, the standalone wrappers and the report.
PREAMBLE = r"\usepackage[T1]{fontenc}\usepackage{lmodern}"
# Needed by every document that \input's a matplotlib .pgf file.
PGF_SUPPORT = r"\usepackage{pgf}\def\mathdefault#1{#1}\usepackage[strings]{underscore}"
# Reproducible PDFs: no dates, no trailer ID, no file names (pdfTeX); the LuaTeX equivalent
# suppresses PTEX.* (1+2+4+8), dates (32+64), Trapped (256) and the ID (512).
REPRODUCIBLE = "\n".join([
    r"\ifdefined\pdfinfoomitdate \pdfinfoomitdate=1 \pdftrailerid{} \pdfsuppressptexinfo=-1 \fi",
    r"\ifdefined\pdfvariable \pdfvariable suppressoptionalinfo 879 \fi",
])


def warn(msg: str, once: str | None = None) -> None:
    """One line on stderr; with `once`, only the first time per process for that key."""
    if once is not None:
        if once in _WARNED:
            return
        _WARNED.add(once)
    print(f"warning: {msg}", file=sys.stderr, flush=True)


_WARNED: set[str] = set()


# ----------------------------------------------------------------------------------------------
# inputs

def load_images(summary: Summary) -> np.ndarray | None:
    """uint8 (n, C, H, W) training images in the summary's order, or None (one warning line)."""
    images = training_images(summary.meta["data"], summary.name)
    if images is None:
        return None
    if summary.index.size and summary.index.max() >= len(images):
        raise SummaryError(f"{summary.path}: index up to {summary.index.max()} but "
                           f"{summary.meta['data']} has {len(images)} training images")
    return images[summary.index]


def training_images(data_name: str, what: str) -> np.ndarray | None:
    """uint8 (N, C, H, W): every training image of a data set, or None (one warning line
    naming `what` wanted them) when its files are missing."""
    from memo import data  # imports torch: only when images are wanted
    try:
        d = data.load(data_name, "train")
    except data.DataMissingError as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        warn(f"no images for {what} ({first}); image panels are left out")
        return None
    return np.asarray(d.images)


# ----------------------------------------------------------------------------------------------
# numbers

def finite(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=float)
    return x[np.isfinite(x)]


def highly_memorized(M: np.ndarray, q: float = HIGH_Q) -> tuple[np.ndarray, float]:
    """(mask of the top 1-q share of finite M by percentile, the threshold)."""
    M = np.asarray(M, dtype=float)
    ok = np.isfinite(M)
    if not ok.any():
        return np.zeros(M.shape, bool), math.nan
    thr = float(np.quantile(M[ok], q))
    return ok & (M >= thr), thr


def flag_info(s: Summary) -> dict | None:
    """The calibrated flag of a summary (memo/score/calibration.py), None when it has none: mask of
    examples flagged by Benjamini–Hochberg, q, their count, and whether the design can flag."""
    if not s.calibrated or not isinstance(s.calibration, dict):
        return None  # also a summary with p-values but no record of how they were made
    c = s.calibration
    q = float(c.get("fdr_q", math.nan))
    min_p = float(c.get("min_p", math.nan))
    return {"mask": np.asarray(s.memorized, bool), "count": int(np.sum(s.memorized)),
            "n": s.n, "q": q, "min_p": min_p, "exact": bool(c.get("exact")),
            "labellings": c.get("labellings_used"), "can_flag": bool(min_p <= q / s.n),
            "needed": c.get("needed_at_min_p"), "test": c.get("test", "permutation")}


TEST_NAMES = {"moderated-t": "moderated repeat-paired $t$-test", "t": "repeat-paired $t$-test",
              "permutation": "permutation $p$-values"}


def controls_text(s: Summary) -> str:
    """One LaTeX sentence on the control images: the measured false-positive rate of the flag,
    or that there is none (the authors' method and archive have no controls)."""
    ctl = (s.calibration or {}).get("controls")
    if not ctl:
        return ("This experiment has no control images (none asked for, data without a test "
                "split, or the authors' method and their published results, which have none): "
                "the false-positive rate of the flag is not measured. ")
    lo, hi = ctl["rate_ci"]
    text = (f"Control images, never trained on and scored alike: {count(ctl['flagged'])} of "
            f"{count(ctl['n'])} pass BH's boundary for these flags ({pct(ctl['rate'])}, 95"
            r"\,\% "
            f"interval {pct(lo)}--{pct(hi)})")
    if np.isfinite(ctl.get("fdr_estimate", np.nan)):
        text += (f"; the false discovery rate they imply is {pct(ctl['fdr_estimate'])} "
                 f"(95\\,\\% upper bound {pct(ctl['fdr_upper'])})")
    return text + ". "


def flag_label(info: dict) -> str:
    return rf"flagged (BH, $q = {short(100 * info['q'])}\%$)"


def flag_text(s: Summary) -> str:
    """One LaTeX sentence on the calibrated flag: how many, or why none can be."""
    info = flag_info(s)
    if info is None:
        return ("This summary has no calibration (made before it, or with "
                "\\texttt{-{}-n-perm 0}): no observation is flagged. ")
    q = rf"$q = {short(100 * info['q'])}$\,\%"
    if info["can_flag"] or info["count"]:
        return (f"Flagged as memorized ({TEST_NAMES[info['test']]}) by Benjamini--Hochberg at "
                f"{q}: {count(info['count'])} of {count(info['n'])} observations "
                f"({pct(info['count'] / info['n'])}). " + controls_text(s))
    how = (f"all $K^L = {count(info['labellings'])}$ labellings" if info["exact"] else
           f"$B = {count(info['labellings'])}$ drawn labellings")
    return (f"No observation is flagged, and none can be: the smallest attainable p-value, "
            f"{num(info['min_p'])} ({how}), is above the first Benjamini--Hochberg threshold "
            f"$q/n = {sci(info['q'] / info['n'])}$ at {q} (it would take "
            f"{count(info['needed'])} observations at that p-value); flagging even one needs "
            f"at least $n/q = {count(math.ceil(info['n'] / info['q'] - 1e-9))}$ labellings. ")


def sci(x: float) -> str:
    """x in LaTeX scientific notation with 2 significant digits (math mode body)."""
    if x is None or not np.isfinite(x):
        return "n/a"
    m, e = f"{x:.1e}".split("e")
    return rf"{m} \times 10^{{{int(e)}}}" if int(e) else m


def nice_step(raw: float) -> float:
    """The smallest of 1, 2, 2.5, 5 times a power of ten that is >= raw."""
    if not np.isfinite(raw) or raw <= 0:
        return 1.0
    e = 10.0 ** math.floor(math.log10(raw))
    for m in (1, 2, 2.5, 5, 10):
        if m * e >= raw * (1 - 1e-9):
            return m * e
    return 10 * e


def nice_edges(lo: float, hi: float, target: int = 30) -> np.ndarray:
    """Bin edges of a round width covering [lo, hi] with about `target` bins."""
    if not (np.isfinite(lo) and np.isfinite(hi)):
        raise ValueError(f"cannot bin the range [{lo}, {hi}]")
    span = hi - lo if hi > lo else max(abs(lo), 1.0) / 10
    step = nice_step(span / max(target, 1))
    start = math.floor(lo / step + 1e-9) * step
    stop = math.ceil(hi / step - 1e-9) * step
    if stop <= start:
        stop = start + step
    return start + step * np.arange(round((stop - start) / step) + 1)


def edges_for(values, target: int = 30, q: tuple[float, float] = (0.0, 1.0)) -> np.ndarray:
    """nice_edges over the [q0, q1] quantile range of the finite values."""
    v = finite(values)
    if v.size == 0:
        return np.array([0.0, 1.0])
    lo, hi = np.quantile(v, q)
    return nice_edges(float(lo), float(hi), target)


def bin_of(values: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """Bin number of each value, values beyond the edges pooled into the end bins."""
    return np.clip(np.searchsorted(edges, values, side="right") - 1, 0, len(edges) - 2)


def lr_label(lr) -> str:
    r"""$\eta = 10^{-3}$ for powers of ten, else $\eta = 0.0003$."""
    if lr is None or lr <= 0:
        return "lr ?" if lr is None else rf"$\eta = {lr:g}$"
    e = math.log10(lr)
    body = f"10^{{{round(e)}}}" if abs(e - round(e)) < 1e-9 else f"{lr:g}"
    return rf"$\eta = {body}$"


def series_labels(summaries: list[Summary]) -> list[str]:
    """Legend labels: the learning rate when only it differs, else data set and rate, else
    the experiment names."""
    rates = [lr_label(s.meta.get("lr")) for s in summaries]
    if len({s.dataset for s in summaries}) == 1 and len(set(rates)) == len(rates):
        return rates
    both = [f"{s.dataset}, {r}" for s, r in zip(summaries, rates)]
    if len(set(both)) == len(both):
        return both
    return [s.name for s in summaries]


def short(x: float, digits: int = 3) -> str:
    """3 significant digits without exponent (whole numbers from 100 on), for figure text."""
    if x is None or not np.isfinite(x):
        return "n/a"
    if abs(x) >= 100:
        return f"{x:.0f}"
    s = f"{x:.{digits}g}"
    return f"{x:.{digits}f}".rstrip("0").rstrip(".") if "e" in s else s


def num(x: float, digits: int = 3) -> str:
    """A number for captions: short(), thousands separated, minus sign in math mode."""
    s = short(x, digits)
    if s == "n/a":
        return s
    if abs(x) >= 1000:
        s = f"{x:,.0f}".replace(",", "{,}")
    return f"${s}$" if s.startswith("-") else s


def count(n: int) -> str:
    """An integer with LaTeX thousands separators."""
    return f"{int(n):,}".replace(",", "{,}")


def pct(x: float) -> str:
    if not np.isfinite(x):
        return "n/a"
    return f"{100 * x:.1f}\\,\\%" if x >= 0.001 or x == 0 else f"{100 * x:.2g}\\,\\%"


def tex_escape(s: str) -> str:
    """Plain text for a LaTeX document."""
    return "".join(_TEX_SPECIAL.get(c, c) for c in str(s))


_TEX_SPECIAL = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#",
                "_": r"\_", "{": r"\{", "}": r"\}", "~": r"\~{}", "^": r"\^{}"}


# ----------------------------------------------------------------------------------------------
# images

def mosaic(images: np.ndarray, rows: int, cols: int, frames: list | None = None,
           frame: int = 2, gap: int = 2) -> np.ndarray:
    """Tile uint8 (k, C, H, W) images row by row into one RGB array (white gaps).

    frames: a colour per image (hex or None) drawn as a `frame`-pixel border.
    """
    images = np.asarray(images)
    k, C, H, W = images.shape
    f = frame if frames is not None else 0
    th, tw = H + 2 * f, W + 2 * f
    out = np.full((rows * th + (rows - 1) * gap, cols * tw + (cols - 1) * gap, 3), 255, np.uint8)
    for i in range(min(k, rows * cols)):
        r, c = divmod(i, cols)
        y, x = r * (th + gap), c * (tw + gap)
        img = images[i].transpose(1, 2, 0)                 # (H, W, C)
        img = np.repeat(img, 3, axis=2) if C == 1 else img[..., :3]
        if f:
            rgb = np.array(to_rgb(frames[i] or "white")) * 255
            out[y:y + th, x:x + tw] = rgb.astype(np.uint8)
        out[y + f:y + f + H, x + f:x + f + W] = img
    return out


def show(ax, img: np.ndarray, upscale: int = 4) -> None:
    """An image without axes; pixels repeated `upscale` times so that PDF viewers which
    smooth images anyway keep them sharp (the PGF backend writes the array as it is)."""
    img = np.repeat(np.repeat(img, upscale, axis=0), upscale, axis=1)
    ax.imshow(img, interpolation="none")
    ax.set_axis_off()


# ----------------------------------------------------------------------------------------------
# one figure: drawing result and writing it

@dataclass
class Result:
    fig: Figure
    caption: str                       # LaTeX, with the actual numbers
    title: str                         # short name for lists
    skip: str | None = None            # why there is nothing to show (report leaves it out)
    info: dict = field(default_factory=dict)


def placeholder(title: str, reason: str) -> Result:
    """A small figure saying why a figure is not available, so Make's targets still exist."""
    fig = Figure(figsize=(3.5, 0.6))
    fig.text(0.5, 0.5, f"{title}: not available ({reason})", ha="center", va="center")
    return Result(fig, "", title, skip=reason)


def latex_engine() -> str | None:
    """pdflatex (fast) or lualatex, None when neither is installed or MEMO_NO_LATEX is set."""
    if os.environ.get("MEMO_NO_LATEX"):
        return None
    for engine in ("pdflatex", "lualatex"):
        if shutil.which(engine):
            return engine
    return None


def rc(engine: str | None = None) -> dict:
    return {
        "font.family": "serif", "font.size": 8, "axes.titlesize": 8, "axes.labelsize": 8,
        "legend.fontsize": 7, "xtick.labelsize": 7, "ytick.labelsize": 7,
        "axes.linewidth": 0.6, "xtick.major.width": 0.6, "ytick.major.width": 0.6,
        "lines.linewidth": 1.0, "patch.linewidth": 0.5, "legend.frameon": False,
        "axes.spines.top": False, "axes.spines.right": False,
        "mathtext.fontset": "dejavuserif", "image.interpolation": "none",
        "pgf.texsystem": engine or "pdflatex", "pgf.rcfonts": False, "pgf.preamble": PREAMBLE,
        "savefig.dpi": 300,    # rasterized parts of PGF files
    }


@contextlib.contextmanager
def style(engine: str | None = None):
    with matplotlib.rc_context(rc(engine)):
        yield


def wrapper_tex(name: str) -> str:
    return "\n".join([
        f"% Standalone page for {name}.pgf; compile in this folder: pdflatex {name}.tex",
        "% To use the figure in a paper, put the lines of PGF_SUPPORT in its preamble and",
        f"% \\input{{{name}.pgf}} (with the {name}-img*.png files reachable, e.g. \\import).",
        REPRODUCIBLE,
        r"\documentclass{standalone}",
        PREAMBLE, PGF_SUPPORT,
        r"\begin{document}",
        rf"\input{{{name}.pgf}}",
        r"\end{document}", ""])


def run_latex(cmd: list[str], cwd: Path, log: Path) -> None:
    env = {**os.environ, "SOURCE_DATE_EPOCH": "0", "FORCE_SOURCE_DATE": "1"}
    p = subprocess.run(cmd, cwd=cwd, env=env, stdin=subprocess.DEVNULL,
                       stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=600)
    if p.returncode != 0:
        text = (log.read_text(errors="replace") if log.exists()
                else p.stdout.decode(errors="replace"))
        tail = "\n".join(text.splitlines()[-25:])
        raise RuntimeError(f"{' '.join(cmd)} failed in {cwd}:\n{tail}")


def save(result: Result, out_dir: str | os.PathLike, name: str, meta: dict | None = None,
         engine: str | None = "auto") -> list[Path]:
    """Write <name>.pgf/.tex/.pdf/.png/.json into out_dir; every file lands by os.replace.

    Everything is built in a private temporary folder first (the PGF backend names its
    external images after the .pgf file, so the folder keeps the final names).
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if engine == "auto":
        engine = latex_engine()
    fileio.remove_stale_dirs(out_dir, f".{name}-")  # of runs killed before their renames
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}-{os.getpid()}-", dir=out_dir))
    try:
        fig = result.fig
        with style(engine):
            if engine:
                fig.savefig(tmp / f"{name}.pgf")
                (tmp / f"{name}.tex").write_text(wrapper_tex(name))
                run_latex([engine, "-interaction=nonstopmode", "-halt-on-error", f"{name}.tex"],
                          tmp, tmp / f"{name}.log")
            else:
                warn("no LaTeX (pdflatex or lualatex) found: PDFs are drawn by matplotlib and "
                     "each .pgf only includes its PDF", once="no-latex")
                fig.savefig(tmp / f"{name}.pdf", metadata={"CreationDate": None})
                (tmp / f"{name}.pgf").write_text(
                    f"% LaTeX was not available when this figure was made: this stand-in\n"
                    f"% includes matplotlib's PDF. Rebuild with LaTeX installed for real PGF.\n"
                    f"\\includegraphics{{{name}.pdf}}\n")
                (tmp / f"{name}.tex").write_text(wrapper_tex(name))
            fig.savefig(tmp / f"{name}.png", dpi=PNG_DPI)
        doc = {"name": name, "title": result.title, "caption": result.caption,
               "skip": result.skip, "latex": engine, **(meta or {}), **result.info}
        (tmp / f"{name}.json").write_text(json.dumps(doc, indent=1, sort_keys=True) + "\n")

        images = sorted(tmp.glob(f"{name}-img*.png"))
        for old in out_dir.glob(f"{name}-img*.png"):
            if not (tmp / old.name).exists():
                old.unlink()
        written = []
        # Images first, the .json (the report's input) last.
        for p in images + [tmp / f"{name}.{x}" for x in ("pgf", "tex", "png", "pdf", "json")]:
            os.replace(p, out_dir / p.name)
            written.append(out_dir / p.name)
        return written
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

"""The report: one LaTeX document with every figure that was built (its caption comes from
the figure's .json), and a table of key numbers per experiment, compiled with latexmk.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
import textwrap
from pathlib import Path

import numpy as np
from scipy import stats

from memo import fileio
from memo.config.experiments import PAPER_EXPERIMENTS
from memo.files import measures as measures_file
from memo.files import neighbours as neighbours_file
from memo.files import summary
from memo.files.summary import Summary
from memo.score import privacy

from . import FIGURES
from .common import (HIGH_Q, PREAMBLE, REPRODUCIBLE, TEST_NAMES, count, finite, flag_info,
                     flag_text,
                     highly_memorized, latex_engine, lr_label, num, pct,
                     run_latex, sci, short, tex_escape, warn)
from .uncertainty import ess_summary

TABLE_COLUMNS = 4   # experiments per table (a wider table would not fit the page)


def key_numbers(s: Summary, nn=None, ms=None) -> list[tuple[str, str]]:
    """(row label, LaTeX value) for the table of one experiment (nn: its nearest-neighbour
    file, ms: its other measures, when they exist)."""
    M, U = s.M_final, s.U_final
    m = finite(M)
    q = np.quantile(m, [0.5, 0.95, 0.99, 0.999]) if m.size else [np.nan] * 4

    def spearman(x, y):
        ok = np.isfinite(x) & np.isfinite(y)
        return num(stats.spearmanr(x[ok], y[ok])[0], 2) if ok.sum() > 2 else "--"

    L = s.repeats
    h = s.meta.get("split_half_repeats") or [L // 2, L - L // 2]
    fi = flag_info(s)
    Mc = s.M_corrected
    mc = finite(Mc)
    cal = s.calibration
    flagged = min_p = bias = controls = fdr = pi1 = "--"
    if fi is not None:
        flagged = f"{count(fi['count'])} ({pct(fi['count'] / s.n)})"
        min_p = ("none ($t$-test)" if fi["test"] != "permutation" else num(fi["min_p"]) + (
            "" if fi["can_flag"] else rf" ($> q/n = {sci(fi['q'] / s.n)}$)"))
        bias = num(float(np.nanmedian(s.null_mean)))
        ctl = cal.get("controls")
        controls = "none (not measured)"
        if ctl:
            lo, hi = ctl["rate_ci"]
            controls = (f"{count(ctl['flagged'])} of {count(ctl['n'])} ({pct(ctl['rate'])}; "
                        f"{pct(lo)}--{pct(hi)})")
            if np.isfinite(ctl.get("fdr_estimate", np.nan)):
                fdr = f"{pct(ctl['fdr_estimate'])} (upper bound {pct(ctl['fdr_upper'])})"
        if "pi1" in cal:
            lo, hi = cal["pi1_ci"]
            pi1 = f"{pct(cal['pi1'])} ({pct(lo)}--{pct(hi)})"
    q_label = (rf"$q = {short(100 * cal['fdr_q'])}\,\%$" if cal.get("fdr_q") else "$q$")

    def rel(x):
        return num(x, 2) if np.isfinite(x) else "--"

    ess = ess_summary(s)
    ess_median = ess_low = "--"
    if not (np.isnan(ess["median_in"]) and np.isnan(ess["median_out"])):
        ess_median = f"{num(ess['median_in'])} / {num(ess['median_out'])}"
        if ess["threshold"] is not None:
            ess_low = (f"{pct(ess['below_in'])} / {pct(ess['below_out'])} "
                       f"($<{num(ess['threshold'])}$)")
    test = TEST_NAMES[fi["test"]] if fi is not None else "--"
    return [
        (f"flagged as memorized (BH, {q_label})", flagged),
        (r"control images flagged (false positives; 95\,\% interval)", controls),
        ("false discovery rate estimated from the controls", fdr),
        (r"share whose $\log p$ rises when trained on (Storey's $\pi_1$)", pi1),
        ("test", test),
        ("smallest attainable $p$", min_p),
        ("median bias (null mean of $M$)", bias),
        ("median of $M_{\\mathrm{corrected}}$", num(float(np.median(mc))) if mc.size else "--"),
        ("share with $M_{\\mathrm{corrected}} > 0$",
         pct(float((mc > 0).mean())) if mc.size else "--"),
        ("data set", tex_escape(s.dataset)),
        ("learning rate", lr_label(s.meta.get("lr"))),
        ("$n$", count(s.n)),
        ("folds $K$", str(s.meta.get("folds", "--"))),
        ("repeats $L$", str(s.repeats or s.meta.get("repeats", "--")) + (
            " (intervals: range of 3 bootstrap replicates)" if s.repeats == 2 else "")),
        ("epochs (last evaluated)", f"{s.meta.get('epochs', '--')} ({s.epochs[-1]})"),
        ("median of $M$", num(q[0])),
        ("95\\,\\% quantile of $M$", num(q[1])),
        ("99\\,\\% quantile of $M$", num(q[2])),
        ("99.9\\,\\% quantile of $M$", num(q[3])),
        ("share with $M > 0$", pct(float((m > 0).mean())) if m.size else "--"),
        ("Spearman of $M$ with $U$", spearman(M, U)),
        ("Spearman of $M$ with $\\rho$", spearman(M, nn.rho) if nn is not None else "--"),
        ("Spearman of $M$ with the closest other measure", closest_measure(ms)),
        (f"split-half Spearman of $M$ ({h[0]} vs {h[1]} repeats)", rel(s.split_half)),
        (f"Spearman--Brown reliability of $M$ ({L} repeats)", rel(s.reliability)),
        ("the same for $M_{\\mathrm{corrected}}$", f"{rel(s.split_half_corrected)} / "
         f"{rel(s.reliability_corrected)}" if np.isfinite(s.split_half_corrected) else "--"),
        ("median ESS, in / out", ess_median),
        ("ESS below the threshold, in / out", ess_low),
    ] + privacy_rows(s)


def privacy_rows(s: Summary) -> list[tuple[str, str]]:
    """A private experiment's bound on M from its fold models' guarantee (docs/privacy.md);
    "--" for the others (every experiment of a table has the same rows)."""
    bound = privacy.summary_bound(s)
    ok = (np.isfinite(bound) & np.isfinite(s.M_final)) if bound is not None else None
    median = above = "--"
    if ok is not None and ok.any():
        median = num(float(np.median(bound[ok])))
        above = pct(float((s.M_final[ok] > bound[ok]).mean()))
    return [("privacy bound on $M$, median (R\\'enyi DP)", median),
            ("share with $M$ above the privacy bound", above)]


def closest_measure(ms) -> str:
    """The one-model measure whose ranking is closest to M's (memo/measures/), with its
    Spearman correlation over the regular examples: '0.21 (self-influence)'."""
    if ms is None:
        return "--"
    from memo.measures import measures
    rows = [r for r in measures.benchmark(ms, n_boot=0) if r["measure"] in measures.ONE_MODEL
            and np.isfinite(r["spearman_M"])]
    if not rows:
        return "--"
    best = max(rows, key=lambda r: r["spearman_M"])
    return f"{num(best['spearman_M'], 2)} ({measures.MEASURES[best['measure']]})"


def calibration_lines(s: Summary) -> str:
    """LaTeX: one experiment's calibrated result in a few sentences."""
    mcorr = "$M_{\\mathrm{corrected}}$"
    text = (f"\\textbf{{{tex_escape(s.name)}}} ($n = {count(s.n)}$, "
            f"$K = {s.meta.get('folds', '?')}$, $L = {s.repeats}$). " + flag_text(s))
    if not s.calibrated:
        return text
    mc = finite(s.M_corrected)
    text += (f"Median bias {num(float(np.nanmedian(s.null_mean)))} nats, median {mcorr} "
             f"{num(float(np.median(mc)))}, {pct(float((mc > 0).mean()))} above 0 (median $M$ "
             f"{num(float(np.nanmedian(s.M_final)))}). ")
    hi, _ = highly_memorized(s.M_final, HIGH_Q)
    if hi.any():
        text += (f"Of the {count(int(hi.sum()))} observations in the top 5\\,\\% by $M$, "
                 f"{count(int((s.memorized & hi).sum()))} are flagged and "
                 f"{count(int((s.M_corrected[hi] > 0).sum()))} have {mcorr} $> 0$. ")
    return text


def calibration_tex(summaries: list[Summary]) -> str:
    if not summaries:
        return "No summaries were given."
    return "\n\n".join(calibration_lines(s) for s in summaries)


def table_tex(summaries: list[Summary], inputs: list) -> str:
    if not summaries:
        return "No summaries were given."
    rows = [key_numbers(s, *extra) for s, extra in zip(summaries, inputs)]
    out = []
    for start in range(0, len(summaries), TABLE_COLUMNS):
        cols = range(start, min(start + TABLE_COLUMNS, len(summaries)))
        out += [r"\begin{tabular}{l" + "r" * len(cols) + "}", r"\toprule",
                " & ".join([""] + [tex_escape(summaries[c].name) for c in cols]) + r" \\",
                r"\midrule"]
        for i, (label, _) in enumerate(rows[0]):
            out.append(" & ".join([label] + [rows[c][i][1] for c in cols]) + r" \\")
        out += [r"\bottomrule", r"\end{tabular}", r"\par\bigskip"]
    return "\n".join(out)


def figure_table_tex(doc: dict) -> str:
    """The table a figure carries in its .json ({"columns": [...], "rows": [[...]]}), set
    beside it with the figure's title."""
    t = doc["table"]
    wide = len(t["columns"]) > 6   # scaled to the text width rather than past the margin
    out = [r"\begin{table}[htbp]", r"\centering\small",
           rf"\caption{{{tex_escape(doc.get('title', ''))}: the numbers}}",
           *([r"\resizebox{\linewidth}{!}{%"] if wide else []),
           r"\begin{tabular}{l" + "r" * (len(t["columns"]) - 1) + "}", r"\toprule",
           " & ".join(t["columns"]) + r" \\", r"\midrule"]
    out += [" & ".join(row) + r" \\" for row in t["rows"]]
    out += [r"\bottomrule", r"\end{tabular}", *(["}"] if wide else []), r"\end{table}"]
    return "\n".join(out)


def _order(key: str, experiments: list[str]) -> tuple:
    first = experiments[0] if experiments else key
    rank = PAPER_EXPERIMENTS.index(first) if first in PAPER_EXPERIMENTS else len(PAPER_EXPERIMENTS)
    return (len(experiments) < 2, rank, key)   # comparisons first, then the paper's order


def sections(figure_docs: list[tuple[Path, dict]]) -> list[tuple[str, list, list]]:
    """[(group, [(pdf path, doc)], [skipped docs])] in report order."""
    groups: dict[str, list] = {}
    for path, doc in figure_docs:
        groups.setdefault(doc.get("group") or path.parent.name, []).append((path, doc))
    out = []
    for g, items in groups.items():
        items.sort(key=lambda it: FIGURES.index(it[1]["figure"]) if it[1].get("figure") in FIGURES
                   else len(FIGURES))
        shown = [(p.with_suffix(".pdf"), d) for p, d in items if not d.get("skip")]
        skipped = [d for _, d in items if d.get("skip")]
        out.append((g, shown, skipped, items[0][1].get("experiments", [])))
    out.sort(key=lambda t: _order(t[0], t[3]))
    return [(g, shown, skipped) for g, shown, skipped, _ in out]


INTRO = r"""
The memorization score of training example $x_i$ is
$M_i = \log P_{\mathcal{A}}(x_i \mid \mathcal{D}) - \log P_{\mathcal{A}}(x_i \mid
\mathcal{D} \setminus \{x_i\})$ (nats): how much more probable the learning algorithm makes
$x_i$ when it is part of the training set. Both terms are estimated by $K$-fold cross-fitting
repeated $L$ times: $U_i$ averages, in probability space, the model probabilities of $x_i$
over the models that trained on it, $V_i$ over those that held it out, and $M_i = U_i - V_i$.
The figures mark the top 5\,\% of observations by $M$ (by percentile): a ranking, not a
test.
Unless a figure shows epochs, it uses the scores at the last evaluated epoch.

The score is biased upward even when nothing is memorized: a log-mean-exp of more draws of one
distribution is larger, and $U_i$ averages $(K-1)L$ values where $V_i$ averages $L$. So neither
$M_i > 0$ nor the top 5\,\% says that $x_i$ is memorized. The calibrated scores correct for this
without training anything new. If training on $x_i$ does not change the model's $\log p(x_i)$,
the model that held $x_i$ out is, within each repeat, exchangeable with the $K-1$ models that
trained on it: which one held it out was decided by the random partition alone. Recomputing
$M_i$ with every other choice of held-out model per repeat ($K^L$ labellings, enumerated, or a
random sample of them) gives the null distribution of $M_i$: its mean is the bias for $x_i$,
$M_{\mathrm{corrected}} = M_i - \text{bias}$, and the share of labellings scoring at least $M_i$
is a permutation p-value, whose smallest value $1/K^L$ is too large to flag anything at small
designs. Our flags therefore come, unless a summary says otherwise, from a \emph{moderated
repeat-paired $t$-test}: per repeat, the mean of the $K-1$ in-values minus the held-out value,
against the in-values' spread, shrunk towards a variance prior fitted on all observations
(Smyth 2004). Observations are \emph{flagged as memorized} by the Benjamini--Hochberg procedure
over the p-values of an experiment, which keeps the expected share of false flags among the
flagged at $q$ when the p-values are valid. Whether they are is measured: \emph{control
images} from the test split, which no model trains on, are scored by every model and tested
alike; the share of them passing the threshold is the false-positive rate of the flag, and it
implies an estimate of the false discovery rate. Storey's $\pi_1$ estimates the share of
observations whose probability rises when trained on. The assumption fails when anything besides $x_i$ itself
systematically separates the held-out model from the others for $x_i$, such as in- and held-out
values computed in different ways; effects of one model on every example (one fold model simply
better than another) are permuted along and do not matter. The test detects that $x_i$'s
presence raises its probability, however small the effect; $M_{\mathrm{corrected}}$ says how large.
"""


def document(summaries, inputs, secs, rel) -> str:
    lines = [REPRODUCIBLE, r"\documentclass[10pt]{article}",
             r"\usepackage[a4paper,margin=2.2cm]{geometry}", PREAMBLE,
             r"\usepackage{graphicx,booktabs,amsmath,amssymb,placeins}",
             r"\usepackage[font=small,labelfont=bf]{caption}",
             r"\begin{document}",
             r"\begin{center}\Large Memorization in variational autoencoders: figures and key "
             r"numbers\end{center}", INTRO.strip(),
             r"\section{Calibrated scores}", calibration_tex(summaries),
             r"\section{Key numbers}",
             r"Per experiment, at the last evaluated epoch; $U$ is $\log P_{\mathcal{A}}(x_i \mid "
             r"\mathcal{D})$, $\rho$ the nearest-neighbour distance ratio, ESS the mean "
             r"importance-sampling effective sample size per example (in-fold / held-out models)."
             r" The split-half Spearman correlation compares scores from two halves of the "
             r"repeats and is the reliability of a score from half of them; the Spearman--Brown "
             r"value projects it to all $L$ repeats, the reliability of the score reported "
             r"(for $M_{\mathrm{corrected}}$: split-half / Spearman--Brown). A dash: not "
             r"available.", r"\begin{center}\small", table_tex(summaries, inputs),
             r"\end{center}"]
    for group, shown, skipped in secs:
        lines.append(rf"\section{{{tex_escape(group)}}}")
        if shown and len(shown[0][1].get("experiments", [])) > 1:
            lines.append("Experiments compared: "
                         + ", ".join(tex_escape(e) for e in shown[0][1]["experiments"]) + ".")
        for pdf, doc in shown:
            lines += [r"\begin{figure}[htbp]", r"\centering",
                      rf"\includegraphics{{{rel(pdf)}}}",
                      rf"\caption{{{doc['caption']}}}", r"\end{figure}"]
            if doc.get("table"):
                lines.append(figure_table_tex(doc))
        if skipped:
            lines.append("Not drawn: " + "; ".join(
                f"{tex_escape(d.get('title', d.get('name')))} ({tex_escape(d['skip'])})"
                for d in skipped) + ".")
        lines.append(r"\FloatBarrier")
    lines += [r"\end{document}", ""]
    return "\n".join(lines)


def build(summary_paths, figure_jsons, out_pdf, engine: str | None = "auto") -> Path:
    """Write out_pdf (and the .tex beside it) from the summaries and the figures' .json files."""
    out_pdf = Path(out_pdf)
    out_dir = out_pdf.parent
    out_dir.mkdir(parents=True, exist_ok=True)
    summaries = [summary.load(p) for p in summary_paths]
    inputs = [(neighbours_file.load_optional(neighbours_file.path_for(s.path), s.n),
               measures_file.load_optional(measures_file.path_for(s.path)))
              for s in summaries]
    docs = [(Path(p), json.loads(Path(p).read_text())) for p in figure_jsons]
    secs = sections(docs)
    if engine == "auto":
        engine = latex_engine()
    fileio.remove_stale_dirs(out_dir, f".{out_pdf.stem}-")  # of runs killed before their renames
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_pdf.stem}-{os.getpid()}-", dir=out_dir))
    try:
        if engine is None:
            warn(f"no LaTeX found: {out_pdf} is put together by matplotlib")
            _matplotlib_report(summaries, inputs, secs, tmp / out_pdf.name)
        else:
            rel = lambda p: os.path.relpath(p, out_dir).replace(os.sep, "/")
            tex = tmp / f"{out_pdf.stem}.tex"
            tex.write_text(document(summaries, inputs, secs, rel))
            latexmk = shutil.which("latexmk")
            if latexmk:
                cmd = [latexmk, "-pdflua" if engine == "lualatex" else "-pdf", "-silent",
                       "-interaction=nonstopmode", "-halt-on-error", f"-outdir={tmp.name}",
                       f"{tmp.name}/{tex.name}"]
                run_latex(cmd, out_dir, tmp / f"{out_pdf.stem}.log")
            else:
                for _ in range(2):   # second run for the float numbers
                    run_latex([engine, "-interaction=nonstopmode", "-halt-on-error",
                               f"-output-directory={tmp.name}", f"{tmp.name}/{tex.name}"],
                              out_dir, tmp / f"{out_pdf.stem}.log")
            os.replace(tex, out_pdf.with_suffix(".tex"))
            os.replace(tmp / f"{out_pdf.stem}.pdf", tmp / out_pdf.name)
        os.replace(tmp / out_pdf.name, out_pdf)
        return out_pdf
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


# ----------------------------------------------------------------------------------------------
# without LaTeX: the same content as pages of matplotlib

_PLAIN = {r"\,": " ", r"\%": "%", "{,}": ",", r"\_": "_", r"\log": "log", r"\mid": "|",
          r"\mathcal{A}": "A", r"\mathcal{D}": "D", r"\rho": "ρ", r"\times": "×", r"\pm": "±",
          r"\eta": "η", r"\leq": "≤", r"\setminus": "\\", r"\emph": "", r"\textbf": "",
          r"\mathrm{corrected}": "corrected", r"\text{bias}": "bias", "--": "–"}


def plain(tex: str) -> str:
    for a, b in _PLAIN.items():
        tex = tex.replace(a, b)
    return re.sub(r"[${}]", "", tex)


def _matplotlib_report(summaries, inputs, secs, path: Path) -> None:
    import matplotlib.image as mpimg
    from matplotlib.backends.backend_pdf import PdfPages
    from matplotlib.figure import Figure

    with PdfPages(path, metadata={"CreationDate": None}) as pdf:
        rows = [key_numbers(s, *extra) for s, extra in zip(summaries, inputs)]
        fig = Figure(figsize=(8.27, 11.69))
        fig.text(0.5, 0.95, "Memorization in variational autoencoders: key numbers",
                 ha="center", size=12)
        if rows:
            ax = fig.add_axes([0.4, 0.35, 0.55, 0.55])   # row labels go left of it
            ax.set_axis_off()
            cells = [[plain(r[i][1]) for r in rows] for i in range(len(rows[0]))]
            ax.table(cellText=cells, rowLabels=[plain(l) for l, _ in rows[0]],
                     colLabels=[s.name for s in summaries], loc="upper center")
        # the calibrated result leads, as in the LaTeX report
        text = "\n".join(textwrap.fill(plain(calibration_lines(s)), 110) for s in summaries)
        fig.text(0.05, 0.33, text, va="top", size=7)
        pdf.savefig(fig)
        for group, shown, _ in secs:
            for pdf_path, doc in shown:
                fig = Figure(figsize=(8.27, 11.69))
                fig.text(0.05, 0.96, f"{group}: {doc.get('title', '')}", size=11)
                img = mpimg.imread(pdf_path.with_suffix(".png"))
                h, w = img.shape[:2]
                ax = fig.add_axes([0.05, 0.93 - 0.9 * 8.27 / 11.69 * h / w, 0.9,
                                   0.9 * 8.27 / 11.69 * h / w])
                ax.imshow(img)
                ax.set_axis_off()
                text = "\n".join(textwrap.wrap(plain(doc["caption"]), 110))
                if doc.get("table"):
                    t = doc["table"]
                    text += "\n\n" + "\n".join(" | ".join(plain(c) for c in row)
                                                 for row in [t["columns"], *t["rows"]])
                fig.text(0.05, ax.get_position().y0 - 0.02, text, va="top", size=8)
                pdf.savefig(fig)

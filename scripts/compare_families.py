#!/usr/bin/env python3
"""Which examples each model family memorizes: pairs of experiments on the same training set.

Reads the summaries (analysis/<exp>.npz) of two experiments on the same data and subset,
e.g. the demo's VAE and its MADE (fashion_demo, fashion_demo_made), and prints per family the
held-out log-likelihood (the fold models' mean log p of the control images, nats), the median,
95 % and 99.9 % of M, the flags and the control images' rate of passing the same threshold, on
the planted benchmark the AUROC of M for the rare class and the one-offs (as the benchmark
reports them, memo/measures/measures.py) and the CPU minutes of training; then, between them,
the Spearman correlation of M over the examples, the overlap of their top 5 % and of their
flags, and the examples in one family's top 5 % that lie below the other's median M
(memo/score/families.py). --experiments may be given once per pair; -o writes every pair to
one file (memo/files/families.py), which the families figure is drawn from.

  python scripts/compare_families.py --experiments fashion_demo fashion_demo_made \
      --experiments fashion_planted fashion_planted_made -o analysis/families.json
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

import cli
from memo.config import experiments
from memo.files import families as families_file
from memo.files import summary as summary_file
from memo.score import families


def parse_args(argv=None):
    p = cli.parser(__file__, __doc__.splitlines()[0])
    p.add_argument("--experiments", nargs=2, action="append", required=True, metavar="EXP",
                   help="two experiments on the same data and subset (once per pair)")
    p.add_argument("--analysis-dir", default="analysis", help="where the summaries are")
    p.add_argument("--results-dir", default="results",
                   help="where the result files are (for the training time; default: results)")
    p.add_argument("--top", type=float, default=0.05, help="the top fraction by M compared")
    p.add_argument("--n-boot", type=int, default=1000,
                   help="bootstrap draws of the planted AUROC's interval (0: none)")
    cli.add_output(p, "the comparison as JSON (memo/files/families.py)")
    return p.parse_args(argv)


def final_M(s) -> np.ndarray:
    return np.asarray(s.M)[-1] if np.ndim(s.M) == 2 else np.asarray(s.M)


def family_row(exp, s, role, results_dir, n_boot: int) -> dict:
    """One family's line of the table (memo/files/families.py's ROW_FIELDS)."""
    from memo.data import planted          # torch: not for --help
    from memo.measures import measures
    m = final_M(s)
    ctl = (s.calibration or {}).get("controls") if isinstance(s.calibration, dict) else None
    q = np.nanquantile(m, [0.5, 0.95, 0.999])
    row = {"experiment": exp.name, "model": exp.model,
           "heldout_log_p": (None if s.control_values is None or not np.size(s.control_values)
                             else float(np.mean(s.control_values))),
           "M_median": float(q[0]), "M_95": float(q[1]), "M_99.9": float(q[2]),
           "flags": None if s.memorized is None else int(np.sum(s.memorized)),
           "controls": ctl["n"] if ctl else None,
           "controls_flagged": ctl["flagged"] if ctl else None,
           "cpu_minutes": measures._training_seconds(exp, results_dir)[0] / 60}
    for key, target in (("rare", planted.SINGLETON), ("oneoff", planted.ONEOFF)):
        auroc = (np.nan,) * 3 if role is None else measures.singleton_auroc(m, role, n_boot,
                                                                             target)
        row.update({f"auroc_{key}": auroc[0], f"auroc_{key}_low": auroc[1],
                    f"auroc_{key}_high": auroc[2]})
        row[f"flagged_{key}"] = (None if role is None or s.memorized is None
                                 else int(np.sum(np.asarray(s.memorized, bool) & (role == target))))
    return row


def compare_pair(names, args) -> dict:
    """The comparison of two experiments (memo/files/families.py's PAIR)."""
    with cli.usage():
        a, b = (experiments.get(name) for name in names)
        if (a.data, a.subset) != (b.data, b.subset):
            raise ValueError(f"experiments {a.name} and {b.name} train on different data "
                             f"({a.data} subset {a.subset}, {b.data} subset {b.subset}): "
                             f"compare two on the same data and subset")
    summaries = []
    for exp in (a, b):
        path = Path(args.analysis_dir) / f"{exp.name}.npz"
        if not path.is_file():
            raise FileNotFoundError(f"no summary {path}: make summary-{exp.name}")
        summaries.append(summary_file.load(path))
    index = np.asarray(summaries[0].index, dtype=np.int64)
    if not np.array_equal(index, np.asarray(summaries[1].index, dtype=np.int64)):
        raise ValueError(f"the summaries of {a.name} and {b.name} hold different examples: "
                         f"summarize both again (make summary-{a.name} summary-{b.name})")
    from memo.measures import measures     # torch: not for --help
    layout = measures.layout_of(a)
    role = None if layout is None else layout.role[index].astype(np.int64)
    rows = [family_row(exp, s, role, args.results_dir, args.n_boot)
            for exp, s in zip((a, b), summaries)]
    flags = [None if s.memorized is None else np.asarray(s.memorized, bool) for s in summaries]
    r = families.compare(final_M(summaries[0]), final_M(summaries[1]), *flags, top=args.top)
    return {"data": a.data, "n": r["n"], "families": rows,
            **{k: r[k] for k in ("spearman", "top_overlap", "only_a", "only_b")},
            **{k: r.get(k) for k in ("flags_a", "flags_b", "flags_both")},
            "index": index, "M_a": final_M(summaries[0]), "M_b": final_M(summaries[1]),
            "flagged_a": flags[0], "flagged_b": flags[1],
            "top_a": families.top_set(final_M(summaries[0]), args.top),
            "top_b": families.top_set(final_M(summaries[1]), args.top), "role": role}


def _num(v, fmt: str) -> str:
    return "—" if v is None or (isinstance(v, float) and not np.isfinite(v)) else format(v, fmt)


def print_pair(p: dict, top: float) -> None:
    print(f"{'experiment':<22} {'model':<16} {'held-out log p':>14} {'M median':>9} "
          f"{'M 95%':>7} {'M 99.9%':>8} {'flags':>5} {'controls':>9} {'AUROC rare':>10} "
          f"{'AUROC 1-offs':>12} {'CPU min':>7}")
    for row in p["families"]:
        ctl = ("—" if row["controls"] is None
               else f"{100 * row['controls_flagged'] / row['controls']:.2f}%")
        print(f"{row['experiment']:<22} {row['model']:<16} {_num(row['heldout_log_p'], '.2f'):>14} "
              f"{row['M_median']:>9.3f} {row['M_95']:>7.2f} {row['M_99.9']:>8.2f} "
              f"{_num(row['flags'], 'd'):>5} {ctl:>9} {_num(row['auroc_rare'], '.3f'):>10} "
              f"{_num(row['auroc_oneoff'], '.3f'):>12} {_num(row['cpu_minutes'], '.1f'):>7}")
    a, b = (row["experiment"] for row in p["families"])
    print(f"Spearman of M over {p['n']} examples: {p['spearman']:.3f}; top {top:.0%} "
          f"shared: {p['top_overlap']:.0%} (chance {top:.0%})"
          + (f"; flags: {p['flags_a']} and {p['flags_b']}, {p['flags_both']} by both"
             if p.get("flags_a") is not None else ""))
    for key, exp, other in (("only_a", a, b), ("only_b", b, a)):
        shown = " ".join(str(int(p["index"][i])) for i in p[key]) or "none"
        print(f"in {exp}'s top {top:.0%}, below {other}'s median M (data set positions): {shown}")


def run(args) -> int:
    with cli.usage():
        if not 0 < args.top < 1:
            raise ValueError(f"--top {args.top} is not allowed (a fraction between 0 and 1)")
        if args.n_boot < 0:
            raise ValueError(f"--n-boot {args.n_boot} is not allowed (0 or more)")
    out = cli.output(args.output) if args.output else None
    pairs = [compare_pair(names, args) for names in args.experiments]
    for i, p in enumerate(pairs):
        print(("\n" if i else "") + f"[{p['data']}]")
        print_pair(p, args.top)
    if out:
        families_file.write(out, args.top, pairs)
    return 0


def main(argv=None) -> int:
    return cli.run(__file__, run, parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python3
"""Which examples each model family memorizes: two experiments on the same training set.

Reads the summaries (analysis/<exp>.npz) of two experiments on the same data and subset,
e.g. the demo's VAE and its MADE (fashion_demo, fashion_demo_made), and prints per family the
held-out log-likelihood (the fold models' mean log p of the control images, nats), the median,
95 % and 99.9 % of M and the flags; then, between them, the Spearman correlation of M over the
examples, the overlap of their top 5 % and of their flags, and the examples in one family's
top 5 % that lie below the other's median M (memo/score/families.py).

  python scripts/compare_families.py --experiments fashion_demo fashion_demo_made
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import cli
from memo import fileio
from memo.config import experiments
from memo.files import summary as summary_file
from memo.score import families


def parse_args(argv=None):
    p = cli.parser(__file__, __doc__.splitlines()[0])
    p.add_argument("--experiments", nargs=2, required=True, metavar="EXP",
                   help="two experiments on the same data and subset")
    p.add_argument("--analysis-dir", default="analysis", help="where the summaries are")
    p.add_argument("--top", type=float, default=0.05, help="the top fraction by M compared")
    cli.add_output(p, "the comparison as JSON")
    return p.parse_args(argv)


def family_row(exp, s) -> dict:
    import numpy as np
    m = np.asarray(s.M)[-1] if np.ndim(s.M) == 2 else np.asarray(s.M)
    ctl = None if s.control_values is None else float(np.mean(s.control_values))
    flags = None if s.memorized is None else int(np.sum(s.memorized))
    q = np.nanquantile(m, [0.5, 0.95, 0.999])
    return {"experiment": exp.name, "model": exp.model, "heldout_log_p": ctl,
            "M_median": float(q[0]), "M_95": float(q[1]), "M_99.9": float(q[2]),
            "flags": flags, "_M": m}


def run(args) -> int:
    with cli.usage():
        exps = [experiments.get(name) for name in args.experiments]
        a, b = exps
        if (a.data, a.subset) != (b.data, b.subset):
            raise ValueError(f"experiments {a.name} and {b.name} train on different data "
                             f"({a.data} subset {a.subset}, {b.data} subset {b.subset}): "
                             f"compare two on the same data and subset")
        if not 0 < args.top < 1:
            raise ValueError(f"--top {args.top} is not allowed (a fraction between 0 and 1)")
    rows, summaries = [], []
    for exp in exps:
        path = Path(args.analysis_dir) / f"{exp.name}.npz"
        if not path.is_file():
            raise FileNotFoundError(f"no summary {path}: make summary-{exp.name}")
        s = summary_file.load(path)
        summaries.append(s)
        rows.append(family_row(exp, s))
    r = families.compare(rows[0]["_M"], rows[1]["_M"], summaries[0].memorized,
                         summaries[1].memorized, top=args.top)
    print(f"{'experiment':<22} {'model':<24} {'held-out log p':>14} {'M median':>9} "
          f"{'M 95%':>8} {'M 99.9%':>8} {'flags':>6}")
    for row in rows:
        lp = "—" if row["heldout_log_p"] is None else f"{row['heldout_log_p']:.2f}"
        flags = "—" if row["flags"] is None else row["flags"]
        print(f"{row['experiment']:<22} {row['model']:<24} {lp:>14} {row['M_median']:>9.3f} "
              f"{row['M_95']:>8.3f} {row['M_99.9']:>8.3f} {flags:>6}")
    print(f"\nSpearman of M over {r['n']} examples: {r['spearman']:.3f}; top {args.top:.0%} "
          f"shared: {r['top_overlap']:.0%} (chance {args.top:.0%})"
          + (f"; flags: {r['flags_a']} and {r['flags_b']}, {r['flags_both']} by both"
             if "flags_a" in r else ""))
    for key, exp, other in (("only_a", a, b), ("only_b", b, a)):
        print(f"in {exp.name}'s top {args.top:.0%}, below {other.name}'s median M: "
              f"{' '.join(map(str, r[key].tolist())) or 'none'}")
    if args.output:
        out = {"families": [{k: v for k, v in row.items() if not k.startswith("_")}
                            for row in rows],
               **{k: (v.tolist() if hasattr(v, "tolist") else v) for k, v in r.items()}}
        fileio.atomic_write_bytes(args.output, (json.dumps(out, indent=1) + "\n").encode())
    return 0


def main(argv=None) -> int:
    return cli.run(__file__, run, parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())

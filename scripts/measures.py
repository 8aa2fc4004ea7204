#!/usr/bin/env python
"""The other memorization measures of one experiment beside M (memo/measures/measures.py).

Reads the experiment's summary (M), the full model's result file and its weights at the
evaluation epochs, and the training images; writes analysis/<exp>_measures.npz, its CSV
(one row per example, one column per measure) and analysis/<exp>_benchmark.csv (one row per
measure: AUROC of the planted one-offs and rare-class singletons, duplicates' rank percentile,
Spearman with M, cost).

    python scripts/measures.py --experiment fashion_planted [--device cuda]
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import cli
from memo import fileio
from memo.files import measures as measures_file
from memo.files import summary
from memo.config import experiments
from memo.measures import H, N_SAMPLES, N_VECTORS


def parse_args(argv=None) -> argparse.Namespace:
    p = cli.parser(__file__, __doc__.split("\n\n")[0],
                   formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--experiment", required=True, help="experiment name (memo/config/experiments.py or "
                   "EXPERIMENTS_FILE)")
    p.add_argument("--summary", type=Path, help="its summary (default: analysis/<exp>.npz)")
    cli.add_results_dir(p)
    cli.add_data_root(p)
    cli.add_device(p)
    p.add_argument("--samples", type=int, default=N_SAMPLES,
                   help="model samples for the 1/3 rule (default: %(default)s)")
    p.add_argument("--vectors", type=int, default=N_VECTORS,
                   help="Rademacher vectors of the curvature estimate (default: %(default)s)")
    p.add_argument("--h", type=float, default=H,
                   help="curvature by the sources' forward difference of this step instead of "
                   "exact Hessian-vector products (default: exact)")
    cli.add_output(p, "the measures (.npz; its CSV and the benchmark table beside it)",
                   "analysis/<exp>_measures.npz")
    return p.parse_args(argv)


def main(argv=None) -> int:
    return cli.run(__file__, run, parse_args(argv))


def run(args: argparse.Namespace) -> None:
    with cli.usage():
        for name, value in (("--samples", args.samples), ("--vectors", args.vectors)):
            if value < 1:
                raise cli.UsageError(f"{name} {value} is not allowed (an integer >= 1)")
        if args.h is not None and not args.h > 0:
            raise cli.UsageError(f"--h {args.h} is not allowed (a number > 0)")
        exp = experiments.get(args.experiment)
    out = Path(args.output or Path("analysis") / f"{exp.name}_measures.npz")
    table = out.with_name(out.name.replace("_measures.npz", "_benchmark.csv")
                          if out.name.endswith("_measures.npz") else out.stem + "_benchmark.csv")
    with cli.one_writer(__file__, [out, out.with_suffix(".csv"), table]):
        write_measures(args, exp, out, table)


def write_measures(args: argparse.Namespace, exp, out: Path, table: Path) -> None:
    device = cli.device(args.device)   # imports torch: after the command line is read
    from memo.measures import measures
    s = summary.load(args.summary or Path("analysis") / f"{exp.name}.npz")
    if s.name != exp.name:
        raise cli.UsageError(f"{s.path} is the summary of {s.name}, not {exp.name}")
    ms = measures.compute(exp, s, args.results_dir, args.data_root, device,
                          n_samples=args.samples, n_vectors=args.vectors, h=args.h,
                          log=lambda m: print(m, file=sys.stderr))
    ms.summary = measures_file.summary_record(s.path)   # figures refuse them for another
    measures_file.save(ms, out)
    fileio.atomic_write_bytes(out.with_suffix(".csv"), measures.csv_text(ms).encode())
    rows = measures.benchmark(ms, flagged=s.memorized if s.calibrated else None,
                              control_flagged=s.control_flagged)
    fileio.atomic_write_bytes(table, measures.table_csv(rows).encode())
    print(measures.table_text(rows, ms))
    print(f"{out}, {out.with_suffix('.csv')}, {table}")


if __name__ == "__main__":
    sys.exit(main())

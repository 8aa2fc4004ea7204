#!/usr/bin/env python
"""The other memorization measures of one experiment beside M (memo/measures/measures.py).

Reads the experiment's summary (M), the full model's result file and its weights at the
evaluation epochs, and the training images; writes analysis/<exp>_measures.npz, its CSV
(one row per example, one column per measure) and analysis/<exp>_benchmark.csv (one row per
measure: AUROC of planted singletons, duplicates' rank percentile, Spearman with M, cost).

    python scripts/measures.py --experiment fashion_planted [--device cuda]
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from memo.config import experiments
from memo.measures import H, N_SAMPLES, N_VECTORS


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--experiment", required=True, help="experiment name (memo.experiments)")
    p.add_argument("--summary", type=Path, help="its summary (default: analysis/<exp>.npz)")
    p.add_argument("--results-dir", default="results", help="results root (default: results)")
    p.add_argument("--data-root", default=None,
                   help="data directory (default: $DATA_ROOT, else ./data)")
    p.add_argument("--device", default=None,
                   help="torch device (default: cuda when available)")
    p.add_argument("--samples", type=int, default=N_SAMPLES,
                   help="model samples for the 1/3 rule (default: %(default)s)")
    p.add_argument("--vectors", type=int, default=N_VECTORS,
                   help="Rademacher vectors of the curvature estimate (default: %(default)s)")
    p.add_argument("--h", type=float, default=H,
                   help="finite-difference step of the curvature estimate (default: %(default)s)")
    p.add_argument("-o", "--output", type=Path,
                   help="output file (default: analysis/<exp>_measures.npz)")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    for name, value in (("--samples", args.samples), ("--vectors", args.vectors)):
        if value < 1:
            print(f"measures.py: error: {name} {value} is not allowed (an integer >= 1)",
                  file=sys.stderr)
            return 2
    if not args.h > 0:
        print(f"measures.py: error: --h {args.h} is not allowed (a number > 0)", file=sys.stderr)
        return 2
    import torch   # after the command line is read: --help needs none of it
    from memo import data, fileio
    from memo.files import results
    from memo.measures import measures
    from memo.score import summary
    from memo.train import checkpoints
    try:
        exp = experiments.get(args.experiment)
        device = data.check_device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
        s = summary.load(args.summary or Path("analysis") / f"{exp.name}.npz")
        if s.name != exp.name:
            raise measures.MeasuresError(f"{s.path} is the summary of {s.name}, not {exp.name}")
        ms = measures.compute(exp, s, args.results_dir, args.data_root, device,
                              n_samples=args.samples, n_vectors=args.vectors, h=args.h,
                              log=lambda m: print(m, file=sys.stderr))
        out = args.output or Path("analysis") / f"{exp.name}_measures.npz"
        measures.save(ms, out)
        rows = measures.benchmark(ms)
        table = out.with_name(out.name.replace("_measures.npz", "_benchmark.csv")
                              if out.name.endswith("_measures.npz") else out.stem + "_benchmark.csv")
        fileio.atomic_write_bytes(table, measures.table_csv(rows).encode())
    except (experiments.UnknownExperimentError, experiments.SettingsError, ValueError,
            data.DataMissingError, summary.SummaryError, results.ResultFileError,
            checkpoints.CheckpointError) as e:
        print(f"measures.py: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("measures.py: interrupted; nothing written", file=sys.stderr)
        return 130
    print(measures.table_text(rows, ms))
    print(f"{out}, {out.with_suffix('.csv')}, {table}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

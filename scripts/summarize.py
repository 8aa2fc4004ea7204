#!/usr/bin/env python3
"""Summarize result files into per-example memorization scores U, V, M (PAPER.md §1).

Writes analysis/<exp>.npz (every evaluation epoch, per-repeat terms, bootstrap uncertainty)
and analysis/<exp>.csv (one row per example at the final epoch).

  python scripts/summarize.py --result-files results/bmnist_lr3/results/*.json.gz \\
      -o analysis/bmnist_lr3.npz
"""
from __future__ import annotations

import argparse
import io
import sys
from pathlib import Path


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--result-files", nargs="+", required=True, help="result files (.json.gz) "
                   "of one experiment: all cv folds of all repeats, optionally the full model")
    p.add_argument("-o", "--output", required=True, help="summary file (.npz); the CSV is "
                   "written beside it with the same stem")
    p.add_argument("--experiment", default=None, help="experiment name: refuse result files "
                   "made under other settings than it has now")
    p.add_argument("--n-boot", type=int, default=1000, help="bootstrap replicates over repeats")
    p.add_argument("--data-root", default=None, help="data directory, to add labels "
                   "(default: $DATA_ROOT or ./data); without data, labels are -1")
    return p.parse_args(argv)


def labels_for(meta: dict, data_root=None):
    """Labels of the n summarized examples, or None when the data set is not at hand."""
    from memo import data
    try:
        d = data.load(meta["data"], "train", root=data_root)
    except (data.DataMissingError, ValueError) as e:
        print(f"summarize.py: note: no labels ({str(e).splitlines()[0]})", file=sys.stderr)
        return None
    if d.labels is None or len(d.labels) < meta["n"]:
        return None
    return d.labels[: meta["n"]].numpy()


def main(argv=None) -> int:
    args = parse_args(argv)
    import numpy as np
    import pandas as pd
    from memo import experiments, fileio, results, summary

    try:
        exp = experiments.get(args.experiment) if args.experiment else None
        s = summary.summarize(args.result_files, n_boot=args.n_boot, experiment=exp)
    except (summary.SummaryError, results.ResultFileError, experiments.UnknownExperimentError,
            experiments.SettingsError) as e:
        print(f"summarize.py: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("summarize.py: interrupted; nothing written", file=sys.stderr)
        return 130
    n = s.meta["n"]
    labels = labels_for(s.meta, args.data_root)
    if labels is not None:
        s.labels = labels.astype(np.int64)
    out = Path(args.output)
    summary.save(s, out)

    table = pd.DataFrame({
        "index": s.index, "label": s.labels, "U": s.U[-1], "V": s.V[-1], "M": s.M[-1],
        "M_se": s.M_se, "M_ci_low": s.M_ci_low, "M_ci_high": s.M_ci_high, "n_in": s.n_in,
        "n_out": s.n_out, "ess_in": s.ess_in, "ess_out": s.ess_out, "low_ess": s.low_ess})
    buf = io.StringIO()
    table.to_csv(buf, index=False, float_format="%.6g")
    fileio.atomic_write_bytes(out.with_suffix(".csv"), buf.getvalue().encode())

    m = s.M[-1]
    q = np.nanquantile(m, [0.5, 0.95, 0.99, 0.999])
    print(f"{s.meta['experiment']}: n={n} K={s.meta['folds']} L={s.meta['repeats']} "
          f"epoch {int(s.epochs[-1])}: M median {q[0]:.2f}, 95% {q[1]:.2f}, 99% {q[2]:.2f}, "
          f"99.9% {q[3]:.2f}, max {np.nanmax(m):.2f}; split-half reliability {s.split_half:.3f}")
    print(f"wrote {out} and {out.with_suffix('.csv')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

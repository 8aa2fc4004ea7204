#!/usr/bin/env python3
"""Summarize result files into per-example memorization scores U, V, M (PAPER.md §1).

Writes analysis/<exp>.npz (every evaluation epoch, per-repeat terms, bootstrap uncertainty,
the permutation calibration) and analysis/<exp>.csv (one row per example at the final epoch).

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
    p.add_argument("--n-perm", type=int, default=2000, help="labellings of the held-out model "
                   "drawn per example for the permutation null (all K^L are enumerated when "
                   "there are no more); 0: no calibration")
    p.add_argument("--fdr-q", type=float, default=0.05, help="false discovery rate of the "
                   "'memorized' flag (Benjamini-Hochberg over the examples)")
    p.add_argument("--data-root", default=None, help="data directory, to add labels "
                   "(default: $DATA_ROOT or ./data); without data, labels are -1")
    args = p.parse_args(argv)
    if args.n_perm < 0:
        p.error("--n-perm must be 0 (no calibration) or more")
    if not 0 < args.fdr_q < 1:
        p.error("--fdr-q must lie between 0 and 1")
    return args


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
    from memo.config import experiments
    from memo import fileio
    from memo.files import results
    from memo.score import summary

    try:
        exp = experiments.get(args.experiment) if args.experiment else None
        s = summary.summarize(args.result_files, n_boot=args.n_boot, experiment=exp,
                              n_perm=args.n_perm, fdr_q=args.fdr_q)
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

    # columns after low_ess came with the calibration; without it they are empty
    memorized = pd.array(s.memorized, dtype="boolean")
    if not s.calibrated:
        memorized[:] = pd.NA
    table = pd.DataFrame({
        "index": s.index, "label": s.labels, "U": s.U[-1], "V": s.V[-1], "M": s.M[-1],
        "M_se": s.M_se, "M_ci_low": s.M_ci_low, "M_ci_high": s.M_ci_high, "n_in": s.n_in,
        "n_out": s.n_out, "ess_in": s.ess_in, "ess_out": s.ess_out, "low_ess": s.low_ess,
        "M_corrected": s.M_corrected, "M_corrected_ci_low": s.M_corrected_ci_low,
        "M_corrected_ci_high": s.M_corrected_ci_high, "null_mean": s.null_mean,
        "p_value": s.p_value, "memorized": memorized})
    buf = io.StringIO()
    table.to_csv(buf, index=False, float_format="%.6g")
    fileio.atomic_write_bytes(out.with_suffix(".csv"), buf.getvalue().encode())

    m = s.M[-1]
    q = np.nanquantile(m, [0.5, 0.95, 0.99, 0.999])
    L = s.meta["repeats"]
    h = s.meta.get("split_half_repeats", [L // 2, L - L // 2])
    print(f"{s.meta['experiment']}: n={n} K={s.meta['folds']} L={L} "
          f"epoch {int(s.epochs[-1])}: M median {q[0]:.2f}, 95% {q[1]:.2f}, 99% {q[2]:.2f}, "
          f"99.9% {q[3]:.2f}, max {np.nanmax(m):.2f}")
    print(f"  reliability of M: split-half Spearman ({h[0]} vs {h[1]} repeats) "
          f"{s.split_half:.3f}; Spearman-Brown for all {L} repeats {s.reliability:.3f}")
    if s.calibrated:
        c = s.calibration
        how = (f"all {c['labellings']} labellings" if c["exact"]
               else f"{c['labellings_used']} drawn labellings per example")
        mc = s.M_corrected
        print(f"  calibration ({how}, {s.timings.get('calibration', float('nan')):.1f} s; "
              f"uncertainty {s.timings.get('calibration uncertainty', float('nan')):.1f} s): "
              f"null mean (bias) median {np.nanmedian(s.null_mean):.2f}; M_corrected median "
              f"{np.nanmedian(mc):.2f}, max {np.nanmax(mc):.2f}, "
              f"{np.mean(mc > 0):.1%} above 0")
        print(f"  flagged as memorized (Benjamini-Hochberg, q={c['fdr_q']:g}): "
              f"{c['flagged']} of {n} ({c['flagged'] / n:.2%}); smallest attainable p "
              f"{c['min_p']:.3g}")
        print(f"  reliability of M_corrected: split-half Spearman {s.split_half_corrected:.3f}"
              f"; Spearman-Brown {s.reliability_corrected:.3f}")
        from memo.score import calibration
        note = calibration.design_note(s.meta["folds"], L, c["n_perm"], n, c["fdr_q"])
        if note:
            print(f"summarize.py: warning: {note}", file=sys.stderr)
    print(f"wrote {out} and {out.with_suffix('.csv')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

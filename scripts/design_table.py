#!/usr/bin/env python3
"""The design table: what each design of an experiment flags, and how reliable its scores are.

Reads one experiment's result files (trained with control images) and, for the designs
cut from it — the first L' of its L repeats, and log p averaged over the last E evaluation
epochs —, scores every example and every control image by the code the summary uses
(memo/score/summary.py, memo/score/flagging.py) and prints one row per design: models,
split-half and Spearman–Brown reliability of M, how many examples the repeat-paired t-test
flags (BH at q) by planted role when the data are the planted set, the controls flagged at
the same threshold with their 95 % interval, the FDR estimate and Storey's π₁.

  python scripts/design_table.py --experiment fashion_planted --results-dir results
"""
from __future__ import annotations

import sys
from pathlib import Path

import cli
from memo.files import results
from memo.score import calibration, flagging, summary, uncertainty
from memo.config import experiments, splits
from memo import fileio


def parse_args(argv=None):
    p = cli.parser(__file__, __doc__.splitlines()[0])
    p.add_argument("--experiment", required=True, help="experiment name (the table or "
                   "EXPERIMENTS_FILE); it must have control images")
    cli.add_results_dir(p)
    p.add_argument("--fdr-q", type=float, default=0.05, help="BH level of the flags")
    p.add_argument("--tests", nargs="+", default=["moderated-t", "t"],
                   choices=("moderated-t", "t"), help="the flagging tests (a row each)")
    p.add_argument("--average", type=int, nargs="+", default=[1, 2], help="average log p over "
                   "this many evaluation epochs up to the scored one (one design row each)")
    p.add_argument("--epochs", type=int, nargs="+", default=None, help="score the models as "
                   "they were after these evaluation epochs (default: the last); with Adam at a "
                   "constant rate a model read at epoch e is the model trained for e epochs")
    cli.add_data_root(p)
    cli.add_output(p, "also write the table as CSV here")
    return p.parse_args(argv)


def load_values(exp, root: Path):
    """(epochs, values (E, R, K, n), held_out (R, n), controls (E, R, K, C)) from the files."""
    import numpy as np


    files = [results.job_files(exp, job, root).result for job in exp.jobs() if not job.full]
    missing = [str(f) for f in files if not f.exists()]
    if missing:
        raise results.ResultFileError(f"{len(missing)} result files are missing, e.g. {missing[0]}; "
                                f"train them first (make memorization-{exp.name})")
    epochs = exp.eval_epochs()
    R, K = exp.repeats, exp.folds
    values = held_out = controls = None
    for f in files:
        c = results.read_result(f)
        r, k = int(c["meta"]["run"]), int(c["meta"]["fold_idx"])
        res = c["results"]
        if results.CONTROLS not in res:
            raise results.ResultFileError(f"{f} has no control images; the design table needs "
                                          "them (train the experiment with controls)")
        for ei, e in enumerate(epochs):
            parts = res["logpxs"][str(e)]
            idx_tr, lp_tr = results.as_arrays(parts["train"], f)
            idx_te, lp_te = results.as_arrays(parts["test"], f)
            idx_c, lp_c = results.as_arrays(res[results.CONTROLS]["logpxs"][str(e)], f)
            if values is None:
                n = len(idx_tr) + len(idx_te)
                values = np.full((len(epochs), R, K, n), np.nan)
                controls = np.full((len(epochs), R, K, len(idx_c)), np.nan)
                held_out = np.full((R, n), -1, dtype=np.int16)
            values[ei, r, k, idx_tr] = lp_tr
            values[ei, r, k, idx_te] = lp_te
            controls[ei, r, k] = lp_c[np.argsort(idx_c)]
        held_out[r, idx_te] = k
    return epochs, values, held_out, controls


def design_row(values, held_out, controls, control_held, q: float, roles=None, seed: int = 0,
               test: str = "moderated-t"):
    """One design's numbers (values (R, K, n) etc. of its repeats and epoch averaging)."""
    import numpy as np


    R, K, n = values.shape
    terms = summary.terms_from_values(values, held_out)
    rel = uncertainty.split_half_reliability(*terms, seed=seed) if R >= 2 else float("nan")
    tt = flagging.p_values(test, values, held_out)
    p = tt.p
    flags, cutoff = calibration.benjamini_hochberg(p, q)
    at = flagging.threshold(int(flags.sum()), q, n)
    p_c = flagging.p_values(test, controls, control_held, tt.prior if tt.prior_df else None).p
    ctl = flagging.control_report(p_c, at, n, int(flags.sum()))
    lo, hi = flagging.storey_interval(p, seed=seed)
    row = {"test": test, "repeats": R, "folds": K, "models": R * K + 1, "df": tt.df,
           "split_half": rel, "spearman_brown": uncertainty.spearman_brown(rel),
           "flagged": int(flags.sum()), "flagged_share": flags.mean(),
           "controls_flagged": ctl["flagged"], "controls": ctl["n"],
           "control_rate": ctl["rate"], "control_rate_low": ctl["rate_ci"][0],
           "control_rate_high": ctl["rate_ci"][1], "fdr_estimate": ctl["fdr_estimate"],
           "pi1": flagging.storey_pi1(p), "pi1_low": lo, "pi1_high": hi,
           "control_p_below_0.05": float(np.mean(p_c <= 0.05))}
    if roles is not None:
        from memo.data import planted
        for role, name in planted.ROLE_NAMES.items():
            sel = roles == role
            row[f"{name}s_flagged"] = f"{int(flags[sel].sum())}/{int(sel.sum())}"
    return row


def main(argv=None) -> int:
    return cli.run(__file__, run, parse_args(argv))


def run(args) -> int:
    import numpy as np
    import pandas as pd


    with cli.usage():
        exp = experiments.get(args.experiment)
        for epoch in args.epochs or []:
            if epoch not in exp.eval_epochs():
                raise ValueError(f"{epoch} is not an evaluation epoch of {exp.name} "
                                 f"({exp.eval_epochs()})")
    epochs, values, held_out, controls = load_values(exp, Path(args.results_dir))
    roles = None
    if exp.data == "planted":
        from memo import data
        roles = data.planted_layout(args.data_root).role
    C = controls.shape[-1]
    control_held = np.stack([splits.control_held_out(C, exp.folds, exp.seed, r)
                             for r in range(exp.repeats)])
    rows = []
    for epoch in args.epochs or [epochs[-1]]:
        last = epochs.index(epoch) + 1
        for L in range(1, exp.repeats + 1):
            if exp.folds < 3 and L < 2:
                continue
            for E in args.average:
                if E > last:
                    continue
                v = values[last - E:last, :L].mean(0)
                c = controls[last - E:last, :L].mean(0)
                design = f"K={exp.folds} L={L} epoch {epoch}" + (
                    f", log p averaged over {E} evals" if E > 1 else "")
                for test in args.tests:
                    rows.append({"design": design, **design_row(
                        v, held_out[:L], c, control_held[:L], args.fdr_q, roles, exp.seed,
                        test)})
    table = pd.DataFrame(rows)
    with pd.option_context("display.width", 250, "display.max_columns", 40,
                           "display.float_format", "{:.3f}".format):
        print(table.drop(columns=["repeats", "folds"]).to_string(index=False))
    if args.output:
        fileio.atomic_write_bytes(args.output, table.to_csv(index=False,
                                                            float_format="%.6g").encode())
    return 0


if __name__ == "__main__":
    sys.exit(main())

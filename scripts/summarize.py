#!/usr/bin/env python3
"""Summarize result files into per-example memorization scores U, V, M (van den Burg &
Williams, NeurIPS 2021, arXiv:2107.12580).

Writes analysis/<exp>.npz (every evaluation epoch, per-repeat terms, bootstrap uncertainty,
the permutation calibration), analysis/<exp>.csv (one row per example at the final epoch) and
analysis/<exp>_flagged.csv (the flagged examples, strongest evidence first; docs/flagged.md).

  python scripts/summarize.py --result-files results/bmnist_lr3/results/*.json.gz \\
      -o analysis/bmnist_lr3.npz
"""
from __future__ import annotations

import argparse
import io
import sys
from pathlib import Path

import cli
from memo.config import experiments
from memo import fileio
from memo.score import summary
from memo.score import calibration
from memo.score import flagged as flagged_list
from memo.score import uncertainty
from memo.score import privacy


def parse_args(argv=None):
    p = cli.parser(__file__, __doc__.splitlines()[0])
    p.add_argument("--result-files", nargs="+", required=True, help="result files (.json.gz) "
                   "of one experiment: all cv folds of all repeats, optionally the full model")
    cli.add_output(p, "the summary (.npz; its CSV beside it, of the same stem)", required=True)
    p.add_argument("--experiment", default=None, help="experiment name: refuse result files "
                   "made under other settings than it has now")
    # The summary's options: the experiment's fields of the same names (memo/config/experiments.py,
    # their defaults without --experiment); an option given here overrides its field for this run
    defaults = experiments.summary_options(None)
    p.add_argument("--n-boot", type=int, default=None, help="bootstrap replicates over repeats "
                   f"(default: the experiment's n_boot, else {defaults['n_boot']})")
    p.add_argument("--n-perm", type=int, default=None, help="labellings of the held-out model "
                   "drawn per example for the permutation null (all K^L are enumerated when "
                   "there are no more); 0: no calibration at all (no p-values, flags or control "
                   "images' scores, whatever --test) (default: the experiment's n_perm, else "
                   f"{defaults['n_perm']})")
    p.add_argument("--fdr-q", type=float, default=None, help="false discovery rate of the "
                   "'memorized' flag (Benjamini-Hochberg over the examples) (default: the "
                   f"experiment's fdr_q, else {defaults['fdr_q']})")
    p.add_argument("--test", choices=experiments.SUMMARY_TESTS, default=None,
                   help="the per-example test behind the flag: moderated-t, the repeat-paired "
                   "t-test of in- against held-out log p with variances moderated across "
                   "examples (can flag at 11-21 models); t, the same without moderation; "
                   "permutation, the exact permutation null of M (smallest p 1/K^L) "
                   "(docs/calibration.md) (default: the experiment's test, else "
                   f"{defaults['test']})")
    cli.add_data_root(p)   # for the labels; without the data they are -1
    args = p.parse_args(argv)
    if args.n_perm is not None and args.n_perm < 0:
        p.error("--n-perm must be 0 (no calibration) or more")
    if args.fdr_q is not None and not 0 < args.fdr_q < 1:
        p.error("--fdr-q must lie between 0 and 1")
    if args.n_boot is not None and args.n_boot < 0:
        p.error("--n-boot must be 0 (no bootstrap) or more")
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


def controls_csv(summary_path: Path) -> Path:
    """analysis/<exp>_controls.csv beside analysis/<exp>.npz."""
    return summary_path.with_name(summary_path.stem + "_controls.csv")


def main(argv=None) -> int:
    return cli.run(__file__, run, parse_args(argv))


def run(args: argparse.Namespace) -> int:
    with cli.usage():
        exp = experiments.get(args.experiment) if args.experiment else None
    out = Path(args.output)
    with cli.one_writer(__file__, [out, out.with_suffix(".csv"), controls_csv(out),
                                   flagged_list.path_for(out)]):
        return write_summary(args, exp, out)


def write_summary(args: argparse.Namespace, exp, out: Path) -> int:
    import numpy as np
    import pandas as pd

    # the experiment's options, those given on the command line instead; both are recorded
    given = {k: getattr(args, k) for k in experiments.SUMMARY_OPTIONS
             if getattr(args, k) is not None}
    options = {**experiments.summary_options(exp), **given}
    s = summary.summarize(args.result_files, experiment=exp, **options)
    s.meta["summary_options"] = options
    s.meta["summary_overrides"] = given
    n = s.meta["n"]
    labels = labels_for(s.meta, args.data_root)
    if labels is not None:
        s.labels = labels.astype(np.int64)
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
    bound = privacy.summary_bound(s)
    if bound is not None:  # private experiments: what the fold models' guarantee allows M
        table["privacy_bound"] = bound
    buf = io.StringIO()
    table.to_csv(buf, index=False, float_format="%.6g")
    fileio.atomic_write_bytes(out.with_suffix(".csv"), buf.getvalue().encode())
    if s.n_controls:  # the control images: a file of their own, never rows among the examples
        controls = pd.DataFrame({
            "test_index": s.control_index, "M": s.control_M,
            "M_corrected": s.control_M_corrected, "p_value": s.control_p_value,
            "flagged": s.control_flagged})
        buf = io.StringIO()
        controls.to_csv(buf, index=False, float_format="%.6g")
        fileio.atomic_write_bytes(controls_csv(out), buf.getvalue().encode())
    else:  # none now: a file of an earlier summary would be stale
        controls_csv(out).unlink(missing_ok=True)
    flagged_list.write(s, flagged_list.path_for(out))   # a header only when none is flagged

    m = s.M[-1]
    q = np.nanquantile(m, [0.5, 0.95, 0.99, 0.999])
    L = s.meta["repeats"]
    h = s.meta.get("split_half_repeats", [L // 2, L - L // 2])
    print(f"{s.meta['experiment']}: n={n} K={s.meta['folds']} L={L} "
          f"epoch {int(s.epochs[-1])}: M median {q[0]:.2f}, 95% {q[1]:.2f}, 99% {q[2]:.2f}, "
          f"99.9% {q[3]:.2f}, max {np.nanmax(m):.2f}")
    print(f"  reliability of M: split-half Spearman ({h[0]} vs {h[1]} repeats) "
          f"{s.split_half:.3f}; Spearman-Brown for all {L} repeats {s.reliability:.3f}")
    print_low_ess(s)
    if L == 2 and np.isfinite(s.M_ci_low).any():
        mc, lo, hi = s.M_corrected, s.M_corrected_ci_low, s.M_corrected_ci_high
        # the estimate is one of the replicates, recomputed: equal to rounding
        edge = np.isfinite(lo) & (np.isclose(mc, lo, rtol=0, atol=1e-6)
                                  | np.isclose(mc, hi, rtol=0, atol=1e-6))
        print("  note: with 2 repeats the bootstrap has 3 distinct replicates (either repeat "
              "twice, both once: the estimate itself), so each \"95% interval\" is the range "
              "of those three scores"
              + (f"; M_corrected lies at an end of its interval for {int(edge.sum())} of {n}"
                 if np.isfinite(lo).any() else "") + " (docs/calibration.md)")
    if n % s.meta["folds"]:
        print(f"  note: n = {n} is not a multiple of K = {s.meta['folds']}: folds differ in size "
              f"by one, so the models are not exchangeable and p-values and M_corrected are "
              f"approximate (docs/calibration.md)")
    if bound is not None:
        print(f"  privacy bound on M (Renyi DP of the fold models, docs/privacy.md): median "
              f"{np.nanmedian(bound):.2f}, mean {np.nanmean(bound):.2f}, max "
              f"{np.nanmax(bound):.2f}; mean M_corrected {np.nanmean(s.M_corrected):.2f}; "
              f"above the bound: M for {int(np.sum(m > bound))}, M_corrected for "
              f"{int(np.sum(s.M_corrected > bound))} of {n} (one example's estimate is noisy "
              f"and M is biased upward; the bound is on the expectation)")
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
        df = c.get("df") or float("inf")
        test = {"moderated-t": f"moderated repeat-paired t-test, df {df:.1f}",
                "t": f"repeat-paired t-test, df {df:g}",
                "permutation": "permutation p-values"}[c.get("test", "permutation")]
        print(f"  flagged as memorized ({test}, Benjamini-Hochberg at q={c['fdr_q']:g}): "
              f"{c['flagged']} of {n} ({c['flagged'] / n:.2%}), at p <= {c['threshold']:.3g}")
        ctl = c.get("controls")
        if ctl:
            lo, hi = ctl["rate_ci"]
            fdr = ("" if not c["flagged"] else f"; FDR estimate {ctl['fdr_estimate']:.1%} "
                   f"(95% upper bound {ctl['fdr_upper']:.1%})")
            print(f"  control images (never trained on) flagged at that threshold: "
                  f"{ctl['flagged']} of {ctl['n']} ({ctl['rate']:.2%}, 95% CI {lo:.2%}-{hi:.2%})"
                  f"{fdr}")
        else:
            print("  no control images in this experiment (\"controls\": 0, data without a test "
                  "split, or the authors' method and archive, which have none): the "
                  "false-positive rate of the flag is not measured")
        if c.get("variance_ratio") is not None:
            ratio = c["variance_ratio"]
            ctl_ratio = c.get("variance_ratio_controls")
            print(f"  the t-test's variance model (spread of in - out over repeats / predicted; "
                  f"~1 when it holds): {ratio:.2f} for the examples"
                  + (f", {ctl_ratio:.2f} for the control images" if ctl_ratio is not None
                     else ""))
        lo, hi = c["pi1_ci"]
        print(f"  share of examples whose log p rises when trained on (Storey's pi1): "
              f"{c['pi1']:.1%} (95% CI {lo:.1%}-{hi:.1%})")
        print(f"  reliability of M_corrected: split-half Spearman {s.split_half_corrected:.3f}"
              f"; Spearman-Brown {s.reliability_corrected:.3f}")
        note = (calibration.design_note(s.meta["folds"], L, c["n_perm"], n, c["fdr_q"])
                if c.get("test", "permutation") == "permutation" else None)
        if note:
            print(f"summarize.py: warning: {note}", file=sys.stderr)
    also = f", {controls_csv(out)}" if s.n_controls else ""
    print(f"wrote {out}, {out.with_suffix('.csv')}{also} and {flagged_list.path_for(out)}")
    return 0


def print_low_ess(s) -> None:
    """The share of low_ess examples (docs/flagged.md), and a larger n_is when it is high."""
    low, known = uncertainty.low_ess_share(s.low_ess, s.ess_in, s.ess_out)
    if not known:   # exact likelihoods (MADE) or result files without ESS
        print("  low_ess: no importance-sampling ESS in these results (exact log p, or not "
              "recorded), so no example is low_ess")
        return
    n_is = s.meta.get("n_is")
    thr = uncertainty.ess_threshold(n_is) if n_is else float("nan")
    text = (f"  low_ess (ESS under {thr:.3g} of {n_is} importance samples for an in- or "
            f"held-out model): {low} of {known} ({low / known:.1%})")
    low_f, of_f = uncertainty.low_ess_share(s.low_ess, s.ess_in, s.ess_out, s.memorized)
    if of_f:
        text += f", {low_f} of the {of_f} flagged ({low_f / of_f:.1%})"
    print(text)
    high = uncertainty.LOW_ESS_HIGH_SHARE
    if not n_is or not (low / known > high or (of_f and low_f / of_f > high)):
        return
    suggest, stuck = uncertainty.suggested_n_is(s.ess_in, s.ess_out, n_is, s.low_ess)
    if suggest:
        print(f"  suggestion: \"n_is\": {suggest} in the experiment would lift 90% of those "
              f"a larger n_is can help over the threshold (ESS grows with n_is; over "
              f"{high:.0%} are low)"
              + (f"; {stuck} stay low at any n_is (ESS under "
                 f"{uncertainty.ESS_THRESHOLD_FRACTION:.0%} of n_is: the encoder misses their "
                 "posterior)" if stuck else ""))
    elif stuck:
        print(f"  note: all {stuck} stay low at any n_is (ESS under "
              f"{uncertainty.ESS_THRESHOLD_FRACTION:.0%} of n_is: the encoder misses their "
              "posterior); a larger n_is does not help them")


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python
"""Training-set size sweep: how often the full model's samples copy a training image (the 1/3
rule, memo/measures/copying.py) as the training set grows, over nested subsets of Fashion-MNIST.

Trains (or resumes, or reuses) the full-data model of each experiment of the sweep
(memo/config/experiments.py SIZE_SWEEP: the first n images, n = 250 ... 8000, each trained for
about the same number of steps, so smaller sets for more epochs: size and passes are
confounded), then writes analysis/fashion_sizes_sweep.npz with, per size: the memorization
ratio of G samples and its Clopper-Pearson interval, the highest ratio over the full model's
snapshots, the same statistic for held-out real images (the rule's false-alarm rate), the median
and 1 % quantile of the ratio d1/d2 of both (how close they come to the rule's 1/3), the full
model's final training and test loss, and, given the folder of the sweep experiments' summaries
(--summaries; `make sweep` trains their K-fold models too), the median, 95 % quantile and mean
of the 10 largest values of M and M_corrected. The numbers come from memo/measures/sweep.py,
the file is memo/files/sweep.py's.

    python scripts/sweep.py [--samples 10000] [--sizes fashion_n250 fashion_n1000 ...]
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import cli
from memo.files import sweep as sweep_file
from memo.config import experiments
from memo.measures import N_SAMPLES

DEFAULT_OUT = Path("analysis") / "fashion_sizes_sweep.npz"


def parse_args(argv=None) -> argparse.Namespace:
    p = cli.parser(__file__, __doc__.split("\n\n")[0],
                   formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", nargs="+", default=experiments.SIZE_SWEEP,
                   help="experiments of the sweep (default: %(default)s)")
    p.add_argument("--samples", type=int, default=N_SAMPLES,
                   help="model samples per size (default: %(default)s)")
    cli.add_results_dir(p)
    cli.add_data_root(p)
    cli.add_device(p)
    p.add_argument("--summaries", type=Path, default=None,
                   help="folder of the sweep experiments' summaries (<exp>.npz), for the "
                   "quantiles of M (default: none)")
    cli.add_output(p, "the sweep's numbers per size (.npz)", str(DEFAULT_OUT))
    return p.parse_args(argv)


def main(argv=None) -> int:
    return cli.run(__file__, run, parse_args(argv),
                   interrupted="interrupted; finished models are kept, nothing else written")


def run(args: argparse.Namespace) -> None:
    log = lambda m: print(m, file=sys.stderr)
    with cli.usage():
        if args.samples < 1:
            raise cli.UsageError(f"--samples {args.samples} is not allowed (an integer >= 1)")
        exps = [experiments.get(name) for name in args.sizes]
        bad = [e.name for e in exps if not e.subset]
        if bad:
            raise cli.UsageError(f"{', '.join(bad)}: a sweep experiment needs a subset size")
    out = cli.output(args.output or DEFAULT_OUT)   # refused now, not after the training
    device = cli.device(args.device)   # imports torch: after the command line is read
    from memo.measures import sweep
    rows = []
    for exp in sorted(exps, key=lambda e: e.subset):
        log(f"[sweep] n = {exp.subset}: {exp.name}")
        rows.append(sweep.one_size(exp, args.samples, args.results_dir, args.data_root, device, log,
                             args.summaries))
        r = rows[-1]
        log(f"[sweep] n = {r['n']}: {100 * r['ratio']:.2f} % of {args.samples} samples copy a "
            f"training image (held-out images: {100 * r['control_ratio']:.2f} %)")
    sweep_file.write(out, rows, {"experiments": [e.name for e in exps], "samples": args.samples,
                                 "data": "fashion", "top_k": sweep.TOP_K})
    top = f"top-{sweep.TOP_K}"
    print(f"{'n':>6} {'epochs':>6} {'copies %':>18} {'max over snapshots %':>21} "
          f"{'held-out %':>18} {'train':>8} {'test':>8} {'M median/95%/' + top:>22}")
    for r in rows:
        print(f"{r['n']:>6d} {r['epochs']:>6d} {100 * r['ratio']:>7.2f} "
              f"[{100 * r['low']:.2f}, {100 * r['high']:.2f}] "
              f"{100 * r['ratio_max']:>8.2f} (epoch {r['ratio_max_epoch']}, "
              f"{r['snapshots']} kept) {100 * r['control_ratio']:>7.2f} "
              f"[{100 * r['control_low']:.2f}, {100 * r['control_high']:.2f}] "
              f"{r['train_loss']:>8.2f} {r['test_loss']:>8.2f} "
              f"{r['M_median']:6.2f}/{r['M_q95']:5.2f}/{r['M_top']:5.2f}")
    print("every size saw about the same number of examples, so the smaller sets were trained "
          "for more epochs: the rows differ in both")
    print(out)


if __name__ == "__main__":
    sys.exit(main())

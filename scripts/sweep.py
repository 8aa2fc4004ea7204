#!/usr/bin/env python
"""Training-set size sweep: how often the full model's samples copy a training image (the 1/3
rule, memo/measures/copying.py) as the training set grows, over nested subsets of Fashion-MNIST.

Trains (or resumes, or reuses) the full-data model of each experiment of the sweep
(memo.experiments.SIZE_SWEEP: the first n images, n = 250 ... 8000, each trained for about the
same number of steps), then writes analysis/fashion_sizes_sweep.npz with, per size: the
memorization ratio of G samples and its Clopper-Pearson interval, the same statistic for
held-out real images (the rule's false-alarm rate), the median and 1 % quantile of the ratio
d1/d2 of both (how close they come to the rule's 1/3), the full model's final training and
test loss, and, given the folder of the sweep experiments' summaries (--summaries; `make sweep`
trains their K-fold models too), quantiles of M and M_corrected.

    python scripts/sweep.py [--samples 10000] [--sizes fashion_n250 fashion_n1000 ...]
"""
from __future__ import annotations

import argparse
import io
import json
import sys
from pathlib import Path

import numpy as np

import cli
from memo import fileio
from memo.config import experiments
from memo.files import results
from memo.files import summary
from memo.config.experiments import FULL_JOB
from memo.figures.sweep import FIELDS   # the sweep file's arrays

DEFAULT_OUT = Path("analysis") / "fashion_sizes_sweep.npz"


def parse_args(argv=None) -> argparse.Namespace:
    p = cli.parser(__file__, __doc__.split("\n\n")[0],
                   formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", nargs="+", default=experiments.SIZE_SWEEP,
                   help="experiments of the sweep (default: %(default)s)")
    p.add_argument("--samples", type=int, default=10_000,
                   help="model samples per size (default: %(default)s)")
    cli.add_results_dir(p)
    cli.add_data_root(p)
    cli.add_device(p)
    p.add_argument("--summaries", type=Path, default=None,
                   help="folder of the sweep experiments' summaries (<exp>.npz), for the "
                   "quantiles of M (default: none)")
    cli.add_output(p, "the sweep's numbers per size (.npz)", str(DEFAULT_OUT))
    return p.parse_args(argv)


def ratios(found, prefix: str) -> dict:
    """The median and the 1 % quantile of d1/d2 (the rule calls a copy below 1/3)."""
    r = (found.d1 / found.d2).double()
    return {f"{prefix}median_ratio": float(r.quantile(0.5)),
            f"{prefix}low_ratio": float(r.quantile(0.01))}


def m_quantiles(exp, summaries) -> dict:
    """Quantiles of M and M_corrected at the last epoch from the experiment's summary in the
    folder `summaries` (nan when there is none: the K-fold models were not trained)."""
    nan = {k: float("nan") for k in ("M_median", "M_q95", "M_q999", "Mc_median", "Mc_q95")}
    path = Path(summaries) / f"{exp.name}.npz" if summaries else None
    if path is None or not path.is_file():
        return nan
    s = summary.load(path)
    m, mc = s.M_final[np.isfinite(s.M_final)], s.M_corrected[np.isfinite(s.M_corrected)]
    out = dict(nan)
    if m.size:
        out.update(M_median=float(np.median(m)), M_q95=float(np.quantile(m, 0.95)),
                   M_q999=float(np.quantile(m, 0.999)))
    if mc.size:
        out.update(Mc_median=float(np.median(mc)), Mc_q95=float(np.quantile(mc, 0.95)))
    return out


def one_size(exp, samples: int, root, data_root, device, log, summaries=None) -> dict:
    import torch
    from memo import data, models
    from memo.measures import copying, measures
    from memo.train import checkpoints, training
    files = results.job_files(exp, FULL_JOB, root)
    if not files.result.is_file():
        training.run_job(exp, FULL_JOB, root, device, data_root, log=log)
    content = results.read_result(files.result)
    train = data.load(exp.data, "train", root=data_root).images[:exp.subset]
    test = data.load(exp.data, "test", root=data_root).images
    model = models.build(exp.model, exp.latent_dim, train.shape[1], exp.norm).to(device)
    state = checkpoints.load_state(files.checkpoint, "model weights",
                                   "delete it and its result file to train it again")
    models.load_weights(model, state, files.checkpoint)
    model.eval()
    pixels = (train.to(device, torch.float32) / 255).flatten(1)
    found = copying.copying(copying.sample_images(model, samples,
                                                  measures.stream(exp, device, "samples")),
                            pixels)
    control = copying.copying((test[:samples].to(device, torch.float32) / 255).flatten(1), pixels)
    losses = content["results"]["losses"]
    try:
        cpu = float(json.loads(files.cost.read_text())["cpu_seconds"])
    except (OSError, ValueError, KeyError):
        cpu = float("nan")
    return {"n": exp.subset, "epochs": exp.epochs, "ratio": found.ratio,
            "low": found.interval[0], "high": found.interval[1],
            "control_ratio": control.ratio, "control_low": control.interval[0],
            "control_high": control.interval[1],
            **ratios(found, ""), **ratios(control, "control_"),
            "train_loss": float(losses["train"][-1]),
            "test_loss": float(losses["test"][-1]) if losses["test"] else float("nan"),
            "cpu_seconds": cpu, **m_quantiles(exp, summaries)}


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
    device = cli.device(args.device)   # imports torch: after the command line is read
    rows = []
    for exp in sorted(exps, key=lambda e: e.subset):
        log(f"[sweep] n = {exp.subset}: {exp.name}")
        rows.append(one_size(exp, args.samples, args.results_dir, args.data_root, device, log,
                             args.summaries))
        r = rows[-1]
        log(f"[sweep] n = {r['n']}: {100 * r['ratio']:.2f} % of {args.samples} samples copy a "
            f"training image (held-out images: {100 * r['control_ratio']:.2f} %)")
    arrays = {k: np.array([r[k] for r in rows], dtype=float) for k in FIELDS}
    arrays["meta"] = np.array(json.dumps({"experiments": [e.name for e in exps],
                                          "samples": args.samples, "data": "fashion"}))
    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)
    out = args.output or DEFAULT_OUT
    fileio.atomic_write_bytes(out, buf.getvalue())
    print(f"{'n':>6} {'epochs':>6} {'copies %':>18} {'held-out %':>18} {'train':>8} {'test':>8} "
          f"{'M median/95%/99.9%':>20}")
    for r in rows:
        print(f"{r['n']:>6d} {r['epochs']:>6d} {100 * r['ratio']:>7.2f} "
              f"[{100 * r['low']:.2f}, {100 * r['high']:.2f}] {100 * r['control_ratio']:>7.2f} "
              f"[{100 * r['control_low']:.2f}, {100 * r['control_high']:.2f}] "
              f"{r['train_loss']:>8.2f} {r['test_loss']:>8.2f} "
              f"{r['M_median']:6.2f}/{r['M_q95']:5.2f}/{r['M_q999']:5.2f}")
    print(out)


if __name__ == "__main__":
    sys.exit(main())

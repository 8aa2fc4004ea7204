#!/usr/bin/env python3
"""Train one K-fold (or full-data) VAE and write its importance-sampled log p(x) result file.

Examples:
  python scripts/memorization.py --experiment bmnist_lr3 --repeat 0 --fold 3
  python scripts/memorization.py --experiment bmnist_lr3 --mode full
  python scripts/memorization.py --name mine --data npz:my.npz --model BernoulliMLPVAE \\
      --latent-dim 16 --lr 1e-3 --epochs 50 --eval-every 10 --n-is 128 --folds 5 --repeats 2 \\
      --repeat 0 --fold 0
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import sys
from pathlib import Path

import cli
from memo import fileio
from memo.config import naming
from memo.files import results
from memo.train import progress
from memo.config.experiments import FULL_JOB, Job
import memo.config.experiments as experiments

# (flag, Experiment field, type, help): every setting can override the experiment's value
SETTINGS = [
    ("--data", "data", str, "data set: bmnist, fashion, cifar10, celeba or npz:PATH"),
    ("--model", "model", str, "BernoulliMLPVAE, DiagonalGaussianDCVAE or ConstantGaussianDCVAE"),
    ("--latent-dim", "latent_dim", int, "size L of the latent space"),
    ("--lr", "lr", float, "Adam learning rate"),
    ("--batch-size", "batch_size", int, "minibatch size"),
    ("--epochs", "epochs", int, "training epochs"),
    ("--eval-every", "eval_every", int, "compute log p(x) every this many epochs (and at the end)"),
    ("--n-is", "n_is", int, "importance samples N per example"),
    ("--seed", "seed", int, "experiment seed: splits and every model's seed derive from it"),
    ("--folds", "folds", int, "K, the number of folds"),
    ("--repeats", "repeats", int, "L, the number of repeated K-fold splits"),
    ("--subset", "subset", int, "use only the first SUBSET training images (0: all)"),
    ("--checkpoint-every", "checkpoint_every", int, "epochs between resume checkpoints"),
    ("--controls", "controls", int, "control images from the test split that no model trains "
     "on, scored like training examples (0: none)"),
]


def parse_args(argv=None):
    p = cli.parser(__file__, __doc__.splitlines()[0],
                   formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--experiment", help="name in the experiment table (memo/config/experiments.py or "
                   "EXPERIMENTS_FILE); its settings are the defaults for the flags below")
    p.add_argument("--name", help="experiment name for a run defined by flags alone "
                   "(results go to RESULTS_DIR/NAME)")
    for flag, field, typ, help_ in SETTINGS:
        p.add_argument(flag, dest=field, type=typ, help=help_)
    p.add_argument("--hflip", action=argparse.BooleanOptionalAction, default=None,
                   help="random horizontal flips in training (default: the data set's choice)")
    job = p.add_argument_group("which model to train (one of)")
    job.add_argument("--repeat", type=int, help="repeat index r (with --fold)")
    job.add_argument("--fold", type=int, help="fold index k: train on all folds but k")
    job.add_argument("--mode", choices=["cv", "full"], default="cv",
                     help="full: the model trained on all of D")
    job.add_argument("--job", help="job tag instead of the three above: cv_repeat<R>_fold<K> "
                     "or full_repeat0")
    job.add_argument("--jobs", nargs="+", metavar="TAG", help="several job tags, trained "
                     "together as one vectorized group (memo/train/ensemble.py; pays on a GPU)")
    cli.add_results_dir(p)
    p.add_argument("--output", nargs="+", help="expected result file path(s) (the Makefile "
                   "passes its targets; a mismatch is an error)")
    cli.add_device(p)
    cli.add_data_root(p)
    p.add_argument("--download", action="store_true", help="download the data set if missing")
    speed = p.add_argument_group("speed (memo/train/accel.py; evaluation always runs in IEEE float32)")
    speed.add_argument("--tf32", action="store_true", help="TF32 tensor cores in training "
                       "matmuls and convolutions (CUDA, Ampere or later)")
    speed.add_argument("--compile", nargs="?", const="auto", default=None, metavar="MODE",
                       help="torch.compile the training loss; MODE auto (default: "
                       "reduce-overhead, i.e. CUDA graphs, on CUDA; default on CPU), default, "
                       "reduce-overhead, max-autotune or max-autotune-no-cudagraphs")
    p.add_argument("--threads", type=int, default=None,
                   help="torch CPU threads (default: $TORCH_THREADS or torch's choice)")
    p.add_argument("--stop-after", type=int, default=None, metavar="EPOCH",
                   help="save a resume checkpoint after EPOCH and exit with status 3 without a "
                   "result file (for time-limited cluster slots; re-running resumes)")
    p.add_argument("--dry-run", action="store_true", help="print the resolved settings and exit")
    p.add_argument("--verbose", action="store_true", help="a line per epoch (losses, mean log p); "
                   "by default one line per model when it is done")
    return p.parse_args(argv)


def resolve(args) -> experiments.Experiment:
    overrides = {f: getattr(args, f) for _, f, _, _ in SETTINGS if getattr(args, f) is not None}
    if args.hflip is not None:
        overrides["hflip"] = args.hflip
    if args.experiment:
        return dataclasses.replace(experiments.get(args.experiment), **overrides)
    required = ["data", "model", "latent_dim", "lr", "epochs", "eval_every", "n_is"]
    missing = [f"--{f.replace('_', '-')}" for f in required if f not in overrides]
    if missing or not args.name:
        raise experiments.UnknownExperimentError(
            "give --experiment NAME, or --name with all of " + ", ".join(
                ["--name"] + [f"--{f.replace('_', '-')}" for f in required])
            + (f" (missing: {', '.join(missing + ([] if args.name else ['--name']))})"))
    return experiments.Experiment(name=args.name, **overrides)


def make_job_threads() -> int:
    """Under `make -j N`, give each of the N jobs its share of the cores (at least one)."""
    jobs = progress.make_jobs()
    if jobs is None:
        return 0
    # bare -j (0): unlimited jobs, one thread each
    return max(1, (os.cpu_count() or 1) // jobs) if jobs > 1 else (1 if jobs == 0 else 0)


def main(argv=None) -> int:
    return cli.run(__file__, run, parse_args(argv))


def run(args: argparse.Namespace) -> int:
    from memo.train import accel, ensemble, runner  # heavy imports after --help
    from memo import data

    with cli.usage():
        exp = resolve(args)
        speed = accel.Speed(tf32=args.tf32, compile=args.compile)
        naming.check_model(exp.model)  # validates the model name
        naming.dataset_name(exp.data)  # validates the data spec
        if args.jobs:
            jobs = [Job.parse(tag) for tag in args.jobs]
        elif args.job:
            jobs = [Job.parse(args.job)]
        elif args.mode == "full":
            jobs = [FULL_JOB]
        elif args.repeat is None or args.fold is None:
            raise ValueError("give --repeat R --fold K, --mode full, --job TAG or --jobs TAG...")
        else:
            jobs = [Job(args.repeat, args.fold)]
        if args.stop_after is not None and not 1 <= args.stop_after <= exp.epochs:
            raise ValueError(f"--stop-after {args.stop_after} is not allowed (an epoch from 1 "
                             f"to epochs = {exp.epochs})")
        if args.threads is not None and args.threads < 1:
            raise ValueError(f"--threads {args.threads} is not allowed (an integer >= 1)")

    import torch
    threads = args.threads or int(os.environ.get("TORCH_THREADS", "0") or 0) or make_job_threads()
    if threads:
        torch.set_num_threads(threads)
    device = cli.device_name(args.device)
    torch_device = cli.device(device)
    if args.dry_run:
        print(f"experiment: {dataclasses.asdict(exp)}\njob: {' '.join(j.tag for j in jobs)}"
              f"\ndevice: {device}\nspeed: {speed.describe(device)}")
        return 0
    try:
        paths = [results.job_files(exp, job, args.results_dir).result for job in jobs]
        if args.output and ({Path(o).resolve() for o in args.output}
                            != {p.resolve() for p in paths}):
            raise ValueError(f"--output {' '.join(args.output)} does not match the result "
                             f"file(s) {' '.join(map(str, paths))}")
        results.check_folders(exp, args.results_dir)
        # one process per job: a second run of it waits here, then finds the work done
        with fileio.exclusive(paths, lambda line: cli.say(__file__, line)) as waited:
            if (waited or args.output) and all(p.is_file() for p in paths):
                print(f"{' '.join(map(str, paths))} already written"
                      + (" by the process waited for" if waited else "") + "; nothing to train")
                return 0
            results.check_siblings(exp, args.results_dir)
            jd = data.load_job_data(exp, torch_device, any(j.full for j in jobs),
                                    args.data_root, args.download)
            if len(jobs) > 1:
                done = ensemble.run_group(exp, jobs, args.results_dir, device, jd=jd,
                                          stop_after=args.stop_after, speed=speed,
                                          verbose=args.verbose)
            else:
                done = runner.run_job(exp, jobs[0], args.results_dir, device, jd=jd,
                                      stop_after=args.stop_after, speed=speed,
                                      verbose=args.verbose)
    except KeyboardInterrupt:
        cli.say(__file__, f"interrupted; the last resume checkpoint (every "
                f"{exp.checkpoint_every} epochs) is kept: run again to resume")
        return cli.INTERRUPTED
    if done is None:
        print("stopped before the last epoch; run again to resume")
        return 3
    print("\n".join(f"wrote {path}" for path in paths))
    return 0


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python3
"""Training and importance-sampling throughput: one model at a time, grouped, and a baseline.

For each model of the paper (BernoulliMLPVAE on 1x32x32 binary data, DiagonalGaussianDCVAE and
ConstantGaussianDCVAE on 3x32x32) and each device, in one run:

  train one    run_job's inner loop: data resident on the device as uint8, batched
               preprocessing (preprocess.train_inputs), batch 64, Adam
  train group  the same for G models at once (memo/train/ensemble.py: stacked parameters, vmap)
  train base   the authors'-style pipeline: a Dataset whose __getitem__ makes one PIL image,
               applies torchvision transforms (pad / flip, ToTensor) and binarizes or
               dequantizes it, a DataLoader (batch 64, shuffle), one model, loss.item() per batch
  IS one       evaluation.evaluate (batches of 256, chunked samples) at N = 256 (MLP) / 128 (DC)
  IS group     ensemble.group_log_px over G models
  IS base      one example at a time, repeated N times through encoder and decoder, with
               full-covariance MultivariateNormal densities for q and the prior (as theirs)

Rates are images/s (for the group: all G models together). The data are random uint8 images:
speed does not depend on their content. Each rate is the best of two timed rounds (together at
least --seconds) after a warm-up; single numbers stay noisy where other processes share the
machine, ratios within one run are the more reliable part. The projected wall time of each
paper experiment (the paper: K = L = 10 fold models plus the full model) combines its image
counts with these rates; the held-out loss pass of each epoch counts as a third of a training
image (forward only).

  python scripts/bench.py                  # current device (cuda if available); ~75 s on 2 cores
  python scripts/bench.py --quick          # ~20 s
  python scripts/bench.py --device cpu cuda
  python scripts/bench.py --tf32 --compile # also training with TF32 / torch.compile / both

The speed options (memo/train/accel.py) change only training, so they add training rates (and
projections that use them); importance sampling always runs in IEEE float32.
"""
from __future__ import annotations

import argparse
import functools
import json
import math
import os
import platform
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

import cli
from memo import fileio
from memo.config.naming import FACTS
from memo.config.experiments import EXPERIMENTS, PAPER_EXPERIMENTS, Experiment, eval_epochs

if TYPE_CHECKING:
    from memo.train import accel

ROOT = Path(__file__).resolve().parents[1]
# torch and the trainers are imported by the functions that measure, after the command line is
# read: --help and the projection arithmetic need none of them

# Each model of the paper at the settings of its (first) paper experiment
MODELS: dict[str, Experiment] = {}
for _name in PAPER_EXPERIMENTS:
    MODELS.setdefault(EXPERIMENTS[_name].model, EXPERIMENTS[_name])
# the exact-likelihood model at its demo settings; the authors' code has none, so no baseline
# (its "IS" rates are exact log p throughput)
MODELS["BernoulliMADE"] = EXPERIMENTS["fashion_demo_made"]
BASELINE = set(MODELS) - {"BernoulliMADE"}
RATES = ("train_one", "train_group", "train_base", "is_one", "is_group", "is_base")


def parse_args(argv=None):
    p = cli.parser(__file__, __doc__.splitlines()[0],
                   formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--device", nargs="+", default=None,
                   help="devices to measure (default: cuda when available, else cpu)")
    p.add_argument("--quick", action="store_true", help="a ~20 s version: shorter timings")
    p.add_argument("--seconds", type=float, default=None,
                   help="minimum timed seconds per rate (default 2, --quick 0.3)")
    p.add_argument("--group", type=int, default=10, help="G, models trained together")
    p.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--tf32", action="store_true",
                   help="also measure training with TF32 (CUDA; see memo/train/accel.py)")
    p.add_argument("--compile", nargs="?", const="auto", default=None, metavar="MODE",
                   help="also measure training with torch.compile (auto: CUDA graphs on CUDA)")
    p.add_argument("--out", default=str(ROOT / "output" / "bench.json"), help="JSON report")
    return p.parse_args(argv)


#----------------------------------------------------------------------------
# Timing

def _sync(device):
    import torch
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(fn, items: int, device, seconds: float, rounds: int) -> float:
    """Items per second of fn() (which handles `items` items): the best of `rounds` rounds of
    at least seconds/rounds each, after a warm-up of at least one call and seconds/4."""
    t0 = time.perf_counter()
    while True:
        fn()
        _sync(device)
        if time.perf_counter() - t0 >= seconds / 4:
            break
    best = 0.0
    for _ in range(rounds):
        calls, t0 = 0, time.perf_counter()
        while True:
            fn()
            calls += 1
            _sync(device)
            elapsed = time.perf_counter() - t0
            if elapsed >= seconds / rounds:
                break
        best = max(best, calls * items / elapsed)
    return best


#----------------------------------------------------------------------------
# Ours: one model at a time (run_job's loop and evaluation.evaluate) and grouped (memo/train/ensemble.py)

def _settings(name: str) -> tuple[Experiment, int, bool]:
    """(the model's paper experiment, input channels, random flips) of a model."""
    exp = MODELS[name]
    facts = FACTS[exp.data]
    return exp, facts.channels, facts.hflip


def bench_ours(name, data, device, seconds, group, sizes, speed: accel.Speed | None = None,
               train_only: bool = False) -> dict:
    import torch
    from memo.train import accel, ensemble, evaluation, training
    speed = speed or accel.Speed()
    exp, c, hflip = _settings(name)
    n, batch, n_is = len(data), exp.batch_size, exp.n_is
    rate = functools.partial(measure, device=device, seconds=seconds, rounds=sizes["rounds"])
    out = {}

    # train one: the loop of runner.run_job
    model = training.init_model(exp, 0, c, device)
    optimizer = training.adam(model.parameters(), exp.lr)
    gen = torch.Generator(device=device).manual_seed(0)
    steps = sizes["steps"]
    batch_loss = training.batch_loss_fn(model, speed, device)

    def train_one():
        order = torch.randperm(n, device=device, generator=gen)[:steps * batch]
        return float(training.train_steps(model, optimizer, batch_loss, data, order, batch,
                                          hflip, gen, speed, exp.flip))
    out["train_one"] = rate(train_one, steps * batch)

    # train group: G models, each with its own data order and generator
    members = [training.init_model(exp, g, c, device) for g in range(group)]
    stack = ensemble.StackedVAEs(members, exp.lr, speed)
    gens = [torch.Generator(device=device).manual_seed(g) for g in range(group)]
    plan = ensemble.train_plan([steps * batch] * group, batch, device)

    def train_group():
        orders = [torch.randperm(n, device=device, generator=g)[:steps * batch] for g in gens]
        return float(ensemble.train_epoch(stack, data, orders, gens, plan, hflip,
                                          exp.flip).sum())
    out["train_group"] = rate(train_group, group * steps * batch)
    if train_only:
        return out

    # IS one: training.evaluate on `k` examples
    k = sizes["is_examples"]
    index = torch.arange(k, device=device)
    out["is_one"] = rate(lambda: evaluation.evaluate(model, data[:k], index, exp.seed, n_is, 1, 0),
                         k)

    # IS group: G models, k examples each
    indices = [torch.arange(g * k, (g + 1) * k, device=device) % n for g in range(group)]

    def is_group():
        gens = [torch.Generator(device=device).manual_seed(g) for g in range(group)]
        res = ensemble.group_log_px(stack, data, indices, gens, n_is, exp.seed)
        return float(sum(lp.sum() for lp, _ in res))
    out["is_group"] = rate(is_group, group * k)
    return out


#----------------------------------------------------------------------------
# Baseline: per-example transforms through a DataLoader; IS one example at a time

class PerItemDataset:
    """The authors' data path: each item becomes a PIL image and goes through torchvision
    transforms on its own (MNIST: 28x28 padded to 32 per item; colour: random flip per item),
    then is binarized or dequantized + logit-transformed per item."""

    def __init__(self, images, binary: bool, hflip: bool):
        from torchvision import transforms
        arr = images.permute(0, 2, 3, 1).numpy()          # (N, H, W, C) uint8
        self.images = arr[:, 2:30, 2:30, 0] if binary else arr  # MNIST is stored 28x28
        steps = [transforms.Pad(2)] if binary else (
            [transforms.RandomHorizontalFlip()] if hflip else [])
        self.transform = transforms.Compose(steps + [transforms.ToTensor()])
        self.binary = binary

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        import torch
        from PIL import Image
        from memo.data import preprocess
        x = self.transform(Image.fromarray(self.images[i]))  # float in [0, 1]
        if self.binary:
            return torch.bernoulli(x)
        x = (255.0 * x + torch.rand_like(x)) / 256.0  # uniform dequantization
        return preprocess.to_logit(x)


def bench_baseline(name, data, device, seconds, sizes) -> dict:
    import torch
    from memo.data import preprocess
    from memo.models import objectives
    from memo.models.estimator import logmeanexp
    from memo.train import training
    exp, c, hflip = _settings(name)
    n_is = exp.n_is
    model = training.init_model(exp, 0, c, device)
    optimizer = torch.optim.Adam(model.parameters(), lr=exp.lr)  # torch's default Adam, as theirs
    dataset = PerItemDataset(data.cpu(), model.binary, hflip)
    loader = torch.utils.data.DataLoader(dataset, batch_size=exp.batch_size, shuffle=True)
    steps = sizes["steps"]
    rate = functools.partial(measure, device=device, seconds=seconds, rounds=sizes["rounds"])
    out = {}

    def train_base():
        model.train()
        losses = []
        for i, x in enumerate(loader):
            if i == steps:
                break
            x = x.to(device)
            loss = objectives.neg_elbo(model, x).sum()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
        return losses
    out["train_base"] = rate(train_base, steps * exp.batch_size)

    k = sizes["base_is_examples"]

    @torch.no_grad()
    def is_base():
        model.eval()
        lps = []
        for i in range(k):
            x = dataset[i].to(device)[None].expand(n_is, *data.shape[1:])  # (N, C, H, W)
            mu, logvar = model.encode(x)
            # as the authors' code: full-covariance normals for a diagonal q and the prior
            q = torch.distributions.MultivariateNormal(mu, torch.diag_embed(logvar.exp()))
            prior = torch.distributions.MultivariateNormal(
                torch.zeros_like(mu), torch.diag_embed(torch.ones_like(mu)))
            z = q.sample()
            log_prior, log_q = prior.log_prob(z), q.log_prob(z)
            log_w = model.log_likelihood(x, model.decode(z)) + log_prior - log_q
            lp = logmeanexp(log_w, 0)
            if not model.binary:
                lp = lp + preprocess.logit_to_pixel_log_jacobian(x[:1])[0]
            lps.append(lp.item())
        return lps
    out["is_base"] = rate(is_base, k)
    return out


#----------------------------------------------------------------------------
# Projections

def project(rates: dict, epochs: int, eval_every: int, n: int, n_test: int,
            folds: int = 10, repeats: int = 10) -> dict:
    """Hours for one paper experiment: K·L fold models plus the full model."""
    n_evals = len(eval_epochs(epochs, eval_every))
    n_in = n - n // folds  # ~(K-1)/K of the data train each fold model
    cv = folds * repeats
    # per-model image counts: (trained, held-out loss, importance-sampled)
    fold_model = (epochs * n_in, epochs * (n - n_in), n_evals * n)
    full_model = (epochs * n, epochs * n_test, n_evals * n)

    def seconds(counts, train_rate, is_rate):
        trained, heldout, sampled = counts
        return (trained + heldout / 3) / train_rate + sampled / is_rate

    one = seconds(fold_model, rates["train_one"], rates["is_one"])
    full = seconds(full_model, rates["train_one"], rates["is_one"])
    group = seconds(fold_model, rates["train_group"], rates["is_group"])  # G models per rate
    base = seconds(fold_model, rates["train_base"], rates["is_base"])
    full_base = seconds(full_model, rates["train_base"], rates["is_base"])
    images = {"trained": cv * fold_model[0] + full_model[0],
              "heldout_loss": cv * fold_model[1] + full_model[1],
              "importance_sampled": cv * fold_model[2] + full_model[2]}
    return {"images": images,
            "hours_one_at_a_time": (cv * one + full) / 3600,
            "hours_grouped": (cv * group + full) / 3600,
            "hours_baseline": (cv * base + full_base) / 3600}


#----------------------------------------------------------------------------

def _fmt_hours(h: float) -> str:
    return f"{h:,.1f} h" if h < 48 else f"{h / 24:,.1f} d"


def speed_variants(args, device) -> dict[str, accel.Speed]:
    """The training speed options to measure beside plain float32 eager training (TF32 only
    on CUDA: elsewhere it changes nothing)."""
    from memo.train import accel
    out = {}
    tf32 = args.tf32 and device.type == "cuda"
    if tf32:
        out["tf32"] = accel.Speed(tf32=True)
    if args.compile:
        out[f"compile={args.compile}"] = accel.Speed(compile=args.compile)
    if tf32 and args.compile:
        out[f"tf32+compile={args.compile}"] = accel.Speed(tf32=True, compile=args.compile)
    return out


def run_device(device_name: str, args, log) -> dict:
    import torch
    device = torch.device(device_name)
    cpu = device.type == "cpu"
    seconds = args.seconds if args.seconds is not None else (0.3 if args.quick else 2.0)
    out = {"device": torch.cuda.get_device_name(device) if device.type == "cuda"
           else f"cpu ({os.cpu_count()} cores, {torch.get_num_threads()} torch threads)",
           "rates": {}, "projections": {}, "variants": {}}
    for name in args.models:
        _, c, _ = _settings(name)
        mlp = c == 1
        small = 4 if args.quick else 1
        sizes = {  # work per timed call (IS: examples per model), ~0.05-4 s a call
            "steps": 1 if cpu else 20,
            "is_examples": (64 if mlp else 8) // small if cpu else 256,
            "base_is_examples": (16 if mlp else 4) // small if cpu else 64,
            "rounds": 1 if args.quick else 2,
        }
        g = torch.Generator().manual_seed(0)
        data = torch.randint(0, 256, (2048, c, 32, 32), dtype=torch.uint8, generator=g).to(device)
        t0 = time.perf_counter()
        rates = bench_ours(name, data, device, seconds, args.group, sizes)
        rates.update(bench_baseline(name, data, device, seconds, sizes) if name in BASELINE
                     else {"train_base": float("nan"), "is_base": float("nan")})
        out["rates"][name] = {k: rates[k] for k in RATES}
        for label, speed in speed_variants(args, device).items():
            train = bench_ours(name, data, device, seconds, args.group, sizes, speed,
                               train_only=True)
            out["variants"].setdefault(label, {"rates": {}, "projections": {}})
            out["variants"][label]["rates"][name] = {**out["rates"][name], **train}
        log(f"  {name}: measured in {time.perf_counter() - t0:.0f} s")
    for exp_name in PAPER_EXPERIMENTS:
        e = EXPERIMENTS[exp_name]
        facts = FACTS[e.data]
        for target in [out, *out["variants"].values()]:
            if e.model in target["rates"]:
                target["projections"][exp_name] = project(
                    target["rates"][e.model], e.epochs, e.eval_every, facts.n_train,
                    facts.n_test, e.folds, e.repeats)
    return out


def table(report: dict, group: int) -> str:
    lines = []
    for dev, r in report["devices"].items():
        lines += [f"\n{dev}: {r['device']}", "images/s          train: one   group(G=%d)  baseline"
                  "  | IS: one   group   baseline" % group]
        for name, x in r["rates"].items():
            lines.append(f"{name:<22} {x['train_one']:>8.0f} {x['train_group']:>10.0f} "
                         f"{x['train_base']:>9.0f}  | {x['is_one']:>8.1f} {x['is_group']:>7.1f} "
                         f"{x['is_base']:>8.1f}")
            tb, ib = x["train_base"], x["is_base"]
            if math.isnan(tb):   # no baseline (the exact-likelihood model): IS is exact log p
                continue
            lines.append(f"{'  speed-up vs baseline':<22} {x['train_one'] / tb:>7.1f}x "
                         f"{x['train_group'] / tb:>9.1f}x {'':>9}  | "
                         f"{x['is_one'] / ib:>7.1f}x {x['is_group'] / ib:>6.1f}x")
        if r["projections"]:
            lines.append("projected wall time (100 fold models + full model; one device):")
            lines.append(f"{'':<12} {'one-at-a-time':>14} {'grouped':>10} {'baseline':>10}")
            for exp_name, p in r["projections"].items():
                lines.append(f"{exp_name:<12} {_fmt_hours(p['hours_one_at_a_time']):>14} "
                             f"{_fmt_hours(p['hours_grouped']):>10} "
                             f"{_fmt_hours(p['hours_baseline']):>10}")
        for label, v in r.get("variants", {}).items():
            lines.append(f"training with {label}: images/s (speed-up over float32 eager), "
                         "projected wall time")
            for name, x in v["rates"].items():
                base = r["rates"][name]
                lines.append(f"{name:<22} {x['train_one']:>8.0f} ({x['train_one'] / base['train_one']:.2f}x)"
                             f" {x['train_group']:>8.0f} ({x['train_group'] / base['train_group']:.2f}x)")
            for exp_name, p in v["projections"].items():
                lines.append(f"{exp_name:<12} {_fmt_hours(p['hours_one_at_a_time']):>14} "
                             f"{_fmt_hours(p['hours_grouped']):>10}")
    return "\n".join(lines)


def main(argv=None) -> int:
    return cli.run(__file__, run, parse_args(argv))


def run(args: argparse.Namespace) -> None:
    import torch
    if args.threads:
        torch.set_num_threads(args.threads)
    devices = args.device or [cli.device_name(None)]
    for d in devices:
        if d.startswith("cuda") and not torch.cuda.is_available():
            raise cli.UsageError(f"device {d} is not available here")
    report = {"torch": torch.__version__, "python": platform.python_version(),
              "host": platform.node(), "group": args.group, "quick": args.quick,
              "data": "random uint8 images, resident on the device (speed does not depend "
                      "on content)",
              "rates_unit": "images/s; group rates count all G models together",
              "projection": "per paper experiment: K*L fold models, each trained on n(K-1)/K "
                            "images for E epochs, held-out loss on n/K per epoch (forward only, "
                            "counted as 1/3 of a training image), n images importance-sampled "
                            "per evaluation epoch; plus the full model (n trained, the test split "
                            "for its loss, n sampled); grouped: fold models at the group rates, "
                            "the full model alone",
              "devices": {}}
    t0 = time.perf_counter()
    for d in devices:
        print(f"measuring on {d} ...", file=sys.stderr)
        report["devices"][d] = run_device(d, args, lambda s: print(s, file=sys.stderr))
    report["seconds"] = time.perf_counter() - t0
    print(table(report, args.group))
    fileio.atomic_write_bytes(args.out, (json.dumps(report, indent=1) + "\n").encode())
    print(f"\nwrote {args.out} ({report['seconds']:.0f} s)")


if __name__ == "__main__":
    sys.exit(main())

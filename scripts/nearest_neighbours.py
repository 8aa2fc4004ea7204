#!/usr/bin/env python
"""Nearest-neighbour distance ratios ρ for one experiment (the paper).

For every training image x_i:  ρ_i = d(x_i, nearest validation image) / d(x_i, nearest sample),
Euclidean on 16×16 average-pooled images in [0, 1]. The samples are decoder means of z ~ N(0, I)
(seeded with the experiment's seed) from the full-data model's final checkpoint, as many as there
are validation images (CelebA: its "valid" split; every other data set: "test").

    python scripts/nearest_neighbours.py --experiment bmnist_lr3 [--device cuda]

Writes analysis/<exp>_nn.npz (memo/files/neighbours.py): rho, d_valid, d_model, nn_valid,
nn_model (indices of the neighbours), special_code (per example, see memo/measures/neighbours.py),
special (counts, in the order of special_names), samples (the model samples, 8-bit, for the
gallery figure) and meta (a JSON string).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

import cli
from memo.config import experiments, naming
from memo.files import neighbours as neighbours_file
from memo.files import results


def parse_args(argv=None) -> argparse.Namespace:
    p = cli.parser(__file__, __doc__.split("\n\n")[0],
                   formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--experiment", required=True, help="experiment name (memo/config/experiments.py or "
                   "EXPERIMENTS_FILE)")
    cli.add_results_dir(p)
    cli.add_data_root(p)
    cli.add_device(p)
    cli.add_output(p, "the distance ratios (.npz)", "analysis/<exp>_nn.npz")
    p.add_argument("--block-rows", type=int, default=4096, help="query rows per distance block")
    p.add_argument("--block-cols", type=int, default=8192, help="reference columns per block")
    p.add_argument("--sample-batch", type=int, default=1024, help="latents decoded per batch")
    return p.parse_args(argv)


def reference_split(dataset: str) -> str:
    """The held-out split compared against: CelebA's validation split, else the test split."""
    return "valid" if dataset == "CelebA" else "test"


def run(args: argparse.Namespace) -> Path:
    with cli.usage():  # an unknown experiment, a bad setting of it: one line each
        exp = experiments.get(args.experiment)
    out = Path(args.output or Path("analysis") / f"{exp.name}_nn.npz")
    with cli.one_writer(__file__, [out]):
        return write_neighbours(args, exp, out)


def write_neighbours(args: argparse.Namespace, exp, out: Path) -> Path:
    device = cli.device(args.device)   # imports torch: after the command line is read
    import torch
    from memo import data
    from memo.measures import copying, neighbours
    from memo.train import checkpoints
    try:
        dataset = naming.dataset_name(exp.data)
        split = reference_split(dataset)
        train = data.training_images(exp, args.data_root)
        valid = data.load(exp.data, split, root=args.data_root).images
    except (data.DataMissingError, ValueError) as e:  # missing files, bad spec or file contents
        raise type(e)(f"experiment {exp.name!r}: {e}") from None
    model = checkpoints.load_full_model(exp, args.results_dir, device, train.shape[1])
    ckpt = results.job_files(exp, experiments.FULL_JOB, args.results_dir).checkpoint

    queries = neighbours.downsample(train)
    refs = neighbours.downsample(valid)
    # as many samples as reference images, z from a CPU generator seeded with the experiment's
    # seed (every device draws the same z); pooled as images, on the model's device
    generator = torch.Generator().manual_seed(exp.seed)
    samples = copying.sample_images(model, refs.shape[0], generator, args.sample_batch)
    samples = samples.view(-1, *train.shape[1:])
    kept = (samples * 255).round().to(torch.uint8).numpy()   # the images, as the data's are
    samples = neighbours.downsample(samples.to(device)).cpu()
    kw = dict(block_rows=args.block_rows, block_cols=args.block_cols, device=device, progress=True)
    d_valid, nn_valid = neighbours.nearest_distances(queries, refs, desc=f"vs {split}", **kw)
    d_model, nn_model = neighbours.nearest_distances(queries, samples, desc="vs samples", **kw)
    rho, code = neighbours.distance_ratio(d_valid.numpy(), d_model.numpy())
    counts = neighbours.special_counts(code)

    meta = {"experiment": exp.name, "data": exp.data, "dataset": dataset, "model": exp.model,
            "latent_dim": exp.latent_dim, "seed": exp.seed, "epoch": exp.epochs,
            "checkpoint": str(ckpt), "n_train": int(queries.shape[0]), "subset": exp.subset,
            "reference_split": split, "n_reference": int(refs.shape[0]),
            "n_samples": int(samples.shape[0]), "sample_seed": exp.seed,
            "distance": "euclidean, 2x2 average-pooled to 16x16, pixels in [0, 1]",
            "special_counts": counts,
            "special_rule": "valid_duplicate: rho=0; model_duplicate: rho=inf; "
                            "both_duplicate, invalid: rho=nan"}
    neighbours_file.write(out, rho=rho, d_valid=d_valid.numpy(), d_model=d_model.numpy(),
                          nn_valid=nn_valid.numpy(), nn_model=nn_model.numpy(),
                          special_code=code, counts=counts, meta=meta, samples=kept)

    finite = np.isfinite(rho)
    print(f"{exp.name}: {queries.shape[0]} training images vs {refs.shape[0]} {split} images "
          f"and {samples.shape[0]} model samples")
    if finite.any():
        print(f"rho: median {np.median(rho[finite]):.4g}, fraction > 1: "
              f"{np.mean(rho[finite] > 1):.4f} (over {finite.sum()} finite values)")
    print("special cases: " + ", ".join(f"{k} {v}" for k, v in counts.items())
          + " (valid_duplicate: rho = 0; model_duplicate: rho = inf; "
            "both_duplicate/invalid: rho = nan)")
    print(f"wrote {out}")
    return out


def main(argv=None) -> int:
    return cli.run(__file__, run, parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())

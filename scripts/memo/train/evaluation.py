"""Evaluating one model on a set of examples: importance-sampled log p(x) and held-out loss.

Both run in eval mode and IEEE float32. Input noise (binarization, dequantization) is fixed per
example by (experiment seed, index), or with eval_noise="fresh" drawn for every model from a
generator of its own; the sampling noise of a model comes from a generator seeded by (model seed,
epoch), so a value depends on neither run order nor, for fixed noise, batch.
"""
from __future__ import annotations

import sys

import numpy as np
import torch
from tqdm import tqdm

from memo.train import accel, progress
from memo.data import preprocess

# the parts of D (and the control images) a model's log p is taken on, as progress bars name them
PART_NAMES = {"train": "in", "test": "out", "control": "controls"}
EVAL_BATCH = 256   # examples per importance-sampling batch (its noise layout depends on it)
LOSS_BATCH = 1024  # examples per held-out loss batch


def eval_seed(model_seed: int, epoch: int) -> int:
    """The base seed of a model's evaluation streams at an epoch (see the offsets below)."""
    return int(np.random.SeedSequence([model_seed, epoch, 7]).generate_state(1)[0])


# Each evaluation stream of a model is seeded eval_seed + its offset
LOG_PX_SAMPLES, LOSS_SAMPLES, LOG_PX_NOISE, LOSS_NOISE = 0, 1, 2, 3


def generator(model_seed: int, epoch: int, offset: int, device) -> torch.Generator:
    """A model's evaluation stream at an epoch: importance samples or held-out loss eps, or
    fresh input noise; one model alone and a group draw from the same ones."""
    return torch.Generator(device=device).manual_seed(eval_seed(model_seed, epoch) + offset)


def noise_generator(eval_noise: str, model_seed: int, epoch: int, offset: int,
                    device) -> torch.Generator | None:
    """The generator of fresh evaluation input noise, or None for noise fixed per example."""
    return None if eval_noise == "fixed" else generator(model_seed, epoch, offset, device)


def batches(n: int, size: int):
    for start in range(0, n, size):
        yield slice(start, min(start + size, n))


def heldout_set(job, jd, test_idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(images, image index, noise index) of the examples a job's held-out loss is taken on:
    a fold model's held-out fold, or the full model's test split (its noise indices sit past
    D's; empty when the data set has no test split)."""
    if job.full and jd.test is not None:
        k = torch.arange(len(jd.test), device=jd.test.device)
        return jd.test, k, jd.test_noise_index(k)
    return jd.train, test_idx, test_idx


@torch.no_grad()
def evaluate(model, images: torch.Tensor, index: torch.Tensor, seed: int, n_is: int, epoch: int,
             model_seed: int, batch_size: int = EVAL_BATCH, desc: str = "log p",
             eval_noise: str = "fixed") -> tuple[np.ndarray, np.ndarray]:
    """IS log p(x) and ESS for images (the examples `index` of D), float64 on the host."""
    model.eval()
    gen = generator(model_seed, epoch, LOG_PX_SAMPLES, images.device)
    noise = noise_generator(eval_noise, model_seed, epoch, LOG_PX_NOISE, images.device)
    lps, esss = [], []
    with accel.exact_float32():
        for sl in tqdm(list(batches(len(index), batch_size)), desc=desc, leave=False,
                       disable=progress.disabled(), file=sys.stderr):
            x = preprocess.eval_inputs(images[sl], index[sl], model.binary, seed, noise)
            lp, ess = model.log_px(x, n_is, gen)
            lps.append(lp)
            esss.append(ess)
    if not lps:
        return np.zeros(0), np.zeros(0)
    return torch.cat(lps).double().cpu().numpy(), torch.cat(esss).double().cpu().numpy()


@torch.no_grad()
def test_loss(model, images: torch.Tensor, index: torch.Tensor, seed: int, epoch: int,
              model_seed: int, batch_size: int = LOSS_BATCH, eval_noise: str = "fixed") -> float:
    """Mean loss (the VAEs: negative ELBO) per example on a held-out set (the examples
    `index`)."""
    model.eval()
    gen = generator(model_seed, epoch, LOSS_SAMPLES, images.device)
    noise = noise_generator(eval_noise, model_seed, epoch, LOSS_NOISE, images.device)
    total = torch.zeros((), device=images.device, dtype=torch.float64)
    with accel.exact_float32():
        for sl in batches(len(images), batch_size):
            x = preprocess.eval_inputs(images[sl], index[sl], model.binary, seed, noise)
            total += model.loss(x, generator=gen).sum().double()
    return float(total) / max(len(images), 1)

"""Batched preprocessing on the training device (the paper).

Training uses fresh noise for every use of an image (dynamic binarization or uniform
dequantization, random flips of each image or, as the authors' code, of the whole batch).
Evaluation noise is either fixed, a function of (seed, example index, pixel), so that every in-
and out-model scores the very same input and U - V is not inflated by input noise; or fresh
for every model, as the authors' data loader gives it (docs/fidelity.md).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

LAMBDA = 0.05  # logit transform y = logit(λ + (1 − 2λ)·x̃), as in the paper
_MASK32 = 0xFFFFFFFF


def _hash32(x: torch.Tensor) -> torch.Tensor:
    """An avalanche integer hash on int64 tensors holding 32-bit values (same on CPU/GPU)."""
    for mult in (0x7FEB352D, 0x2C1B3C6D):  # odd constants < 2**31: products fit in int64
        x = x ^ (x >> 16)
        x = (x * mult) & _MASK32
    return x ^ (x >> 15)


def hash_uniform(seed: int, index: torch.Tensor, per_example: int) -> torch.Tensor:
    """(B, per_example) uniforms in [0, 1), a deterministic function of (seed, index, k)."""
    k = torch.arange(per_example, device=index.device, dtype=torch.int64)
    key = (index.to(torch.int64)[:, None] * per_example + k) & _MASK32
    h = _hash32(key ^ _hash32(torch.full_like(key, seed & _MASK32)))
    h = _hash32(h ^ (index.to(torch.int64)[:, None] >> 32))  # indices beyond 2**32
    return (h >> 8).to(torch.float32) * (1.0 / (1 << 24))


def binarize(x: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """Bernoulli(pixel/255) using uniforms u: 1 where u < pixel/255."""
    return (u < x.to(torch.float32) / 255.0).to(torch.float32)


def dequantize(x: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """x̃ = (pixel + u) / 256 in (0, 1)."""
    return (x.to(torch.float32) + u) / 256.0


def to_logit(x_tilde: torch.Tensor) -> torch.Tensor:
    p = LAMBDA + (1 - 2 * LAMBDA) * x_tilde
    return torch.log(p) - torch.log1p(-p)


def from_logit(y: torch.Tensor) -> torch.Tensor:
    """Inverse of to_logit: back to x̃ in [0, 1] (clamped)."""
    return ((torch.sigmoid(y) - LAMBDA) / (1 - 2 * LAMBDA)).clamp(0, 1)


def logit_to_pixel_log_jacobian(y: torch.Tensor) -> torch.Tensor:
    """(B,) term added to log p(y) to get log p of the 8-bit pixels (the paper):
    D·log(1−2λ) − D·log 256 − Σ_d (y_d − 2·softplus(y_d))."""
    y = y.flatten(1)
    d = y.shape[1]
    return (d * (math.log(1 - 2 * LAMBDA) - math.log(256.0))
            - (y - 2 * F.softplus(y)).sum(1))


def hflip_random(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Flip each image left-right with probability 1/2, independently."""
    flip = torch.rand(x.shape[0], device=x.device, generator=generator) < 0.5
    return torch.where(flip[:, None, None, None], x.flip(-1), x)


def hflip_batch(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Flip the whole batch left-right with probability 1/2 (the authors' rule); decided on the
    device, so no host synchronisation."""
    flip = torch.rand(1, device=x.device, generator=generator) < 0.5
    return torch.where(flip, x.flip(-1), x)


def train_inputs(x: torch.Tensor, binary: bool, hflip: bool, generator: torch.Generator,
                 flip: str = "image") -> torch.Tensor:
    """Model inputs for a training batch of uint8 images (B, C, H, W), fresh noise;
    flip: "image" (each image) or "batch" (the whole batch), when hflip."""
    if hflip:
        x = hflip_random(x, generator) if flip == "image" else hflip_batch(x, generator)
    u = torch.rand(x.shape, device=x.device, generator=generator)
    return binarize(x, u) if binary else to_logit(dequantize(x, u))


def eval_inputs(x: torch.Tensor, index: torch.Tensor, binary: bool, seed: int,
                generator: torch.Generator | None = None) -> torch.Tensor:
    """Model inputs for evaluation, no flips: noise fixed by (seed, example index), or with a
    generator, fresh noise from it (one uniform per pixel, in batch order)."""
    if generator is None:
        u = hash_uniform(seed, index.to(x.device), x[0].numel()).view(x.shape)
    else:
        u = torch.rand(x.shape, device=x.device, generator=generator)
    return binarize(x, u) if binary else to_logit(dequantize(x, u))

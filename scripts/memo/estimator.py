"""Importance-sampled log p(x) (PAPER.md §2; supplement eq. 9). Everything calls `log_px`.

    log p̂(x) = logsumexp_j [log p(x|z_j) + log N(z_j; 0, I) − log q(z_j|x)] − log N

with z_j ~ q(z|x), batched over examples × samples and computed in log space.
"""
from __future__ import annotations

import math

import torch

from . import preprocess

_LOG_2PI = math.log(2 * math.pi)


def logmeanexp(a: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """log(mean(exp(a))) along dim, stable for large |a|."""
    return torch.logsumexp(a, dim=dim) - math.log(a.shape[dim])


def effective_sample_size(log_w: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """Kish ESS (Σw)² / Σw² of importance weights given in log space."""
    return torch.exp(2 * torch.logsumexp(log_w, dim) - torch.logsumexp(2 * log_w, dim))


def log_weights(model, x: torch.Tensor, n_samples: int,
                generator: torch.Generator | None = None, chunk: int | None = None) -> torch.Tensor:
    """(B, N) log importance weights log p(x|z) + log p(z) − log q(z|x), z ~ q(z|x).

    The N samples are drawn in chunks so that at most ~`chunk` decoder rows are alive at once.
    """
    mu, logvar = model.encode(x)                              # (B, L)
    std = torch.exp(0.5 * logvar)
    b, latent = mu.shape
    per_chunk = max(1, min(n_samples, (chunk or 16384) // max(b, 1)))
    out = []
    for start in range(0, n_samples, per_chunk):
        n = min(per_chunk, n_samples - start)
        eps = torch.randn((b, n, latent), device=mu.device, dtype=mu.dtype, generator=generator)
        z = mu[:, None] + std[:, None] * eps                  # (B, n, L)
        log_prior = -0.5 * (z.pow(2) + _LOG_2PI).sum(-1)
        log_q = -0.5 * (eps.pow(2) + _LOG_2PI + logvar[:, None]).sum(-1)
        out.append(model.log_likelihood(x, model.decode(z)) + log_prior - log_q)
    return torch.cat(out, dim=1)


@torch.no_grad()
def log_px(model, x: torch.Tensor, n_samples: int, generator: torch.Generator | None = None,
           chunk: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(log p̂(x), ESS), each (B,). For logit-space models log p is of the 8-bit pixels."""
    log_w = log_weights(model, x, n_samples, generator, chunk)
    lp = logmeanexp(log_w, dim=1)
    if not model.binary:
        lp = lp + preprocess.logit_to_pixel_log_jacobian(x)
    return lp, effective_sample_size(log_w, dim=1)

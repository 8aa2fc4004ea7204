"""Training objective: the negative ELBO, kept beside the models rather than inside them."""
from __future__ import annotations

import torch


def gaussian_kl(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """(B,) KL(N(mu, diag exp(logvar)) || N(0, I)), analytic."""
    return 0.5 * (mu.pow(2) + logvar.exp() - 1.0 - logvar).sum(-1)


def neg_elbo(model, x: torch.Tensor, generator: torch.Generator | None = None,
             eps: torch.Tensor | None = None) -> torch.Tensor:
    """(B,) negative ELBO per example: one reparameterised sample, analytic KL (nats).

    eps: the (B, L) standard normal draws to use; by default drawn from `generator`.
    """
    mu, logvar = model.encode(x)
    if eps is None:
        eps = torch.randn(mu.shape, device=mu.device, dtype=mu.dtype, generator=generator)
    z = mu + torch.exp(0.5 * logvar) * eps
    return gaussian_kl(mu, logvar) - model.log_likelihood(x, model.decode(z))

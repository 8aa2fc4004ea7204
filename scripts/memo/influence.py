"""TracIn self-influence and per-example losses of a VAE.

TracIn (Pruthi et al., "Estimating Training Data Influence by Tracing Gradient Descent",
NeurIPS 2020, eq. for TracInCP) approximates the influence of a training example z on z' by
Σ_c η_c ∇θℓ(z; θ_c)·∇θℓ(z'; θ_c) over saved checkpoints θ_c with learning rates η_c. Its
self-influence, z' = z,

    SI(x) = Σ_c η_c ‖∇θ ℓ(x; θ_c)‖²,

is large for examples the training had to work hardest to fit (mislabelled, atypical,
memorized ones). Here ℓ is the negative ELBO of one example (objectives.neg_elbo) with its own
fixed reparameterization noise eps, so that the checkpoints are compared on one loss function.
Per-example gradients use torch.func (functional_call, vmap, grad); the model runs in eval mode
so that BatchNorm uses its running statistics and examples in a chunk do not interact.
"""
from __future__ import annotations

import contextlib
import copy

import torch
import torch.nn as nn
from torch.func import functional_call, grad, vmap

from . import models
from .objectives import neg_elbo


@contextlib.contextmanager
def eval_mode(model: nn.Module):
    """Run model in eval mode, restoring each submodule's own training flag afterwards."""
    flags = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield model
    finally:
        for m, flag in flags:
            m.training = flag


class _NegElbo(nn.Module):
    """neg_elbo(vae, x, eps=eps) as a module's forward, so functional_call can swap its
    parameters (the VAEs' own forward is not the loss)."""

    def __init__(self, vae: nn.Module):
        super().__init__()
        self.vae = vae

    def forward(self, x, eps):
        return neg_elbo(self.vae, x, eps=eps)


def _check_pair(x: torch.Tensor, eps: torch.Tensor, model) -> None:
    if eps.dim() != 2 or eps.shape[0] != x.shape[0] or eps.shape[1] != model.latent_dim:
        raise ValueError(f"eps must be (n, {model.latent_dim}) for x of {x.shape[0]} examples; "
                         f"got {tuple(eps.shape)}")


def per_example_grad_sq_norms(model: nn.Module, x: torch.Tensor, eps: torch.Tensor,
                              batch: int = 64) -> torch.Tensor:
    """(n,) float64 ‖∇θ ℓ(x_i)‖², ℓ the negative ELBO of example i with noise eps[i] (n, L).

    Over all parameters of the model, in the model's dtype and device (each parameter's
    squared norm summed in float64). Eval mode; `batch` examples' gradients exist at once
    (batch × number of parameters values).
    """
    _check_pair(x, eps, model)
    loss = _NegElbo(model)
    device = next(model.parameters()).device
    out = torch.empty(x.shape[0], dtype=torch.float64)
    with eval_mode(model):
        params = {k: v.detach() for k, v in loss.named_parameters()}
        buffers = {k: v.detach() for k, v in loss.named_buffers()}

        def one_loss(p, xi, ei):
            return functional_call(loss, (p, buffers), (xi[None], ei[None]))[0]

        per_example_grad = vmap(grad(one_loss), in_dims=(None, 0, 0))
        for s in range(0, x.shape[0], batch):
            xb, eb = x[s:s + batch].to(device), eps[s:s + batch].to(device)
            grads = per_example_grad(params, xb, eb)              # {name: (b, *shape)}
            sq = sum(g.reshape(g.shape[0], -1).pow(2).sum(1, dtype=torch.float64)
                     for g in grads.values())
            out[s:s + xb.shape[0]] = sq.cpu()
    return out


def self_influence(model: nn.Module, states: list, lrs: list[float], x: torch.Tensor,
                   eps: torch.Tensor, batch: int = 64) -> torch.Tensor:
    """(n,) float64 TracIn self-influence Σ_c lrs[c] · ‖∇θ ℓ(x_i; states[c])‖².

    Each state_dict is loaded (models.load_weights: the model's layout, else ValueError) into
    a copy of model; the caller's model is not changed. The same eps serve every checkpoint.
    """
    if len(states) != len(lrs):
        raise ValueError(f"one learning rate per checkpoint: {len(states)} states, "
                         f"{len(lrs)} learning rates")
    work = copy.deepcopy(model)
    total = torch.zeros(x.shape[0], dtype=torch.float64)
    for c, (state, lr) in enumerate(zip(states, lrs)):
        models.load_weights(work, state, f"checkpoint {c}")
        total += float(lr) * per_example_grad_sq_norms(work, x, eps, batch)
    return total


def per_example_loss(model: nn.Module, x: torch.Tensor, eps: torch.Tensor,
                     batch: int = 256) -> torch.Tensor:
    """(n,) float64 negative ELBO per example with noise eps (n, L); eval mode, no grad."""
    _check_pair(x, eps, model)
    device = next(model.parameters()).device
    out = torch.empty(x.shape[0], dtype=torch.float64)
    with torch.no_grad(), eval_mode(model):
        for s in range(0, x.shape[0], batch):
            xb, eb = x[s:s + batch].to(device), eps[s:s + batch].to(device)
            out[s:s + xb.shape[0]] = neg_elbo(model, xb, eps=eb).double().cpu()
    return out

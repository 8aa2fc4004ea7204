"""TracIn self-influence and per-example losses of a VAE.

TracIn (Pruthi et al., "Estimating Training Data Influence by Tracing Gradient Descent",
NeurIPS 2020, eq. for TracInCP) approximates the influence of a training example z on z' by
Σ_c η_c ∇θℓ(z; θ_c)·∇θℓ(z'; θ_c) over saved checkpoints θ_c with learning rates η_c. Its
self-influence, z' = z,

    SI(x) = Σ_c η_c ‖∇θ ℓ(x; θ_c)‖²,

is large for examples the training had to work hardest to fit (mislabelled, atypical,
memorized ones). This is TracInCP's SGD form: the models are trained with Adam, whose
per-parameter preconditioner is not kept with the checkpoints and is ignored here. ℓ is the
model's loss of one example (model.loss: the negative ELBO) averaged over D fixed
reparameterization draws eps_1..D of that example, the same at every checkpoint, so that the
checkpoints are compared on one loss function and one draw's noise does not decide the
gradient. Per-example gradients use torch.func (functional_call, vmap, grad); the model runs in
eval mode so that BatchNorm uses its running statistics and examples in a chunk do not
interact.
"""
from __future__ import annotations

import copy

import torch
import torch.nn as nn
from torch.func import functional_call, grad, vmap

from memo import models
from memo.models.interface import eval_mode


class _NegElbo(nn.Module):
    """vae.loss(x, eps) as a module's forward, so functional_call can swap its parameters
    (the VAEs' own forward is not the loss)."""

    def __init__(self, vae: nn.Module):
        super().__init__()
        self.vae = vae

    def forward(self, x, eps):
        return self.vae.loss(x, eps)


def _check_pair(x: torch.Tensor, eps: torch.Tensor, model) -> None:
    shape = tuple(model.noise_shape)
    if tuple(eps.shape) != (x.shape[0], *shape):
        raise ValueError(f"eps must be ({', '.join(['n', *map(str, shape)])}) for x of "
                         f"{x.shape[0]} examples; got {tuple(eps.shape)}")


def _draws(x: torch.Tensor, eps: torch.Tensor, model) -> torch.Tensor:
    """eps as (D, n, *noise_shape): one draw (n, *noise_shape) or D of them."""
    shape = tuple(model.noise_shape)
    if eps.dim() == len(shape) + 1:
        eps = eps[None]
    if eps.dim() != len(shape) + 2 or tuple(eps.shape[1:]) != (x.shape[0], *shape):
        raise ValueError(f"eps must be ({', '.join(['n', *map(str, shape)])}) or (D, "
                         f"{', '.join(['n', *map(str, shape)])}) for x of {x.shape[0]} "
                         f"examples; got {tuple(eps.shape)}")
    return eps


def _linear_only(model: nn.Module) -> bool:
    """Whether every parameter belongs to an nn.Linear (the MLP VAE)."""
    return all(isinstance(m, nn.Linear) for m in model.modules()
               if next(m.parameters(recurse=False), None) is not None)


def _linear_grad_sq_norms(model: nn.Module, x: torch.Tensor, eps: torch.Tensor,
                          batch: int) -> torch.Tensor | None:
    """‖∇θ ℓ̄(x_i)‖², ℓ̄ the loss averaged over the D draws eps (D, n, L), for a model of Linear
    layers, each applied once per row: the gradient of W for example i is
    Σ_d δ_di a_diᵀ (δ the gradient at the layer's output, a its input, one row per draw), so
    its squared norm is Σ_{d,e} (δ_di·δ_ei)(a_di·a_ei), and the bias's is ‖Σ_d δ_di‖². One
    backward pass per chunk and no per-example gradient is ever held. None when a layer is not
    used exactly once per row on 2-D inputs (then the general route is taken)."""
    device = next(model.parameters()).device
    D = eps.shape[0]
    out = torch.empty(x.shape[0], dtype=torch.float64)
    layers = [m for m in model.modules() if isinstance(m, nn.Linear)]
    seen: dict[nn.Linear, list] = {}

    def forward_hook(layer, inputs, output):
        a = inputs[0]
        record = seen.setdefault(layer, [])
        record.append(a.detach())
        if output.requires_grad:
            output.register_hook(lambda g: record.append(g.detach()))

    hooks = [layer.register_forward_hook(forward_hook) for layer in layers]
    try:
        with eval_mode(model), torch.enable_grad():
            for s in range(0, x.shape[0], batch):
                xb = x[s:s + batch].to(device)
                b = xb.shape[0]
                rows = xb.expand(D, *xb.shape).reshape(D * b, *xb.shape[1:])   # draw-major
                eb = eps[:, s:s + b].reshape(D * b, *eps.shape[2:]).to(device)
                seen.clear()
                params = [p for p in model.parameters() if p.requires_grad]
                torch.autograd.grad(model.loss(rows, eb).sum() / D, params)
                sq = torch.zeros(b, dtype=torch.float64, device=device)
                for layer in layers:
                    record = seen.get(layer, [])
                    if len(record) != 2 or record[0].dim() != 2 or record[1].dim() != 2:
                        return None           # not once per row on (rows, features)
                    a = record[0].double().view(D, b, -1)
                    delta = record[1].double().view(D, b, -1)
                    if layer.weight.requires_grad:
                        sq += (torch.einsum("dbo,ebo->bde", delta, delta)
                               * torch.einsum("dbi,ebi->bde", a, a)).sum((1, 2))
                    if layer.bias is not None and layer.bias.requires_grad:
                        sq += delta.sum(0).pow(2).sum(1)
                out[s:s + b] = sq.cpu()
    finally:
        for h in hooks:
            h.remove()
    return out


def per_example_grad_sq_norms(model: nn.Module, x: torch.Tensor, eps: torch.Tensor,
                              batch: int = 64, general: bool = False) -> torch.Tensor:
    """(n,) float64 ‖∇θ ℓ̄(x_i)‖², ℓ̄ the negative ELBO of example i averaged over its noise
    draws: eps (n, L) for one draw, (D, n, L) for D.

    Over all parameters of the model, in the model's dtype and device (each parameter's
    squared norm summed in float64). Eval mode. A model of Linear layers (the MLP VAE) takes
    the exact shortcut of `_linear_grad_sq_norms` (for the MLP VAE on 256 examples and one
    draw, 0.16 against 5.2 CPU seconds on the 2-core build machine; equal to 1e-10 relative
    in float64); any other, or general=True, per-example gradients from torch.func, `batch`
    examples' gradients at once (batch × number of parameters values).
    """
    eps = _draws(x, eps, model)
    if not general and _linear_only(model):
        fast = _linear_grad_sq_norms(model, x, eps, max(batch, 256))
        if fast is not None:
            return fast
    loss = _NegElbo(model)
    device = next(model.parameters()).device
    out = torch.empty(x.shape[0], dtype=torch.float64)
    D = eps.shape[0]
    with eval_mode(model):
        params = {k: v.detach() for k, v in loss.named_parameters()}
        buffers = {k: v.detach() for k, v in loss.named_buffers()}

        def one_loss(p, xi, ei):          # xi one example, ei (D, L) its draws
            rows = xi[None].expand(D, *xi.shape)
            return functional_call(loss, (p, buffers), (rows, ei)).mean()

        per_example_grad = vmap(grad(one_loss), in_dims=(None, 0, 1))
        for s in range(0, x.shape[0], batch):
            xb, eb = x[s:s + batch].to(device), eps[:, s:s + batch].to(device)
            grads = per_example_grad(params, xb, eb)              # {name: (b, *shape)}
            sq = sum(g.reshape(g.shape[0], -1).pow(2).sum(1, dtype=torch.float64)
                     for g in grads.values())
            out[s:s + xb.shape[0]] = sq.cpu()
    return out


def self_influence(model: nn.Module, states: list, lrs: list[float], x: torch.Tensor,
                   eps: torch.Tensor, batch: int = 64) -> torch.Tensor:
    """(n,) float64 TracIn self-influence Σ_c lrs[c] · ‖∇θ ℓ(x_i; states[c])‖².

    eps: (n, L) one noise draw per example, or (D, n, L): the gradient is then that of the
    loss averaged over the D draws. Each state_dict is loaded (models.load_weights: the
    model's layout, else ValueError) into a copy of model; the caller's model is not changed.
    The same eps serve every checkpoint.
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
            out[s:s + xb.shape[0]] = model.loss(xb, eb).double().cpu()
    return out

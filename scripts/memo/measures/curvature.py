"""Input-loss curvature of each example: a Hutchinson-style estimate of tr(HᵀH).

Garg, Ravikumar & Roy, "Memorization Through the Lens of Curvature of Loss Function Around
Samples" (arXiv:2307.05831), score an example x by the curvature of the loss in input space,

    Curv(x) = (1/k) Σ_j ‖∇ₓℓ(x + h·v_j) − ∇ₓℓ(x)‖²,   v_j Rademacher (entries ±1),

which Ravikumar et al., "Unveiling Privacy, Memorization, and Input Curvature Links"
(ICML 2024, arXiv:2402.18726), relate to memorization and differential privacy. For small h,
∇ₓℓ(x + hv) − ∇ₓℓ(x) ≈ h·Hv with H the input Hessian of ℓ at x, and E‖Hv‖² = tr(HᵀH) over
Rademacher v (Hutchinson's identity E[vvᵀ] = I). Here the sum is divided by h², so the score
estimates tr(HᵀH) itself and does not change with h where ℓ is quadratic (exactly ‖Av‖² per
vector for ℓ = ½xᵀAx, A symmetric).

Everything is computed in float64: the gradient difference is about h·‖Hv‖ while each gradient
is of size ‖∇ℓ‖, so with h = 1e-3 a float32 difference keeps only ~7 − 3 significant digits
(fewer where ‖∇ℓ‖ ≫ ‖Hv‖), and squaring then dividing by h² = 1e-6 magnifies that error;
float64 leaves ~13 digits.
"""
from __future__ import annotations

import copy

import torch


def _input_gradient(loss_fn, x: torch.Tensor) -> torch.Tensor:
    """∇ₓ of Σ_i loss_fn(x)_i: each example's own gradient when examples do not interact."""
    x = x.detach().requires_grad_(True)
    with torch.enable_grad():
        (g,) = torch.autograd.grad(loss_fn(x).sum(), x)
    return g


def _squared_change(g_moved: torch.Tensor, g: torch.Tensor, h: float) -> torch.Tensor:
    return (g_moved - g).pow(2).flatten(1).sum(1) / (h * h)          # (n,)


def rademacher(shape, generator: torch.Generator | None = None) -> torch.Tensor:
    """int8 tensor of independent ±1 entries (on the generator's device, else the CPU)."""
    device = generator.device if generator is not None else "cpu"
    bits = torch.randint(0, 2, tuple(shape), generator=generator, device=device,
                         dtype=torch.int8)
    return bits * 2 - 1


def curvature_along(loss_fn, x: torch.Tensor, v: torch.Tensor, h: float = 1e-3) -> torch.Tensor:
    """(n,) float64 ‖∇ₓℓ(x + h·v) − ∇ₓℓ(x)‖² / h² per example, for one direction v (shape of x).

    loss_fn(x) -> (n,) per-example losses; it receives float64 inputs."""
    x = x.to(torch.float64)
    v = v.to(device=x.device, dtype=torch.float64)
    return _squared_change(_input_gradient(loss_fn, x + h * v), _input_gradient(loss_fn, x), h)


def input_curvature(loss_fn, x: torch.Tensor, n_vectors: int = 10, h: float = 1e-3,
                    generator: torch.Generator | None = None) -> torch.Tensor:
    """(n,) float64 mean over n_vectors Rademacher v of ‖∇ₓℓ(x + h·v) − ∇ₓℓ(x)‖² / h².

    loss_fn(x) -> (n,) per-example losses of float64 inputs x (n, ...); it is summed before
    differentiating, so each example's gradient is its own as long as examples do not interact
    (no batch statistics). loss_fn must be deterministic (the same loss at x for every v);
    see vae_input_curvature for a loss with reparameterization noise. v is drawn from
    `generator`, one (n, ...) tensor per vector.
    """
    if n_vectors < 1 or not h > 0:
        raise ValueError(f"need n_vectors >= 1 and h > 0; got {n_vectors}, {h}")
    x = x.to(torch.float64)
    g = _input_gradient(loss_fn, x)
    total = torch.zeros(x.shape[0], dtype=torch.float64, device=x.device)
    for _ in range(n_vectors):
        v = rademacher(x.shape, generator).to(device=x.device, dtype=torch.float64)
        total += _squared_change(_input_gradient(loss_fn, x + h * v), g, h)
    return (total / n_vectors).cpu()


def vae_input_curvature(model, x: torch.Tensor, n_vectors: int = 10, h: float = 1e-3,
                        generator: torch.Generator | None = None,
                        batch: int = 256) -> torch.Tensor:
    """(n,) float64 input curvature of the loss of each x_i (model.loss: the negative ELBO).

    The model runs as a float64 copy in eval mode (the caller's model is unchanged). For each
    of the n_vectors Rademacher vectors, v (n, ...) and the reparameterization noise eps
    (n, L) are drawn from `generator` for all examples at once (so results do not depend on
    `batch`), and the same eps serves x and x + h·v: the difference is then that of one
    smooth loss, not of two noise draws. x are the model's inputs (binarized or logit-space).
    """
    if n_vectors < 1 or not h > 0:
        raise ValueError(f"need n_vectors >= 1 and h > 0; got {n_vectors}, {h}")
    work = copy.deepcopy(model).to(torch.float64).eval()
    work.requires_grad_(False)                  # only input gradients are needed
    device = next(work.parameters()).device
    gen_device = generator.device if generator is not None else "cpu"
    n = x.shape[0]
    total = torch.zeros(n, dtype=torch.float64)
    for _ in range(n_vectors):
        v = rademacher(x.shape, generator)                                   # (n, ...) int8
        eps = work.noise(n, generator, gen_device, torch.float64)
        for s in range(0, n, batch):
            xb = x[s:s + batch].to(device=device, dtype=torch.float64)
            b = xb.shape[0]
            vb = v[s:s + b].to(device=device, dtype=torch.float64)
            eb = eps[s:s + b].to(device)
            # x and x + h·v in one pass (eval mode: the two halves do not interact)
            both_eps = torch.cat([eb, eb])
            g = _input_gradient(lambda y: work.loss(y, both_eps),
                                torch.cat([xb, xb + h * vb]))
            total[s:s + b] += _squared_change(g[b:], g[:b], h).cpu()
    return total / n_vectors

"""Input-loss curvature of each example: a Hutchinson estimate of tr(HᵀH).

Garg, Ravikumar & Roy, "Memorization Through the Lens of Curvature of Loss Function Around
Samples" (arXiv:2307.05831), score an example x by the curvature of the loss in input space,
tr(HᵀH) for H the Hessian of ℓ in x, which Ravikumar et al., "Unveiling Privacy, Memorization,
and Input Curvature Links" (ICML 2024, arXiv:2402.18726), relate to memorization and
differential privacy. With v Rademacher (entries ±1), E[vvᵀ] = I and so E‖Hv‖² = tr(HᵀH)
(Hutchinson's identity); the estimate is the mean of ‖Hv_j‖² over k vectors.

Here Hv is computed exactly by double backpropagation: g = ∇ₓℓ(x) with its graph kept, then
Hv = ∇ₓ(g·v). The sources approximate it by a forward difference, ‖∇ₓℓ(x + h·v) − ∇ₓℓ(x)‖²/h²,
which is kept as an option (h > 0) to compare with them. It is not an estimate of tr(HᵀH) for
these models: their ReLU networks have kinks, and a difference that steps across one adds
(jump)²/h² terms that grow as h shrinks (tests/test_measures.py shows it on a ReLU loss). Where
ℓ is twice differentiable along the step both agree to O(h). Everything is in float64.
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


def _hessian_vector(loss_fn, x: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """H_i v_i for every example i at once (H_i the input Hessian of loss_fn(x)_i): the
    gradient of Σ_i ∇ₓℓ_i·v_i, exact when examples do not interact."""
    x = x.detach().requires_grad_(True)
    with torch.enable_grad():
        (g,) = torch.autograd.grad(loss_fn(x).sum(), x, create_graph=True)
        (hv,) = torch.autograd.grad(g, x, grad_outputs=v)
    return hv


def _sq(t: torch.Tensor) -> torch.Tensor:
    return t.pow(2).flatten(1).sum(1)


def rademacher(shape, generator: torch.Generator | None = None) -> torch.Tensor:
    """int8 tensor of independent ±1 entries (on the generator's device, else the CPU)."""
    device = generator.device if generator is not None else "cpu"
    bits = torch.randint(0, 2, tuple(shape), generator=generator, device=device,
                         dtype=torch.int8)
    return bits * 2 - 1


def _check(n_vectors: int, h) -> None:
    if n_vectors < 1 or (h is not None and not h > 0):
        raise ValueError(f"need n_vectors >= 1 and h None (exact) or > 0; got {n_vectors}, {h}")


def curvature_along(loss_fn, x: torch.Tensor, v: torch.Tensor, h: float | None = None
                    ) -> torch.Tensor:
    """(n,) float64 ‖H_i v_i‖² per example for one direction v (shape of x), H_i the input
    Hessian of loss_fn(x)_i: exact for h None, else the forward difference
    ‖∇ₓℓ(x + h·v) − ∇ₓℓ(x)‖² / h². loss_fn(x) -> (n,) losses of float64 inputs."""
    x = x.to(torch.float64)
    v = v.to(device=x.device, dtype=torch.float64)
    if h is None:
        return _sq(_hessian_vector(loss_fn, x, v))
    return _sq(_input_gradient(loss_fn, x + h * v) - _input_gradient(loss_fn, x)) / (h * h)


def input_curvature(loss_fn, x: torch.Tensor, n_vectors: int = 10, h: float | None = None,
                    generator: torch.Generator | None = None) -> torch.Tensor:
    """(n,) float64 mean over n_vectors Rademacher v of ‖H_i v‖² (curvature_along; exact for
    h None).

    loss_fn(x) -> (n,) per-example losses of float64 inputs x (n, ...); it is summed before
    differentiating, so each example's derivatives are its own as long as examples do not
    interact (no batch statistics). loss_fn must be deterministic; see vae_input_curvature
    for a loss with reparameterization noise. v is drawn from `generator`, one (n, ...)
    tensor per vector.
    """
    _check(n_vectors, h)
    x = x.to(torch.float64)
    total = torch.zeros(x.shape[0], dtype=torch.float64, device=x.device)
    for _ in range(n_vectors):
        v = rademacher(x.shape, generator).to(device=x.device, dtype=torch.float64)
        total += curvature_along(loss_fn, x, v, h)
    return (total / n_vectors).cpu()


def vae_input_curvature(model, x: torch.Tensor, n_vectors: int = 10, h: float | None = None,
                        generator: torch.Generator | None = None,
                        batch: int = 64) -> torch.Tensor:
    """(n,) float64 input curvature of the loss of each x_i (model.loss: the negative ELBO):
    the mean over n_vectors pairs (v_j, eps_j) of ‖H v_j‖², H the input Hessian of the loss
    with reparameterization noise eps_j held fixed; exact (double backpropagation) for h
    None, the forward difference of step h otherwise.

    The model runs as a float64 copy in eval mode (the caller's model is unchanged). For each
    vector, v (n, ...) and then eps (n, L) are drawn from `generator` for all examples at once
    (so results do not depend on `batch`, and both forms see the same pairs). The k pairs of
    `batch` examples go through the model as one batch of k·batch rows. x are the model's
    inputs (binarized or logit-space).
    """
    _check(n_vectors, h)
    work = copy.deepcopy(model).to(torch.float64).eval()
    work.requires_grad_(False)                  # only input derivatives are needed
    device = next(work.parameters()).device
    gen_device = generator.device if generator is not None else "cpu"
    n, k = x.shape[0], n_vectors
    vs, epss = [], []
    for _ in range(k):
        vs.append(rademacher(x.shape, generator))                            # (n, ...) int8
        epss.append(work.noise(n, generator, gen_device, torch.float64))
    v, eps = torch.stack(vs), torch.stack(epss)                              # (k, n, ...)
    total = torch.zeros(n, dtype=torch.float64)
    for s in range(0, n, batch):
        xb = x[s:s + batch].to(device=device, dtype=torch.float64)
        b = xb.shape[0]
        rows = xb.expand(k, *xb.shape).reshape(k * b, *xb.shape[1:])          # vector-major
        vb = v[:, s:s + b].reshape(k * b, *xb.shape[1:]).to(device, torch.float64)
        eb = eps[:, s:s + b].reshape(k * b, *eps.shape[2:]).to(device)
        if h is None:
            per = _sq(_hessian_vector(lambda y: work.loss(y, eb), rows, vb))
        else:   # x and x + h·v in one pass (eval mode: the rows do not interact)
            both = torch.cat([eb, eb])
            g = _input_gradient(lambda y: work.loss(y, both), torch.cat([rows, rows + h * vb]))
            per = _sq(g[k * b:] - g[:k * b]) / (h * h)
        total[s:s + b] = per.view(k, b).mean(0).cpu()
    return total

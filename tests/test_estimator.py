"""Importance-sampled log p(x) against exact marginals, and the pixel-space conversion."""
import math

import pytest
import torch
import torch.nn as nn

from memo.models import estimator
from memo import models
from memo.data import preprocess


def pytest_approx(v):
    return pytest.approx(v, rel=1e-6)


class LinearGaussian(nn.Module):
    """p(z) = N(0, I), p(x|z) = N(Wz + b, s²I) with orthogonal columns of W, so the exact
    posterior is diagonal: q(z|x) = N(Σ Wᵀ(x − b)/s², Σ), Σ = (I + WᵀW/s²)⁻¹."""
    binary = True  # no logit-space conversion

    def __init__(self, d=6, latent=3, s=0.5, seed=0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        q, _ = torch.linalg.qr(torch.randn(d, latent, generator=g, dtype=torch.float64))
        self.W = q * torch.tensor([2.0, 1.0, 0.5], dtype=torch.float64)  # orthogonal columns
        self.b = torch.randn(d, generator=g, dtype=torch.float64)
        self.s2 = s * s
        self.post_var = 1.0 / (1.0 + (self.W ** 2).sum(0) / self.s2)  # diag of Σ
        self.mean_shift, self.var_scale = 0.0, 1.0                     # proposal distortion

    def encode(self, x):
        mu = self.post_var * ((x - self.b) @ self.W) / self.s2 + self.mean_shift
        return mu, torch.log(self.post_var * self.var_scale).expand_as(mu)

    def decode(self, z):
        return z @ self.W.T + self.b

    def log_likelihood(self, x, mean):
        x = x.view(x.shape[0], *([1] * (mean.dim() - 2)), -1)
        return (-0.5 * (math.log(2 * math.pi * self.s2) + (x - mean) ** 2 / self.s2)).sum(-1)

    def exact_log_px(self, x):
        cov = self.W @ self.W.T + self.s2 * torch.eye(len(self.b), dtype=torch.float64)
        return torch.distributions.MultivariateNormal(self.b, cov).log_prob(x)


def test_log_px_exact_with_exact_posterior():
    model = LinearGaussian()
    x = torch.randn(5, 6, generator=torch.Generator().manual_seed(1), dtype=torch.float64) * 2
    lp, ess = estimator.log_px(model, x, 16, torch.Generator().manual_seed(2), chunk=7)
    # every importance weight equals p(x): exact up to float64 rounding, ESS = N
    assert torch.allclose(lp, model.exact_log_px(x), atol=1e-10, rtol=0)
    assert torch.allclose(ess, torch.full((5,), 16.0, dtype=torch.float64), atol=1e-8)


def test_log_px_converges_with_a_worse_proposal():
    model = LinearGaussian()
    model.mean_shift, model.var_scale = 0.3, 2.0
    x = torch.randn(4, 6, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    n = 40000
    log_w = estimator.log_weights(model, x, n, torch.Generator().manual_seed(4))
    lp = estimator.logmeanexp(log_w, 1)
    # delta method: sd(log p̂) ≈ sd(w) / (√N · mean(w)); a fixed seed keeps this deterministic,
    # and 5 standard errors leave room for the estimator's small O(1/N) bias
    w = torch.exp(log_w - log_w.max(1, keepdim=True).values)
    se = w.std(1) / (math.sqrt(n) * w.mean(1))
    err = (lp - model.exact_log_px(x)).abs()
    assert (err < 5 * se).all(), (err, se)
    assert (se < 0.01).all()
    ess = estimator.effective_sample_size(log_w, 1)
    assert ((ess > 1) & (ess < n)).all()


def test_logmeanexp_known_values_and_stability():
    a = torch.tensor([[0.0, math.log(3.0)], [1000.0, 1000.0], [-1000.0, -1000.0 + math.log(3.0)]])
    out = estimator.logmeanexp(a, 1)
    assert torch.allclose(out, torch.tensor([math.log(2.0), 1000.0, -1000.0 + math.log(2.0)]))


def test_ess_of_equal_and_degenerate_weights():
    assert estimator.effective_sample_size(torch.zeros(1, 10)).item() == pytest_approx(10.0)
    w = torch.tensor([[0.0, -1e4, -1e4, -1e4]])
    assert estimator.effective_sample_size(w).item() == pytest_approx(1.0)


def test_logit_to_pixel_term_by_hand():
    # D = 1, y = 0: log(1 − 2λ) − log 256 − (0 − 2·softplus(0)) = log 0.9 − log 256 + 2 log 2
    y = torch.zeros(1, 1, 1, 1)
    expected = math.log(0.9) - math.log(256) + 2 * math.log(2)
    assert preprocess.logit_to_pixel_log_jacobian(y).item() == pytest_approx(expected)


def test_logit_to_pixel_term_matches_the_jacobian():
    # log p(pixel) = log p(y) + log|dy/dx̃| − log 256, with y = logit(λ + (1 − 2λ) x̃)
    x_tilde = torch.tensor([0.01, 0.3, 0.5, 0.97], dtype=torch.float64)
    y = preprocess.to_logit(x_tilde)
    dydx = torch.func.vmap(torch.func.grad(lambda t: preprocess.to_logit(t)))(x_tilde)
    expected = torch.log(dydx).sum() - 4 * math.log(256)
    got = preprocess.logit_to_pixel_log_jacobian(y.view(1, 1, 2, 2))
    assert got.item() == pytest_approx(expected.item())


def test_logit_models_report_pixel_space_log_px():
    torch.manual_seed(0)
    model = models.build("ConstantGaussianDCVAE", 4, 3).eval()
    x = preprocess.eval_inputs(torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8),
                               torch.arange(2), binary=False, seed=0)
    lp, _ = estimator.log_px(model, x, 4, torch.Generator().manual_seed(0))
    lp_logit = estimator.logmeanexp(
        estimator.log_weights(model, x, 4, torch.Generator().manual_seed(0)), 1)
    assert torch.allclose(lp, lp_logit + preprocess.logit_to_pixel_log_jacobian(x), atol=1e-3)


def test_chunk_size_does_not_change_the_estimate():
    torch.manual_seed(0)
    model = models.build("BernoulliMLPVAE", 8, 1).eval()
    x = (torch.rand(6, 1, 32, 32) < 0.3).float()
    runs = [estimator.log_px(model, x, 32, torch.Generator().manual_seed(5), chunk=c)[0]
            for c in (6, 64, 10 ** 6)]  # 1, 10 and 32 samples per chunk
    assert torch.allclose(runs[0], runs[1], atol=1e-4) and torch.allclose(runs[0], runs[2], atol=1e-4)


@pytest.fixture
def small_device_memory(monkeypatch):
    """Decoding more than 64 rows at once raises torch.OutOfMemoryError, as on a small GPU."""
    monkeypatch.setattr(estimator, "_ROW_LIMIT", {})
    real = models.BernoulliMLPVAE.decode
    calls = []

    def decode(self, z):
        rows = z.numel() // z.shape[-1]
        calls.append(rows)
        if rows > 64:
            raise torch.OutOfMemoryError("out of memory (test)")
        return real(self, z)
    monkeypatch.setattr(models.BernoulliMLPVAE, "decode", decode)
    return calls


def test_running_out_of_memory_halves_the_chunk_and_keeps_the_numbers(small_device_memory):
    torch.manual_seed(0)
    model = models.build("BernoulliMLPVAE", 4, 1).eval()
    x = (torch.rand(8, 1, 32, 32) < 0.5).float()
    eps = torch.randn(8, 40, 4)
    lp, ess = estimator.log_px(model, x, 40, chunk=1024, eps=eps)   # 320 rows: too many
    assert small_device_memory[:3] == [320, 160, 80] and max(small_device_memory[3:]) <= 64
    assert estimator._ROW_LIMIT == {"cpu": 40}  # remembered: later calls start below
    small_device_memory.clear()
    again, _ = estimator.log_px(model, x, 40, chunk=1024, eps=eps)
    assert max(small_device_memory) <= 40 and torch.equal(again, lp)
    ref, _ = estimator.log_px(model, x, 40, chunk=8, eps=eps)  # one sample a chunk, no retry
    assert torch.allclose(lp, ref, rtol=1e-6)


def test_out_of_memory_with_single_samples_is_raised(small_device_memory):
    model = models.build("BernoulliMLPVAE", 4, 1).eval()
    x = (torch.rand(100, 1, 32, 32) < 0.5).float()  # 100 rows even at one sample each
    with pytest.raises(torch.OutOfMemoryError):
        estimator.log_px(model, x, 4, eps=torch.randn(100, 4, 4))


def test_grouped_importance_sampling_also_shrinks_its_chunks(small_device_memory):
    from memo.train import ensemble, training
    from memo.config.experiments import Experiment
    exp = Experiment(name="t", data="npz:x", model="BernoulliMLPVAE", latent_dim=4, lr=1e-3,
                     epochs=1, eval_every=1, n_is=40)
    stack = ensemble.StackedVAEs([training.init_model(exp, g, 1, "cpu") for g in range(2)], 1e-3)
    images = torch.randint(0, 256, (12, 1, 32, 32), dtype=torch.uint8)
    indices = [torch.arange(0, 8), torch.arange(4, 12)]

    def run(is_rows):
        gens = [torch.Generator().manual_seed(g) for g in range(2)]
        return ensemble.group_log_px(stack, images, indices, gens, 40, 0, is_rows=is_rows)
    big = run(100_000)        # 8 examples x 40 samples per model: out of memory, then halved
    assert max(small_device_memory) > 64 and estimator._ROW_LIMIT["cpu"] <= 64
    small = run(16)           # 8 rows per model a chunk: never out of memory
    for (lp_big, _), (lp_small, _) in zip(big, small):
        assert torch.allclose(lp_big, lp_small, rtol=1e-6)


def test_bernoulli_log_likelihood_by_hand_for_one_and_many_samples():
    """log Bern(x; sigmoid(l)) summed over pixels, for (B, D) logits (training) and
    (B, N, D) logits (importance sampling: another code path), against the textbook form."""
    model = models.build("BernoulliMLPVAE", 2, 1)
    g = torch.Generator().manual_seed(0)
    x = (torch.rand(3, 1, 32, 32, generator=g) < 0.3).float()
    logits = 4 * torch.randn(3, 5, 1024, generator=g, dtype=torch.float64)
    p = torch.sigmoid(logits)
    xf = x.flatten(1)[:, None].double()
    expected = (xf * torch.log(p) + (1 - xf) * torch.log1p(-p)).sum(-1)     # (3, 5)
    assert torch.allclose(model.log_likelihood(x.double(), logits), expected, rtol=1e-10)
    for j in range(5):
        assert torch.allclose(model.log_likelihood(x.double(), logits[:, j]), expected[:, j],
                              rtol=1e-10)

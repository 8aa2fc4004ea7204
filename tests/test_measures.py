import itertools
import math

import numpy as np
import pytest
import torch

from memo.measures import copying, curvature, influence
from memo import models
from memo.score import rankstats
from memo.models.objectives import neg_elbo


def _tiny_dcvae(latent=4):
    torch.manual_seed(1)
    model = models.ConstantGaussianDCVAE(latent_dim=latent, in_channels=1, nf=4)
    # non-trivial running statistics, so eval mode differs from batch statistics
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
    return model


def _tiny_mlp(latent=4):
    torch.manual_seed(0)
    return models.BernoulliMLPVAE(latent_dim=latent, in_channels=1, size=8)


# --- copying: the 1/3 rule -------------------------------------------------------------------

def test_query_next_to_a_training_point_is_a_copy_and_equidistant_is_not():
    training = torch.tensor([[0.0, 0.0], [0.9, 0.0], [0.0, 0.9]])
    queries = torch.tensor([[0.01, 0.0],    # next to training[0]: 0.01 / 0.89 < 1/3
                            [0.45, 0.0],    # equidistant from training[0] and [1]: ratio 1
                            [0.0, 0.3]])    # 0.3 / 0.6 = 1/2: nearer to [0], not a copy
    r = copying.copying(queries, training)
    assert r.is_copy.tolist() == [True, False, False]
    assert r.nearest[0].item() == 0
    torch.testing.assert_close(r.d1, torch.tensor([0.01, 0.45, 0.3], dtype=torch.float64))
    torch.testing.assert_close(r.d2[[0, 2]], torch.tensor([0.89, 0.6], dtype=torch.float64))
    assert r.ratio == pytest.approx(1 / 3)
    assert r.copies_per_example.tolist() == [1, 0, 0]
    assert r.copies_per_example.dtype == torch.int64


def test_exact_duplicates_in_training_do_not_give_zero_d2_and_share_the_count():
    a, b = [0.2, 0.2, 0.2], [0.8, 0.8, 0.8]
    training = torch.tensor([b, a, b, a, [0.2, 0.8, 0.2]])   # a at 1 and 3, b at 0 and 2
    queries = torch.tensor([a, [0.21, 0.2, 0.2], b])          # exact a, near a, exact b
    r = copying.copying(queries, training)
    assert r.n_distinct == 3
    assert (r.d2 > 0).all()
    assert r.is_copy.all()
    assert r.nearest.tolist() == [1, 1, 0]                    # first occurrences
    assert r.d1[0].item() == 0.0 and r.d1[2].item() == 0.0
    torch.testing.assert_close(r.d2[0], torch.tensor(0.6, dtype=torch.float64))
    assert r.copies_per_example.tolist() == [1, 2, 1, 2, 0]   # each duplicate: its image's count


def test_distinct_rows_inverse_and_first_occurrence():
    x = torch.tensor([[1, 2], [0, 0], [1, 2], [3, 1], [0, 0], [1, 2]])
    unique, inverse, first = copying.distinct_rows(x)
    assert unique.shape == (3, 2)
    assert torch.equal(unique[inverse], x)
    assert torch.equal(x[first], unique)
    assert sorted(first.tolist()) == [0, 1, 3]
    assert inverse.dtype == torch.int64 and first.dtype == torch.int64


def _brute_top2(q, r):
    d = torch.cdist(q.double(), r.double(), compute_mode="donot_use_mm_for_euclid_dist")
    val, idx = torch.sort(d, dim=1, stable=True)
    return val[:, 0], val[:, 1], idx[:, 0]


def test_nearest_two_blockwise_equals_brute_force():
    g = torch.Generator().manual_seed(0)
    q = torch.rand((23, 7), generator=g)
    r = torch.rand((17, 7), generator=g)
    q[3] = r[5]                       # exact duplicate
    q[20] = r[16]                     # in the last, partial column block
    for rows, cols in [(4, 5), (1, 1), (23, 17), (100, 100), (7, 3), (5, 2)]:
        d1, d2, nearest = copying.nearest_two(q, r, block_rows=rows, block_cols=cols)
        w1, w2, w_idx = _brute_top2(q, r)
        torch.testing.assert_close(d1, w1, rtol=0, atol=1e-12)
        torch.testing.assert_close(d2, w2, rtol=0, atol=1e-12)
        assert torch.equal(nearest, w_idx)
        assert d1[3].item() == 0.0 and nearest[3].item() == 5
        assert d1[20].item() == 0.0 and nearest[20].item() == 16


def test_nearest_two_ties_go_to_the_lower_index_and_one_reference_gives_inf():
    refs = torch.arange(6, dtype=torch.float64)[:, None]     # 0, 1, ..., 5 on a line
    queries = torch.tensor([[2.5], [0.5]], dtype=torch.float64)
    for cols in (1, 2, 4, 6):
        d1, d2, nearest = copying.nearest_two(queries, refs, block_cols=cols)
        assert nearest.tolist() == [2, 0]
        assert d1.tolist() == [0.5, 0.5] and d2.tolist() == [0.5, 0.5]
    d1, d2, nearest = copying.nearest_two(queries, refs[:1])
    assert d2.isinf().all() and nearest.tolist() == [0, 0]


def test_is_copy_edge_cases():
    assert copying.is_copy(0.0, 1.0)
    assert not copying.is_copy(0.0, 0.0)          # 0/0: no copy
    assert not copying.is_copy(1.0, 3.0)          # exactly 1/3 is not below it
    assert copying.is_copy(0.99, 3.0)
    assert copying.is_copy(1.0, math.inf)         # a single training image
    out = copying.is_copy(torch.tensor([0.1, 0.5]), torch.tensor([1.0, 1.0]), threshold=0.4)
    assert out.tolist() == [True, False]


def test_clopper_pearson_known_values():
    lo, hi = copying.clopper_pearson(0, 10)
    assert lo == 0.0 and hi == pytest.approx(1 - 0.025 ** 0.1, abs=1e-12)  # 0.3085
    assert hi == pytest.approx(0.3085, abs=1e-4)
    lo, hi = copying.clopper_pearson(10, 10)
    assert hi == 1.0 and lo == pytest.approx(0.025 ** 0.1, abs=1e-12)
    lo, hi = copying.clopper_pearson(5, 10)
    assert lo == pytest.approx(0.18709, abs=1e-5) and hi == pytest.approx(0.81291, abs=1e-5)
    r = copying.copying(torch.rand(10, 3) * 0.1 + 0.45,
                        torch.tensor([[0.0, 0.0, 0.0], [1.0, 1.0, 1.0]]))
    assert r.ratio == 0.0 and r.interval == pytest.approx((0.0, 0.3085), abs=1e-4)


def test_copying_refuses_logit_space_inputs():
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        copying.copying(torch.tensor([[-2.0, 3.0]]), torch.tensor([[0.0, 1.0]]))


@pytest.mark.parametrize("make", [_tiny_mlp, _tiny_dcvae])
def test_samples_are_pixel_means_reproducible_and_batch_independent(make):
    model = make()
    model.train()
    a = copying.sample_images(model, 7, torch.Generator().manual_seed(3), batch=3)
    b = copying.sample_images(model, 7, torch.Generator().manual_seed(3), batch=512)
    size = 64 if isinstance(model, models.BernoulliMLPVAE) else 1024
    assert a.shape == (7, size) and a.dtype == torch.float32
    assert a.min() >= 0 and a.max() <= 1
    torch.testing.assert_close(a, b)
    assert model.training                                       # mode restored
    # the MLP's pixel means are sigmoid(logits) of the decoder
    if isinstance(model, models.BernoulliMLPVAE):
        z = torch.randn((7, 4), generator=torch.Generator().manual_seed(3))
        with torch.no_grad():
            want = torch.sigmoid(model.decode(z))
        torch.testing.assert_close(a, want)


# --- input curvature -------------------------------------------------------------------------

def _quadratic(d=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    b = torch.randn((d, d), generator=g, dtype=torch.float64)
    a = (b + b.T) / 2                                        # symmetric: ∇(½xᵀAx) = Ax
    return a, (lambda x: 0.5 * ((x @ a) * x).sum(1))


SIGNS4 = torch.tensor(list(itertools.product([-1.0, 1.0], repeat=4)), dtype=torch.float64)


@pytest.mark.parametrize("h", [None, 1e-3])
def test_curvature_of_a_quadratic_is_norm_of_av_per_vector_and_trace_over_all_signs(h):
    a, loss = _quadratic()
    x = torch.randn((16, 4), generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    per_vector = curvature.curvature_along(loss, x, SIGNS4, h=h)
    want = ((SIGNS4 @ a) ** 2).sum(1)                        # ‖Av‖² per sign vector
    torch.testing.assert_close(per_vector, want, rtol=1e-8, atol=0)
    # the mean over all 2^d sign vectors is E‖Av‖² = tr(AᵀA) exactly
    torch.testing.assert_close(per_vector.mean(), torch.trace(a.T @ a), rtol=1e-8, atol=0)


def test_curvature_of_a_quadratic_does_not_depend_on_h_and_equals_the_exact_form():
    a, loss = _quadratic()
    x = torch.randn((5, 4), generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    exact = curvature.input_curvature(loss, x, 3, None, torch.Generator().manual_seed(0))
    for h in (1e-4, 1e-3, 0.1, 10.0):
        v = curvature.input_curvature(loss, x, 3, h, torch.Generator().manual_seed(0))
        torch.testing.assert_close(v, exact, rtol=1e-6, atol=0)


def test_input_curvature_estimates_the_trace_and_each_value_is_a_sign_vectors():
    a, loss = _quadratic()
    x = torch.zeros((4000, 4), dtype=torch.float64)
    one = curvature.input_curvature(loss, x, 1, None, torch.Generator().manual_seed(0))
    possible = ((SIGNS4 @ a) ** 2).sum(1)
    assert ((one[:, None] - possible[None, :]).abs().min(1).values < 1e-9).all()
    exact = torch.trace(a.T @ a).item()
    assert one.mean().item() == pytest.approx(exact, rel=0.03)


def test_a_difference_across_a_relu_kink_is_not_the_curvature_and_the_exact_form_is():
    # ℓ(x) = 3·relu(a·x) + ½‖x‖²: H = I wherever a·x ≠ 0, so tr(HᵀH) = d; the gradient jumps
    # by 3a at the kink, and a step across it adds about ‖3a‖²/h²
    d = 6
    a = torch.linspace(-1, 1, d, dtype=torch.float64)

    def loss(x):
        return 3 * torch.relu(x @ a) + 0.5 * x.pow(2).sum(1)
    x = (1e-5 * a / a.dot(a))[None]                          # a·x = 1e-5: next to the kink
    v = torch.where(a > 0, -1.0, 1.0).to(torch.float64)[None]   # a·v < 0: the step crosses it
    assert curvature.curvature_along(loss, x, v).item() == pytest.approx(d, rel=1e-12)
    for h in (1e-3, 1e-4):
        fd = curvature.curvature_along(loss, x, v, h).item()
        assert fd > 1e3 * d and fd == pytest.approx(9 * a.dot(a).item() / h ** 2, rel=0.05)


def _vae_pairs(model, x, k, seed):
    """The (v_j, eps_j) vae_input_curvature draws from a generator of that seed."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(k):
        v = curvature.rademacher(x.shape, g).double()
        out.append((v, model.noise(x.shape[0], g, "cpu", torch.float64)))
    return out


def test_vae_curvature_equals_a_brute_force_hessian_and_its_mean_the_trace():
    model = _tiny_mlp().double().eval()                      # inputs 1×8×8: 64-d Hessians
    g = torch.Generator().manual_seed(3)
    x = (torch.rand((3, 1, 8, 8), generator=g) < 0.5).double()
    pairs = _vae_pairs(model, x, 2, seed=7)
    got = curvature.vae_input_curvature(model, x, n_vectors=2,
                                        generator=torch.Generator().manual_seed(7), batch=2)
    want = torch.zeros(3, dtype=torch.float64)
    hessians = []
    for i in range(3):
        for v, eps in pairs:
            h = torch.autograd.functional.hessian(
                lambda y: model.loss(y.view(1, 1, 8, 8), eps[i:i + 1]).sum(),
                x[i].flatten()).detach()
            hessians.append((h, eps[i:i + 1]))
            want[i] += (h @ v[i].flatten()).pow(2).sum() / 2
    torch.testing.assert_close(got, want, rtol=1e-9, atol=0)
    # the Rademacher mean with the noise fixed estimates ‖H‖_F² (= tr(HᵀH), H symmetric)
    h, eps = hessians[0]
    exact = h.pow(2).sum().item()
    k = 3000
    draws = curvature.curvature_along(
        lambda y: model.loss(y, eps.expand(k, -1)), x[:1].expand(k, -1, -1, -1),
        curvature.rademacher((k, 1, 8, 8), torch.Generator().manual_seed(9)))
    se = draws.std().item() / math.sqrt(k)
    assert abs(draws.mean().item() - exact) < 4 * se and se < 0.05 * exact


def test_vae_curvature_by_difference_approaches_the_exact_form_where_smooth():
    # the DCVAE's loss of logit-space inputs, where no step of 1e-6 crosses a kink: the
    # difference is the exact value to O(h), with the same pairs (v, eps)
    model = _tiny_dcvae()
    x = torch.randn((4, 1, 32, 32), generator=torch.Generator().manual_seed(0))
    exact = curvature.vae_input_curvature(model, x, 2, None, torch.Generator().manual_seed(1))
    fd = curvature.vae_input_curvature(model, x, 2, 1e-6, torch.Generator().manual_seed(1))
    assert (exact > 0).all()
    torch.testing.assert_close(fd, exact, rtol=1e-3, atol=0)


@pytest.mark.parametrize("make", [_tiny_mlp, _tiny_dcvae])
def test_vae_input_curvature_is_finite_non_negative_and_leaves_the_model(make):
    model = make()
    model.train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    g = torch.Generator().manual_seed(0)
    if model.binary:
        x = (torch.rand((5, 1, 8, 8), generator=g) < 0.5).float()
    else:
        x = torch.randn((5, 1, 32, 32), generator=g)
    c = curvature.vae_input_curvature(model, x, n_vectors=3,
                                      generator=torch.Generator().manual_seed(4), batch=2)
    c_one_batch = curvature.vae_input_curvature(model, x, n_vectors=3,
                                                generator=torch.Generator().manual_seed(4),
                                                batch=5)
    assert c.shape == (5,) and c.dtype == torch.float64
    assert torch.isfinite(c).all() and (c >= 0).all() and (c > 0).any()
    torch.testing.assert_close(c, c_one_batch, rtol=1e-10, atol=0)   # independent of batch
    assert next(model.parameters()).dtype == torch.float32 and model.training
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k])


# --- TracIn self-influence and losses --------------------------------------------------------

def _brute_grad_sq_norms(model, x, eps):
    """One backward per example of its loss averaged over its draws eps (D, n, L)."""
    model.eval()
    out = []
    for i in range(x.shape[0]):
        model.zero_grad()
        draws = eps[:, i]
        neg_elbo(model, x[i:i + 1].expand(len(draws), *x.shape[1:]),
                 eps=draws).mean().backward()
        out.append(sum(p.grad.double().pow(2).sum() for p in model.parameters()).item())
    return torch.tensor(out, dtype=torch.float64)


@pytest.mark.parametrize("make,draws", [(_tiny_mlp, 1), (_tiny_mlp, 3), (_tiny_dcvae, 2)])
def test_self_influence_equals_a_loop_over_examples(make, draws):
    # float64: in float32 the two summation orders can put a ReLU input on either side of 0
    # (seen: 0.3 % on one example of the perturbed MLP), which is rounding, not a defect
    model = make().double()
    g = torch.Generator().manual_seed(0)
    x = ((torch.rand((7, 1, 8, 8), generator=g) < 0.5).double() if model.binary
         else torch.randn((7, 1, 32, 32), generator=g, dtype=torch.float64))
    eps = torch.randn((draws, 7, 4), generator=g, dtype=torch.float64)
    second = {k: v + 0.05 * torch.randn(v.shape, generator=g, dtype=v.dtype)
              if v.is_floating_point() else v for k, v in model.state_dict().items()}
    states, lrs = [model.state_dict(), second], [0.1, 0.03]
    before = {k: v.clone() for k, v in model.state_dict().items()}
    model.train()
    got = influence.self_influence(model, states, lrs, x, eps[0] if draws == 1 else eps,
                                   batch=3)
    assert model.training
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    brute = torch.zeros(7, dtype=torch.float64)
    reference = make().double()
    for state, lr in zip(states, lrs):
        reference.load_state_dict(state)
        brute += lr * _brute_grad_sq_norms(reference, x, eps)
    torch.testing.assert_close(got, brute, rtol=1e-5, atol=0)


def test_per_example_loss_is_the_eval_mode_neg_elbo():
    model = _tiny_dcvae()
    x = torch.randn((5, 1, 32, 32), generator=torch.Generator().manual_seed(0))
    eps = torch.randn((5, 4), generator=torch.Generator().manual_seed(1))
    model.train()
    got = influence.per_example_loss(model, x, eps, batch=2)
    assert model.training
    model.eval()
    with torch.no_grad():
        want = neg_elbo(model, x, eps=eps).double()
    torch.testing.assert_close(got, want, rtol=1e-6, atol=0)


# --- rank statistics -------------------------------------------------------------------------

def test_auroc_hand_computed_and_with_ties():
    assert rankstats.auroc([0.1, 0.4, 0.35, 0.8], np.array([False, False, True, True])) == 0.75
    # one positive at 1 against negatives 1, 0, 1: ½ + 1 + ½ over 3 pairs
    assert rankstats.auroc([1, 1, 0, 1], np.array([True, False, False, False])) == \
        pytest.approx(2 / 3)
    rng = np.random.default_rng(0)
    s, p = rng.integers(0, 4, 40), rng.random(40) < 0.4
    pairs = s[p][:, None] - s[~p][None, :]
    want = ((pairs > 0) + 0.5 * (pairs == 0)).mean()
    assert rankstats.auroc(s, p) == pytest.approx(want)
    with pytest.raises(ValueError):
        rankstats.auroc([1, 2], np.array([True, True]))


def test_auroc_interval_holds_the_estimate_and_is_degenerate_when_separated():
    rng = np.random.default_rng(1)
    p = rng.random(200) < 0.3
    s = rng.normal(size=200) + p
    lo, hi = rankstats.auroc_interval(s, p, n_boot=300)
    assert lo < rankstats.auroc(s, p) < hi and hi - lo < 0.3
    assert rankstats.auroc_interval(s, p, n_boot=300) == (lo, hi)   # seeded
    assert rankstats.auroc_interval([0, 1, 2, 3], np.array([False, False, True, True]),
                                    n_boot=50) == (1.0, 1.0)


def test_rank_percentile_small_case():
    np.testing.assert_allclose(rankstats.rank_percentile([3.0, 1.0, 2.0, 2.0, 5.0]),
                               [75.0, 0.0, 37.5, 37.5, 100.0])
    np.testing.assert_allclose(rankstats.rank_percentile([7.0]), [50.0])
    out = rankstats.rank_percentile([1.0, np.nan, 2.0])
    assert out[0] == 0.0 and np.isnan(out[1]) and out[2] == 100.0


def test_spearman_monotone_and_undefined():
    assert rankstats.spearman([1, 2, 3, 4], [10, 20, 25, 100]) == pytest.approx(1.0)
    assert rankstats.spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    assert math.isnan(rankstats.spearman([1, 2, 3], [5, 5, 5]))


def test_linear_shortcut_equals_the_general_per_example_gradients():
    model = _tiny_mlp().double()
    assert influence._linear_only(model) and not influence._linear_only(_tiny_dcvae())
    g = torch.Generator().manual_seed(5)
    x = (torch.rand((9, 1, 8, 8), generator=g) < 0.5).double()
    eps = torch.randn((5, 9, 4), generator=g, dtype=torch.float64)     # 5 draws each
    fast = influence.per_example_grad_sq_norms(model, x, eps, batch=4)
    general = influence.per_example_grad_sq_norms(model, x, eps, batch=4, general=True)
    torch.testing.assert_close(fast, general, rtol=1e-10, atol=0)
    torch.testing.assert_close(fast, _brute_grad_sq_norms(model, x, eps), rtol=1e-10, atol=0)
    # averaging draws is not averaging squared norms: the draws' noise partly cancels
    one_each = torch.stack([influence.per_example_grad_sq_norms(model, x, e) for e in eps])
    assert (fast < one_each.mean(0)).all()

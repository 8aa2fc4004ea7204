import numpy as np
import pytest
from scipy.special import logsumexp

from memo.score import uncertainty as unc


def _raw(rng, r=4, n=30, k=5, scale=40.0):
    """Raw in-values (R, n, K−1) and out-values (R, n, 1) spread over hundreds of nats."""
    offset = rng.normal(-800, 200, size=(1, n, 1))
    raw_in = offset + rng.normal(0, scale, size=(r, n, k - 1))
    raw_out = offset + rng.normal(-20, scale, size=(r, n, 1))
    return raw_in, raw_out


def _partial(raw):
    return logsumexp(raw, axis=2), np.full(raw.shape[:2], raw.shape[2], dtype=np.int64)


def _lme(values):
    return logsumexp(values) - np.log(len(values))


def test_all_ones_weights_equal_direct_logmeanexp():
    rng = np.random.default_rng(0)
    raw_in, raw_out = _raw(rng)
    in_lse, in_count = _partial(raw_in)
    out_lse, out_count = _partial(raw_out)
    U, V, M = unc.score_from_repeats(in_lse, in_count, out_lse, out_count)
    for i in range(raw_in.shape[1]):
        u = _lme(raw_in[:, i].ravel())
        v = _lme(raw_out[:, i].ravel())
        assert U[i] == pytest.approx(u, abs=1e-9)
        assert V[i] == pytest.approx(v, abs=1e-9)
        assert M[i] == pytest.approx(u - v, abs=1e-9)
    U1, V1, M1 = unc.score_from_repeats(in_lse, in_count, out_lse, out_count, weights=np.ones(4))
    np.testing.assert_allclose(M1, M, atol=1e-9)


def test_weights_are_multiplicities_and_missing_values_are_ignored():
    rng = np.random.default_rng(1)
    raw_in, raw_out = _raw(rng)
    in_lse, in_count = _partial(raw_in)
    out_lse, out_count = _partial(raw_out)
    # example 0 has no out-value in repeat 1; example 1 none at all; lse there is garbage
    out_count[1, 0] = 0
    out_lse[1, 0] = np.nan
    out_count[:, 1] = 0
    out_lse[:, 1] = 123.0
    w = np.array([2, 0, 1, 3])
    U, V, M = unc.score_from_repeats(in_lse, in_count, out_lse, out_count, weights=w)
    for i in range(raw_in.shape[1]):
        ins = np.concatenate([raw_in[r, i] for r in range(4) for _ in range(w[r])])
        assert U[i] == pytest.approx(_lme(ins), abs=1e-9)
        if i == 1:
            assert np.isnan(V[i]) and np.isnan(M[i])
            continue
        outs = np.concatenate([raw_out[r, i] for r in range(4) for _ in range(w[r])
                               if out_count[r, i] > 0])
        assert V[i] == pytest.approx(_lme(outs), abs=1e-9)
        assert M[i] == pytest.approx(_lme(ins) - _lme(outs), abs=1e-9)
    # a (B, R) matrix gives one row per weight vector
    W = np.array([[1, 1, 1, 1], [2, 0, 1, 3], [0, 4, 0, 0]])
    _, _, MB = unc.score_from_repeats(in_lse, in_count, out_lse, out_count, weights=W)
    assert MB.shape == (3, raw_in.shape[1])
    for b in range(3):
        _, _, Mb = unc.score_from_repeats(in_lse, in_count, out_lse, out_count, weights=W[b])
        np.testing.assert_allclose(MB[b], Mb, atol=1e-9, equal_nan=True)
    assert np.isnan(MB[2, 0])  # repeat 1 alone holds no out-value for example 0


def test_far_apart_repeats_do_not_underflow():
    # repeat 0 sits 2000 nats above repeat 1; a draw without repeat 0 must still be exact
    in_lse = np.array([[0.0], [-2000.0]])
    count = np.ones((2, 1))
    U, _, _ = unc.score_from_repeats(in_lse, count, np.zeros((2, 1)), count,
                                     weights=np.array([[0, 2], [1, 1]]))
    assert U[0, 0] == pytest.approx(-2000.0)
    assert U[1, 0] == pytest.approx(-np.log(2.0))


def test_bootstrap_se_matches_known_variance():
    # One in- and one out-value per repeat, out = 0, in ~ N(0, s²): for small s,
    # M = log mean_r exp(in_r) ≈ mean_r in_r, whose SE is s/√R. The ideal bootstrap
    # variance of a mean is the plug-in one, (R−1)/R · S²/R, so E[se²] ≈ (R−1)/R² · s².
    rng = np.random.default_rng(2)
    s, r, n = 0.01, 20, 2000
    in_lse = rng.normal(0, s, size=(r, n))
    ones = np.ones((r, n))
    se, lo, hi = unc.bootstrap(in_lse, ones, np.zeros((r, n)), ones, n_boot=300, seed=3)
    ratio = np.mean(se ** 2) / ((r - 1) / r ** 2 * s ** 2)
    assert ratio == pytest.approx(1.0, abs=0.05)
    assert np.all(lo <= hi)
    # the true M (log E exp = s²/2 ≈ 0) lies inside the 95 % interval about 93 % of the time
    # (percentile intervals under-cover a little at R = 20)
    coverage = np.mean((lo <= s ** 2 / 2) & (s ** 2 / 2 <= hi))
    assert 0.88 < coverage < 0.97


def test_bootstrap_is_seeded_and_nan_for_one_repeat():
    rng = np.random.default_rng(4)
    in_lse = rng.normal(size=(5, 40))
    ones = np.ones((5, 40))
    a = unc.bootstrap(in_lse, ones, np.zeros((5, 40)), ones, n_boot=50, seed=1)
    b = unc.bootstrap(in_lse, ones, np.zeros((5, 40)), ones, n_boot=50, seed=1)
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)
    one = unc.bootstrap(in_lse[:1], ones[:1], np.zeros((1, 40)), ones[:1], n_boot=50)
    assert all(np.isnan(x).all() for x in one)


def test_split_half_reliability():
    rng = np.random.default_rng(5)
    r, n = 10, 2000
    ones = np.ones((r, n))
    zeros = np.zeros((r, n))
    consistent = np.tile(rng.normal(size=n), (r, 1))
    assert unc.split_half_reliability(consistent, ones, zeros, ones) == pytest.approx(1.0)
    noise = rng.normal(size=(r, n))
    assert abs(unc.split_half_reliability(noise, ones, zeros, ones, seed=1)) < 0.1
    # signal plus noise sits in between, and is reproducible for a fixed seed
    mixed = consistent + rng.normal(size=(r, n))
    rel = unc.split_half_reliability(mixed, ones, zeros, ones, seed=2)
    assert 0.5 < rel < 0.95
    assert rel == unc.split_half_reliability(mixed, ones, zeros, ones, seed=2)
    assert unc.spearman_brown(rel) > rel
    assert np.isnan(unc.split_half_reliability(noise[:1], ones[:1], zeros[:1], ones[:1]))


def test_ess_flags():
    assert unc.ESS_THRESHOLD_FRACTION == 0.02
    flags = unc.ess_flags([1.0, 4.9, 5.0, 5.1, 6.0, np.nan, 250.0], n_is=256)
    # threshold at N = 256 is max(5, 5.12) = 5.12
    np.testing.assert_array_equal(flags, [True, True, True, True, False, False, False])
    # at N = 1000 the fraction decides: threshold 20
    np.testing.assert_array_equal(unc.ess_flags([19.0, 21.0], n_is=1000), [True, False])
    np.testing.assert_array_equal(unc.ess_flags([4.0, 6.0], n_is=128), [True, False])

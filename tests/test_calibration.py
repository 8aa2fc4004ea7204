"""The calibrated memorization score: permutation null, BH flags, reliability, the summary files."""
import gzip
import itertools
import json
import math

import numpy as np
import pytest
from scipy import stats
from scipy.special import logsumexp

import summarize as summarize_cli
from memo.score import calibration as cal
from memo import figures
from memo.score import summary
from memo.score import uncertainty as unc
from test_results_summary import make_experiment


def synthetic(n, repeats, folds, sigma, seed, delta=None):
    """values (L, K, n): one distribution for in- and out-values (per-example level, spread
    sigma between models); delta (n,) is added to the in-values (planted memorization)."""
    rng = np.random.default_rng(seed)
    level = rng.normal(-200, 20, n)
    values = level + sigma * rng.standard_normal((repeats, folds, n))
    held = rng.integers(0, folds, (repeats, n))
    if delta is not None:
        inside = np.arange(folds)[None, :, None] != held[:, None, :]
        values = values + inside * np.asarray(delta)[None, None, :]
    return values, held


def brute_force(v, held, labellings):
    """M under each labelling for one example, straight from the definition."""
    R, K = v.shape

    def m(lab):
        ins = [v[r, k] for r in range(R) for k in range(K) if k != lab[r]]
        outs = [v[r, lab[r]] for r in range(R)]
        return (logsumexp(ins) - math.log(len(ins))) - (logsumexp(outs) - math.log(len(outs)))
    return m(held), np.array([m(lab) for lab in labellings])


# ----------------------------------------------------------------------------------------------
# the null of one example, exactly


def test_exact_null_equals_the_definition_also_far_into_underflow():
    values, held = synthetic(30, 3, 4, sigma=3.0, seed=0)
    values[:, :, 0] -= np.arange(4) * 900.0          # models 900 nats apart: exp underflows
    values[:, 1, 1] += 2000.0                        # one model far above the rest
    c = cal.calibrate(values, held, n_perm=100)
    assert c.exact and c.n_labellings == 64 and c.min_p == 1 / 64
    labs = list(itertools.product(range(4), repeat=3))
    for i in range(30):
        m_obs, m_null = brute_force(values[:, :, i], held[:, i], labs)
        assert c.M[i] == pytest.approx(m_obs, abs=1e-9)
        assert c.null_mean[i] == pytest.approx(m_null.mean(), abs=1e-9)
        # the observed labelling is one of the 64: p counts it
        assert c.p_value[i] == pytest.approx(np.mean(m_null >= m_obs - 1e-9), abs=1e-12)
        assert c.p_value[i] >= 1 / 64


def test_exact_enumeration_and_sampling_give_the_same_null():
    values, held = synthetic(300, 5, 3, sigma=2.0, seed=1)     # 3^5 = 243 labellings
    exact = cal.calibrate(values, held, n_perm=1000)
    B = 20000
    drawn = cal.calibrate(values, held, n_perm=B, exact=False, seed=2)
    assert exact.exact and not drawn.exact and drawn.min_p == 1 / (B + 1)
    np.testing.assert_array_equal(exact.M, drawn.M)
    # null means: Monte Carlo error sd/sqrt(B); the null's sd is below 3 nats here
    assert np.max(np.abs(drawn.null_mean - exact.null_mean)) < 5 * 3 / math.sqrt(B)
    # p-values, each at its own point of its own null distribution: binomial error
    p = exact.p_value
    tol = 5 * np.sqrt(p * (1 - p) / B) + 2 / B
    assert np.all(np.abs(drawn.p_value - p) <= tol)
    # reproducible for a seed, different for another
    again = cal.calibrate(values, held, n_perm=B, exact=False, seed=2)
    np.testing.assert_array_equal(again.p_value, drawn.p_value)
    other = cal.calibrate(values, held, n_perm=B, exact=False, seed=3)
    assert not np.array_equal(other.p_value, drawn.p_value)


# ----------------------------------------------------------------------------------------------
# nothing memorized


def test_null_data_corrected_score_is_unbiased_and_p_values_uniform():
    n, R, K = 3000, 4, 10                   # 10^4 labellings > B: drawn per example
    values, held = synthetic(n, R, K, sigma=3.0, seed=3)
    c = cal.calibrate(values, held, n_perm=400, seed=4)
    assert not c.exact
    # the raw score is biased upward (Jensen) ...
    assert np.mean(c.M) > 0.5
    # ... the corrected one is not: E[M − E[M | values]] = 0 under the null
    mc = c.M_corrected
    assert abs(mc.mean()) < 4 * mc.std(ddof=1) / math.sqrt(n)
    # p on the grid j/(B+1), uniform on it: against U(0,1) the grid adds at most 1/(B+1)
    assert stats.kstest(c.p_value, "uniform").pvalue > 1e-3
    # the bias grows with the spread between models
    wide = cal.calibrate(*synthetic(500, R, K, sigma=7.0, seed=5), n_perm=200, seed=6)
    assert np.mean(wide.null_mean) > np.mean(c.null_mean) + 1


def _bernstein_t(S, var_bound, eps=1e-4):
    """t with P(mean of S variables in [0, 1] − expectation >= t) <= eps (Bernstein),
    given a bound on their variance."""
    L = math.log(1 / eps)
    # S t^2 / (2 (v + t/3)) = L  ->  S t^2 − (2L/3) t − 2 L v = 0
    a, b, c = S, -2 * L / 3, -2 * L * var_bound
    return (-b + math.sqrt(b * b - 4 * a * c)) / (2 * a)


def test_benjamini_hochberg_controls_false_discoveries_over_many_seeds():
    q, S, n, R, K = 0.05, 400, 200, 4, 10
    # all seeds in one calibration: example j of seed s is column s·n + j
    values, held = synthetic(S * n, R, K, sigma=3.0, seed=7)
    null = cal.calibrate(values, held, n_perm=400, seed=8).p_value.reshape(S, n)
    any_flag = sum(cal.benjamini_hochberg(p, q)[0].any() for p in null)
    # Under the global null BH's false discovery rate is P(any flag) <= q (independent,
    # valid p-values). Allowed: the 1 − 1e-4 quantile of Binomial(S, q).
    assert any_flag <= stats.binom.ppf(1 - 1e-4, S, q)

    # 10 % planted: mean false discovery proportion <= q·n0/n, up to a Bernstein bound
    # (each proportion lies in [0, 1], so its variance is at most its mean, <= q)
    planted = np.zeros(S * n)
    planted[np.arange(S * n) % n < n // 10] = 4.0
    values, held = synthetic(S * n, R, K, sigma=1.0, seed=9, delta=planted)
    p = cal.calibrate(values, held, n_perm=400, seed=10).p_value.reshape(S, n)
    truth = planted.reshape(S, n) > 0
    fdp, power = [], []
    for ps, t in zip(p, truth):
        flags, _ = cal.benjamini_hochberg(ps, q)
        fdp.append((flags & ~t).sum() / max(flags.sum(), 1))
        power.append((flags & t).sum() / t.sum())
    assert np.mean(fdp) <= q * 0.9 + _bernstein_t(S, q)
    assert np.mean(power) > 0.9


def test_benjamini_hochberg_by_hand():
    p = np.array([0.01, 0.04, 0.03, 0.20, np.nan, 0.012])
    # sorted: .01 .012 .03 .04 .2 against q k / 5 = .01 .02 .03 .04 .05: the 4th passes
    flags, cutoff = cal.benjamini_hochberg(p, 0.05)
    assert cutoff == 0.04
    np.testing.assert_array_equal(flags, [True, True, True, False, False, True])
    flags, cutoff = cal.benjamini_hochberg(np.array([0.5, 0.9]), 0.05)
    assert not flags.any() and math.isnan(cutoff)


# ----------------------------------------------------------------------------------------------
# planted memorization


def _null_mean_without_noise(delta, R, K):
    """Exact null mean when every in-value is delta and every out-value 0: a relabelling that
    picks the true held-out model in J of the R repeats (J ~ Binomial(R, 1/K)) gives
    M = log(((K−2)R + J)·e^δ + (R − J)) − log((K−1)R) − log(J + (R − J)·e^δ) + log R."""
    J = np.arange(R + 1)
    f = (np.logaddexp(np.log((K - 2) * R + J) + delta, np.log(np.maximum(R - J, 1e-300)))
         - math.log((K - 1) * R)
         - np.logaddexp(np.log(np.maximum(J, 1e-300)), np.log(np.maximum(R - J, 1e-300)) + delta)
         + math.log(R))
    return float(np.sum(stats.binom.pmf(J, R, 1 / K) * f))


def test_planted_shift_without_noise_matches_its_closed_form():
    delta, R, K = 5.0, 3, 4
    n = 5
    values, held = synthetic(n, R, K, sigma=0.0, seed=11, delta=np.full(n, delta))
    c = cal.calibrate(values, held, n_perm=100)
    np.testing.assert_allclose(c.M, delta, atol=1e-12)
    np.testing.assert_allclose(c.null_mean, _null_mean_without_noise(delta, R, K), atol=1e-12)
    # a relabelled null still holds memorized in-values, so the null mean is not 0 (here
    # +0.11 nats): M_corrected falls a little short of delta
    assert np.all((c.M_corrected < delta) & (c.M_corrected > delta - 0.2))


def test_planted_shift_is_flagged_and_corrected_score_estimates_it():
    n, k_planted, R, K, delta, sigma = 400, 20, 6, 5, 5.0, 0.3
    shift = np.zeros(n)
    shift[:k_planted] = delta
    values, held = synthetic(n, R, K, sigma=sigma, seed=12, delta=shift)
    c = cal.calibrate(values, held, n_perm=2000, seed=13)       # 5^6 > 2000: drawn
    flags, _ = cal.benjamini_hochberg(c.p_value, 0.05)
    assert flags[:k_planted].all()
    assert flags[k_planted:].sum() <= 5
    # Expected: M = δ + (log-mean-exp of (K−1)R noise draws − of R draws); the null mean is
    # the closed form above plus O(σ²) terms. Each M_corrected has sd about
    # σ·sqrt(1/R + 1/((K−1)R)); the mean over the planted ones is compared within 4 SE,
    # plus 0.05 nats for the O(σ²) terms (about 0.01 at σ = 0.3).
    expected = delta - _null_mean_without_noise(delta, R, K)
    sd = sigma * math.sqrt(1 / R + 1 / ((K - 1) * R))
    got = c.M_corrected[:k_planted]
    assert abs(got.mean() - expected) < 4 * sd / math.sqrt(k_planted) + 0.05
    assert np.all(np.abs(got - expected) < 5 * sd + 0.05)
    assert abs(np.mean(c.M_corrected[k_planted:])) < 0.1


# ----------------------------------------------------------------------------------------------
# reliability


def test_spearman_brown():
    assert unc.spearman_brown(0.5) == pytest.approx(2 / 3)
    assert unc.spearman_brown(1.0) == 1.0 and unc.spearman_brown(0.0) == 0.0
    assert unc.spearman_brown(0.5, factor=3) == pytest.approx(0.75)
    assert math.isnan(unc.spearman_brown(float("nan"))) and math.isnan(unc.spearman_brown(-1))


def test_spearman_brown_predicts_the_reliability_of_all_repeats():
    # M ≈ the mean over repeats of t_i + e_ri (tiny values: log-mean-exp ≈ mean). Noise is
    # chosen so that half the repeats have reliability 1/2; all of them then 2/3.
    rng = np.random.default_rng(14)
    n, R, s = 20000, 10, 1e-3
    t = rng.standard_normal(n)
    noise_sd = math.sqrt(R / 2)

    def draw():
        return s * (t + noise_sd * rng.standard_normal((R, n)))
    ones, zeros = np.ones((R, n)), np.zeros((R, n))
    a = draw()
    half = unc.split_half_reliability(a, ones, zeros, ones, seed=1)
    # Spearman of a bivariate normal with Pearson ρ is (6/π)·asin(ρ/2)
    assert half == pytest.approx(6 / math.pi * math.asin(0.25), abs=0.02)
    # the reliability of the full score, measured: two independent sets of R repeats
    full = stats.spearmanr(unc.score_from_repeats(a, ones, zeros, ones)[2],
                           unc.score_from_repeats(draw(), ones, zeros, ones)[2])[0]
    assert full == pytest.approx(6 / math.pi * math.asin(1 / 3), abs=0.02)
    assert unc.spearman_brown(half) == pytest.approx(full, abs=0.03)


# ----------------------------------------------------------------------------------------------
# the summary: values from result files, the CLI, old files


def test_summary_keeps_every_models_value_and_the_observed_m_is_the_summarys(tmp_path):
    from memo.config import splits
    n, folds, repeats = 13, 3, 2
    paths, full = make_experiment(tmp_path, n, folds, repeats)
    s = summary.summarize(paths + [full], progress=False, n_boot=50, test="permutation")
    assert s.values.shape == (repeats, folds, n) and s.values.dtype == np.float32
    for r in range(repeats):
        for k in range(folds):
            held = splits.train_test_indices(n, folds, 42, r, k)[1]
            for i in range(n):
                out = i in held
                assert s.values[r, k, i] == np.float32(-10.0 - i - 0.1 * r - 0.01 * k - 2 - 3 * out)
                assert (s.held_out[r, i] == k) == out
    c = cal.calibrate(s.values, s.held_out, n_perm=100)
    np.testing.assert_allclose(c.M, s.M[-1], atol=1e-5)          # float32 storage: rounding
    np.testing.assert_allclose(s.M_corrected, s.M[-1] - c.null_mean, atol=1e-12)
    np.testing.assert_array_equal(s.p_value, c.p_value)
    # 3^2 labellings: exact, smallest p 1/9, nothing can be flagged at q = 5 %, n = 13
    meta = s.meta["calibration"]
    assert meta["exact"] and meta["min_p"] == pytest.approx(1 / 9) and not meta["can_flag"]
    assert meta["interval"] == "recomputed"
    assert np.all(s.M_corrected_ci_low <= s.M_corrected_ci_high)
    assert s.reliability == pytest.approx(unc.spearman_brown(s.split_half))


def test_incomplete_values_are_refused_unless_calibration_is_off(tmp_path):
    paths, full = make_experiment(tmp_path)
    # every file is whole (each example once, in train or test), but one example moved from
    # training to held out in a second fold of its repeat: held out twice
    with gzip.open(paths[3], "rt") as f:
        content = json.load(f)
    parts = content["results"]["logpxs"]["2"]
    key = next(iter(parts["train"]))
    parts["test"][key] = parts["train"].pop(key)
    with gzip.open(paths[3], "wt") as f:
        json.dump(content, f)
    with pytest.raises(summary.SummaryError,
                       match="cannot calibrate: 1 .repeat, example. pairs are not held out"):
        summary.summarize(paths, progress=False, n_boot=10)
    s = summary.summarize(paths, progress=False, n_boot=10, n_perm=0)
    assert not s.calibrated and "calibration" not in s.meta


def test_cli_writes_the_calibrated_columns_and_warns_about_the_design(tmp_path, capsys):
    paths, full = make_experiment(tmp_path)
    out = tmp_path / "analysis" / "exp.npz"
    assert summarize_cli.main(["--result-files", *map(str, paths + [full]), "-o", str(out),
                               "--n-boot", "50", "--n-perm", "500", "--fdr-q", "0.1",
                               "--test", "permutation",
                               "--data-root", str(tmp_path / "nodata")]) == 0
    io = capsys.readouterr()
    warnings = [l for l in io.err.splitlines() if "warning" in l]
    assert len(warnings) == 1 and "smallest attainable p-value 0.111" in warnings[0]
    assert "Spearman-Brown" in io.out and "flagged as memorized" in io.out
    header = out.with_suffix(".csv").read_text().splitlines()[0].split(",")
    for col in ("M_corrected", "M_corrected_ci_low", "M_corrected_ci_high", "null_mean",
                "p_value", "memorized"):
        assert col in header
    s = summary.load(out)
    assert s.calibrated and s.calibration["fdr_q"] == 0.1 and s.values.shape == (2, 3, 13)
    with np.load(out) as z:
        assert z.files == [*summary.ARRAYS, "meta"]
        for key in ("values", "held_out", "p_value", "memorized", "split_half_corrected"):
            assert key in z.files
        assert "reliability" not in z.files      # derived: Summary.reliability


def test_old_summaries_load_and_figures_degrade(tmp_path, monkeypatch):
    monkeypatch.setenv("MEMO_NO_LATEX", "1")
    paths, full = make_experiment(tmp_path)
    new = tmp_path / "new.npz"
    summary.save(summary.summarize(paths + [full], progress=False, n_boot=20), new)
    old = tmp_path / "old.npz"
    old_keys = summary.ARRAYS[: summary.ARRAYS.index("values")]
    with np.load(new) as z:
        meta = json.loads(str(z["meta"]))
        meta.pop("calibration")
        np.savez(old, meta=np.array(json.dumps(meta)), **{k: z[k] for k in old_keys})
    s = summary.load(old)
    assert not s.calibrated and s.values.shape == (0, 0, 13) and not s.memorized.any()
    assert s.reliability == pytest.approx(unc.spearman_brown(s.split_half))
    figures.build("calibration", [s], tmp_path / "out")
    doc = json.loads((tmp_path / "out" / "calibration.json").read_text())
    assert doc["skip"]
    figures.build("logprob", [s], tmp_path / "out")
    doc = json.loads((tmp_path / "out" / "logprob.json").read_text())
    assert doc["skip"] is None and "no calibration" in doc["caption"]


def test_design_note_names_what_it_takes():
    # the demo: K = 5, L = 2, n = 2000
    note = cal.design_note(5, 2, 2000, 2000, 0.05)
    assert "0.04" in note and "1600" in note and "40000" in note
    assert cal.design_note(10, 5, 100000, 2000, 0.05) is None      # 10^5 labellings, exact
    assert "--n-perm" in cal.design_note(10, 5, 2000, 2000, 0.05)  # drawn: too few
    assert cal.needed_at_minimum(1 / 2001, 60000, 0.05) == 600

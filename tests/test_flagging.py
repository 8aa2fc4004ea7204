"""The flagging test of our method (memo/score/flagging.py) and the control images.

Checked: the repeat-paired t-test against a direct computation, its p-values uniform on a
synthetic null where in- and held-out values come from one distribution (with repeat and model
effects), its power on a shift, Storey's π₁ on a known mixture, the controls' report, the
controls' pseudo-folds cut by the rule of the training folds, and a trained tiny experiment:
controls never among the training examples, scored by every fold model, summarized apart.
"""
from __future__ import annotations

import gzip
import json

import numpy as np
import pytest
from scipy import stats

from memo.config import experiments, splits
from memo.score import calibration, flagging


def _held_out(R, K, n, rng):
    return np.stack([np.argsort(rng.permutation(n)) % K for _ in range(R)]).astype(np.int16)


def _null_values(R, K, n, rng, shift=None, held=None):
    """log p = example level + repeat effect + model effect + noise; `shift` added to the
    in-values of the examples where it is nonzero."""
    example = rng.normal(-250, 20, n)
    repeat = rng.normal(0, 2, (R, 1, n))
    model = rng.normal(0, 1.5, (R, K, 1))
    values = example + repeat + model + rng.normal(0, 3, (R, K, n))
    if shift is not None:
        ins = np.ones((R, K, n), bool)
        np.put_along_axis(ins, held[:, None, :].astype(np.int64), False, axis=1)
        values = values + ins * shift
    return values


def test_t_test_equals_direct_computation():
    rng = np.random.default_rng(0)
    R, K, n = 3, 5, 4
    held = _held_out(R, K, n, rng)
    values = _null_values(R, K, n, rng)
    tt = flagging.t_test(values, held, moderate=False)
    t, p, df = tt.t, tt.p, tt.df
    assert df == R * (K - 2)
    for i in range(n):
        d, s2 = [], []
        for r in range(R):
            ins = [values[r, k, i] for k in range(K) if k != held[r, i]]
            d.append(np.mean(ins) - values[r, held[r, i], i])
            s2.append(np.var(ins, ddof=1))
        expect = np.mean(d) / np.sqrt(np.mean(s2) * (1 + 1 / (K - 1)) / R)
        assert t[i] == pytest.approx(expect, rel=1e-12)
        assert p[i] == pytest.approx(stats.t.sf(expect, df), rel=1e-10)


@pytest.mark.parametrize("moderate", [False, True])
@pytest.mark.parametrize("R,K", [(2, 5), (4, 5), (2, 10), (3, 2)])
def test_t_test_p_values_uniform_under_the_null(R, K, moderate):
    rng = np.random.default_rng([R, K])
    n = 20_000
    held = _held_out(R, K, n, rng)
    p = flagging.t_test(_null_values(R, K, n, rng), held, moderate=moderate).p
    assert stats.kstest(p, "uniform").statistic < 0.015
    # the tail BH works in: the share below 0.01 and 0.001 within binomial limits
    for a in (0.01, 0.001):
        k = int((p <= a).sum())
        assert stats.binom.cdf(k, n, a) > 0.0005 and stats.binom.sf(k - 1, n, a) > 0.0005


def test_t_test_finds_a_shift_the_permutation_test_cannot():
    rng = np.random.default_rng(3)
    R, K, n = 2, 5, 2000
    held = _held_out(R, K, n, rng)
    shift = np.zeros(n)
    shift[:40] = 25.0                       # 2 % memorized, strongly
    values = _null_values(R, K, n, rng, shift, held)
    p = flagging.t_test(values, held).p
    flags, _ = calibration.benjamini_hochberg(p, 0.05)
    assert flags[:40].sum() >= 35 and flags[40:].sum() <= 6   # BH: ~2 false flags expected
    perm = calibration.calibrate(values, held, n_perm=2000, seed=0)
    assert not calibration.benjamini_hochberg(perm.p_value, 0.05)[0].any()   # 1/25 at best


def test_storey_pi1_on_a_known_mixture():
    rng = np.random.default_rng(4)
    p = np.concatenate([rng.uniform(size=7000), rng.uniform(0, 1e-4, size=3000)])
    assert flagging.storey_pi1(p) == pytest.approx(0.3, abs=0.03)
    lo, hi = flagging.storey_interval(p, seed=1)
    assert lo < 0.3 < hi and hi - lo < 0.1
    assert flagging.storey_pi1(rng.uniform(size=5000)) < 0.05


def test_control_report_counts_and_fdr():
    p = np.array([0.001, 0.002, 0.5, 0.9])
    r = flagging.control_report(p, at=0.0015, n=1000, flagged=10)
    assert r["flagged"] == 1 and r["rate"] == 0.25
    assert r["fdr_estimate"] == pytest.approx(min(1.0, 1000 * 0.25 / 10))
    lo, hi = r["rate_ci"]
    assert lo == pytest.approx(stats.beta.ppf(0.025, 1, 4)) and hi == pytest.approx(
        stats.beta.ppf(0.975, 2, 3))
    assert np.isnan(flagging.control_report(p, 0.0015, 1000, 0)["fdr_estimate"])
    assert flagging.threshold(0, 0.05, 2000) == 0.05 / 2000
    assert flagging.threshold(7, 0.05, 2000) == 0.05 * 7 / 2000


@pytest.mark.parametrize("C,K", [(1000, 5), (7, 3), (503, 10)])
def test_control_pseudo_folds_follow_the_training_rule(C, K):
    for r in range(3):
        held = splits.control_held_out(C, K, 42, r)
        # the sizes of the training folds for C examples: the first C % K one longer
        sizes = [len(f) for f in splits.folds(C, K, 42, r)]
        assert np.bincount(held, minlength=K).tolist() == sizes
        # contiguous blocks of a permutation keyed by (seed, repeat) and the controls' key
        perm = np.random.default_rng([42, r, splits.CONTROL_KEY]).permutation(C)
        for k, block in enumerate(np.array_split(perm, K)):
            assert (held[block] == k).all()
    assert not np.array_equal(splits.control_held_out(C, K, 42, 0),
                              splits.control_held_out(C, K, 42, 1))


def test_control_choice_is_a_seeded_sorted_subset():
    a = splits.control_choice(10_000, 1000, 42)
    assert len(np.unique(a)) == 1000 and (np.diff(a) > 0).all() and a.max() < 10_000
    assert np.array_equal(a, splits.control_choice(10_000, 1000, 42))
    assert not np.array_equal(a, splits.control_choice(10_000, 1000, 43))
    assert len(splits.control_choice(300, 1000, 42)) == 300


def test_tiny_experiment_scores_controls_apart(tmp_path):
    """Train 2 x 2 fold models with 30 controls: the controls are test-split images of the
    seeded choice, every fold model scores all of them at every evaluation epoch, none is a
    training example, and the summary scores them by the training examples' code."""
    from conftest import write_tiny_npz
    from memo.files import results
    from memo.score import summary
    from memo.train import runner

    npz = write_tiny_npz(tmp_path / "tiny.npz", n=60, n_test=50)
    exp = experiments.Experiment(name="tinyctl", data=f"npz:{npz}", model="BernoulliMLPVAE",
                                 latent_dim=2, lr=1e-3, epochs=2, eval_every=1, n_is=4,
                                 folds=2, repeats=2, controls=30)
    for job in exp.jobs()[:-1]:
        runner.run_job(exp, job, results_root=tmp_path, log=lambda *_: None)
    files = [results.job_files(exp, job, tmp_path).result for job in exp.jobs()[:-1]]
    chosen = splits.control_choice(50, 30, exp.seed)
    for f in files:
        content = json.loads(gzip.decompress(f.read_bytes()))
        res = content["results"]
        assert content["meta"]["settings"]["controls"] == 30
        assert set(res["controls"]["logpxs"]) == {"1", "2"}
        assert sorted(map(int, res["controls"]["logpxs"]["2"])) == chosen.tolist()
        d = sorted(map(int, [*res["logpxs"]["2"]["train"], *res["logpxs"]["2"]["test"]]))
        assert d == list(range(60))          # the training examples: D alone
    s = summary.summarize(files, progress=False, n_boot=10, experiment=exp)
    assert s.n == 60 and s.n_controls == 30
    assert np.array_equal(s.control_index, chosen)
    assert s.control_values.shape == (2, 2, 30) and np.isfinite(s.control_values).all()
    tt = flagging.t_test(s.values, s.held_out)           # the default: moderated
    assert np.array_equal(tt.p, s.p_value)
    again = flagging.t_test(s.control_values, s.control_held_out, prior=tt.prior)
    assert np.array_equal(again.p, s.control_p_value)
    ctl = s.calibration["controls"]
    assert ctl["n"] == 30 and ctl["flagged"] == int(s.control_flagged.sum())
    # the controls' M by the training examples' code: terms from values reproduce M of D
    terms = summary.terms_from_values(s.values, s.held_out)
    from memo.score import uncertainty
    assert np.allclose(uncertainty.score_from_repeats(*terms)[2], s.M[-1], atol=1e-4)
    # the flags, computed directly: the t-test by hand, then BH by sorting
    p_direct = _direct_t_p(s.values.astype(float), s.held_out)
    plain = summary.summarize(files, progress=False, n_boot=10, experiment=exp, test="t")
    assert np.allclose(p_direct, plain.p_value, rtol=1e-9, atol=1e-300)
    s = plain
    order = np.sort(p_direct)
    ok = np.flatnonzero(order <= 0.05 * np.arange(1, 61) / 60)
    expect = p_direct <= order[ok[-1]] if ok.size else np.zeros(60, bool)
    assert np.array_equal(expect, s.memorized)
    at = 0.05 * max(int(expect.sum()), 1) / 60             # BH's boundary for those flags
    assert np.array_equal(s.control_flagged, s.control_p_value <= at)
    path = tmp_path / "s.npz"
    summary.save(s, path)
    back = summary.load(path)
    for key in ("control_index", "control_values", "control_held_out", "control_M",
                "control_p_value"):
        assert np.array_equal(getattr(back, key), getattr(s, key), equal_nan=True)


def test_npz_without_test_split_has_no_controls_unless_asked(tmp_path):
    import torch

    from conftest import write_tiny_npz
    from memo import data

    npz = tmp_path / "x.npz"
    np.savez(npz, x=np.load(write_tiny_npz(tmp_path / "t.npz"))["x"])
    exp = experiments.Experiment(name="noctl", data=f"npz:{npz}", model="BernoulliMLPVAE",
                                 latent_dim=2, lr=1e-3, epochs=1, eval_every=1, n_is=2)
    assert data.load_job_data(exp, torch.device("cpu"), full=False).controls is None
    asked = experiments.Experiment(**{**exp.__dict__, "controls": 10})
    with pytest.raises(data.NoControlsError, match="x_test"):
        data.load_job_data(asked, torch.device("cpu"), full=False)


def _direct_t_p(values, held):
    """The repeat-paired t-test written out example by example (K = 2: the spread of the
    differences over repeats)."""
    R, K, n = values.shape
    out = np.empty(n)
    for i in range(n):
        d = [np.mean([values[r, k, i] for k in range(K) if k != held[r, i]])
             - values[r, held[r, i], i] for r in range(R)]
        t = np.mean(d) / (np.std(d, ddof=1) / np.sqrt(R))
        out[i] = stats.t.sf(t, R - 1)
    return out


def test_variance_prior_is_recovered_and_moderated_p_values_stay_uniform():
    """Variances drawn from a scaled inverse-χ² prior (d0 = 6, s0² = 9): Smyth's moments
    recover it, and the moderated test is exact under that model."""
    rng = np.random.default_rng(7)
    R, K, n, d0, s0 = 2, 5, 30_000, 6.0, 9.0
    sigma2 = d0 * s0 / rng.chisquare(d0, n)
    held = _held_out(R, K, n, rng)
    values = (rng.normal(-250, 20, n) + rng.normal(0, 2, (R, 1, n))
              + rng.normal(0, 1, (R, K, n)) * np.sqrt(sigma2))
    tt = flagging.t_test(values, held)
    assert tt.prior_df == pytest.approx(d0, rel=0.25) and tt.prior_var == pytest.approx(s0, rel=0.1)
    assert tt.df == pytest.approx(R * (K - 2) + tt.prior_df)
    assert stats.kstest(tt.p, "uniform").statistic < 0.012
    # equal variances: no spread beyond chance, one variance for all (d0 infinite)
    flat = rng.normal(0, 3, (R, K, n))
    assert np.isinf(flagging.t_test(flat, held).prior_df)


def test_a_summary_that_stored_its_derived_values_loads_and_they_agree(tmp_path):
    """tests/fixtures/ours/summary_stored_derived.npz was written when the summary still stored
    M, n_in, n_out, M_corrected and the reliabilities: they are now derived, and equal."""
    from conftest import ROOT
    from memo.files import summary as summary_file

    path = ROOT / "tests" / "fixtures" / "ours" / "summary_stored_derived.npz"
    s = summary_file.load(path)
    with np.load(path) as z:
        stored = {k: z[k] for k in ("M", "n_in", "n_out", "M_corrected", "reliability",
                                    "reliability_corrected", "memorized")}
    assert np.array_equal(s.M, stored["M"])
    assert np.array_equal(s.n_in, stored["n_in"]) and np.array_equal(s.n_out, stored["n_out"])
    assert np.array_equal(s.M_corrected, stored["M_corrected"])
    assert s.reliability == pytest.approx(float(stored["reliability"]), abs=1e-15)
    assert s.reliability_corrected == pytest.approx(float(stored["reliability_corrected"]),
                                                    abs=1e-15)
    assert s.memorized.sum() == 17 and np.array_equal(s.memorized, stored["memorized"])
    assert s.n_controls == 30 and s.calibration["controls"]["flagged"] == s.control_flagged.sum()
    # written again, it no longer stores them, and reads back the same
    again = tmp_path / "again.npz"
    summary_file.save(s, again)
    with np.load(again) as z:
        assert not {"M", "n_in", "M_corrected", "reliability"} & set(z.files)
    t = summary_file.load(again)
    assert np.array_equal(t.M, s.M) and np.array_equal(t.M_corrected, s.M_corrected)


def test_more_controls_than_the_test_split_is_one_clear_error(tmp_path):
    import torch

    from conftest import write_tiny_npz
    from memo import data

    npz = write_tiny_npz(tmp_path / "t.npz", n=30, n_test=10)
    exp = experiments.Experiment(name="many", data=f"npz:{npz}", model="BernoulliMLPVAE",
                                 latent_dim=2, lr=1e-3, epochs=1, eval_every=1, n_is=2,
                                 controls=30)
    with pytest.raises(data.NoControlsError, match="at most 10"):
        data.load_job_data(exp, torch.device("cpu"), full=False)
    default = experiments.Experiment(**{**exp.__dict__, "controls": None})
    assert len(data.load_job_data(default, torch.device("cpu"), full=False).controls) == 10


def test_the_default_number_of_controls_is_resolved_before_settings_are_compared():
    from memo.files import results

    exp = experiments.get("fashion_demo")              # controls: the default
    assert exp.controls is None
    assert results.differences({"controls": 1000}, exp) == []
    assert results.differences({"controls": None}, exp) == []   # a resume file's record
    assert results.differences({"controls": 500}, exp) == [("controls", 500, 1000)]
    assert results.differences({}, exp) == [("controls", 0, 1000)]   # files from before
    paper = experiments.get("bmnist_lr3")               # controls: 0, recorded by omission
    assert results.differences({}, paper) == []


def test_variance_ratio_is_one_under_the_model_and_sees_narrowed_in_values():
    rng = np.random.default_rng(11)
    R, K, n = 4, 5, 20_000
    held = _held_out(R, K, n, rng)
    values = _null_values(R, K, n, rng)
    assert flagging.variance_ratio(values, held) == pytest.approx(1.0, abs=0.05)
    # in-values drawn with half the spread of the held-out value: the t-test's standard
    # error is too small, and the ratio says so (expected (1/4/4 + 1) / (1/4 · 1.25) ≈ 3.4)
    ins = np.ones((R, K, n), bool)
    np.put_along_axis(ins, held[:, None, :].astype(np.int64), False, axis=1)
    narrowed = np.where(ins, values * 0 + rng.normal(0, 1.5, (R, K, n)),
                        rng.normal(0, 3, (R, K, n)))
    assert flagging.variance_ratio(narrowed, held) > 2.5
    assert np.isnan(flagging.variance_ratio(values[:1], held[:1]))

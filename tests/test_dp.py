"""Differentially private training (memo/train/private.py): the ε spent, the clipping bound, the
update, resume, file names and metadata, GroupNorm DCVAEs, and the refusals. Real models, real
Opacus, on the tiny npz data set of conftest.py."""
import dataclasses
import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn as nn

import memorization
import plan
from memo.train import accel, ensemble, private, training
from memo import data
from memo.config import experiments, naming
from memo.models import objectives
from memo.files import results
from memo.score import summary
from memo.score import privacy as privacy_bound
from memo.config.experiments import Experiment, Job, SettingsError

# tiny runs have few steps, for which the accountant's largest order is the best one
pytestmark = [pytest.mark.filterwarnings("ignore:Optimal order is the largest alpha"),
              pytest.mark.filterwarnings("ignore:Full backward hook is firing")]

DP = {"epsilon": 10, "delta": 1e-5, "max_grad_norm": 1.0}


def _args(tmp_path, job="cv_repeat0_fold1", *extra):
    return ["--experiment", "tiny", "--job", job, "--results-dir", str(tmp_path / "res"),
            "--device", "cpu", "--threads", "1", *extra]


def _set_experiment(exp_file, **fields):
    """Edit experiment 'tiny' in the EXPERIMENTS_FILE (None deletes a field)."""
    table = json.loads(exp_file.read_text())
    table["tiny"].update(fields)
    table["tiny"] = {k: v for k, v in table["tiny"].items() if v is not None}
    exp_file.write_text(json.dumps(table))


@pytest.fixture
def tiny_dp(tiny_experiment):
    """Experiment 'tiny' with dp set (more epochs, so the accountant has steps to spend)."""
    exp_file, npz = tiny_experiment
    _set_experiment(exp_file, dp=DP, epochs=4, eval_every=2)
    return exp_file, npz


def _result(tmp_path, job):
    return results.read_result(next((tmp_path / "res" / "tiny" / "results")
                                    .glob(f"*_{job}.json.gz")))


def _trainer(exp, job=Job(0, 1), root="unused"):
    """A started PrivateModel of one job of exp on the CPU, as `fit` makes it."""
    device = torch.device("cpu")
    jd = data.load_job_data(exp, device, job.full)
    m = training.Member.of(exp, job, jd.train.shape[0], root, device)
    m.start(exp, jd.train.shape[1], device)
    trainer = private.PrivateModel(exp, m, jd, accel.Speed())
    trainer.begin()
    return trainer


# ----------------------------------------------------------------------------------------------
# settings


def _exp(**fields):
    spec = dict(name="x", data="fashion", model="BernoulliMLPVAE", latent_dim=2, lr=1e-3,
                epochs=2, eval_every=1, n_is=2)
    return Experiment(**{**spec, **fields})


def test_dp_settings_are_completed_and_the_experiment_stays_hashable():
    exp = _exp(dp={"epsilon": 3})
    assert exp.dp == {"epsilon": 3.0, "delta": 1e-5, "max_grad_norm": 1.0}
    assert hash(exp) == hash(_exp(dp={"epsilon": 3.0, "delta": 1e-5}))
    assert exp != _exp() and exp.norm == "group" and _exp().norm == "batch"
    assert dataclasses.replace(exp, lr=1e-4).dp == exp.dp


@pytest.mark.parametrize("dp, line", [
    ({"delta": 1e-5}, "dp.epsilon is missing"),
    ({"epsilon": 0}, "dp.epsilon = 0 is not allowed (a number > 0)"),
    ({"epsilon": "10"}, "dp.epsilon = '10' is not allowed"),
    ({"epsilon": 1, "delta": 1}, "dp.delta = 1 is not allowed (a number with 0 < delta < 1"),
    ({"epsilon": 1, "max_grad_norm": -1}, "dp.max_grad_norm = -1 is not allowed"),
    ({"epsilon": 1, "eps": 2}, "dp has unknown keys ['eps'] (valid keys: epsilon, delta, "
                               "max_grad_norm)"),
    (10, "dp = 10 is not allowed (null, or an object with epsilon"),
])
def test_bad_dp_settings_give_one_line_each(dp, line):
    with pytest.raises(SettingsError) as e:
        _exp(dp=dp)
    assert line in str(e.value) and len(str(e.value).splitlines()) == 1


def test_experiments_file_sets_dp(tiny_dp):
    assert experiments.get("tiny").dp == {"epsilon": 10.0, "delta": 1e-5, "max_grad_norm": 1.0}


# ----------------------------------------------------------------------------------------------
# training


def test_private_run_spends_the_target_epsilon_and_records_it(tiny_dp, tmp_path):
    assert memorization.main(_args(tmp_path)) == 0
    path = next((tmp_path / "res" / "tiny" / "results").glob("*.json.gz"))
    assert path.name == "npz_BernoulliMLPVAE_512-256-4-dp-eps10_seed42_cv_repeat0_fold1.json.gz"
    assert naming.parse_stem(path.name)[0] == "npz_BernoulliMLPVAE_512-256-4-dp-eps10"
    meta = results.read_result(path)["meta"]
    p = meta["privacy"]
    assert p["accountant"] == "rdp" and p["norm"] is None and p["sampling"] == "poisson"
    assert p["sample_rate"] == 16 / 40 and p["steps"] == 4 * (40 // 16) == p["planned_steps"]
    assert p["target_epsilon"] == 10 and p["delta"] == 1e-5 and p["max_grad_norm"] == 1.0
    assert p["noise_multiplier"] > 0
    assert abs(p["epsilon_spent"] - 10) <= 0.05 * 10 and p["epsilon_spent"] <= 10 + 1e-6
    assert meta["settings"]["dp"] == {"epsilon": 10.0, "delta": 1e-5, "max_grad_norm": 1.0}
    assert meta["model"] == "BernoulliMLPVAE_512-256-4-dp-eps10"


def test_noise_multiplier_grows_as_epsilon_shrinks():
    sigmas = [private.noise_multiplier({"epsilon": e, "delta": 1e-5}, 64 / 2000, 40 * 31)
              for e in (100, 10, 1)]
    assert sigmas == sorted(sigmas) and sigmas[0] > 0


def test_update_is_the_sum_of_clipped_per_example_gradients_plus_noise(tiny_dp):
    exp = experiments.get("tiny")
    trainer = _trainer(exp)
    model, m = trainer.members[0].model, trainer.members[0]
    index = m.train_t[:5]
    x = (trainer.jd.train[index].float() > 127).float()
    eps = torch.randn(5, model.latent_dim, generator=torch.Generator().manual_seed(0))
    params = list(model.parameters())
    model.train()
    trainer.gsm.disable_hooks()
    own = [torch.autograd.grad(objectives.neg_elbo(model, x[i:i + 1], eps=eps[i:i + 1]).sum(),
                               params) for i in range(5)]
    trainer.gsm.enable_hooks()
    C = exp.dp["max_grad_norm"]
    norms = torch.stack([torch.sqrt(sum(g.pow(2).sum() for g in gs)) for gs in own])
    factor = (C / (norms + 1e-6)).clamp(max=1.0)
    # ghost clipping: the per-example norms are those of each example's own loss ℓ_i
    # (loss_reduction "sum": not rescaled by the batch size), and the gradient it leaves is
    # the sum of the clipped per-example gradients
    trainer.optimizer.zero_grad(set_to_none=True)
    trainer.clipped_sum(x, eps)
    torch.testing.assert_close(trainer.gsm.per_sample_gradient_norms, norms, rtol=1e-4, atol=0)
    assert (norms > C).all()  # the ELBO's gradients are long: every example is clipped
    assert (factor * norms <= C * (1 + 1e-5)).all()   # no clipped gradient is longer than C
    for j, p in enumerate(params):
        want = sum(factor[i] * own[i][j] for i in range(5))
        torch.testing.assert_close(p.grad, want, rtol=1e-4, atol=1e-6)
    # the clipped sum is what the optimizer noised; the update is (sum + noise) / B
    big = model._decoder[4].weight  # 1024 x 512: the noise's std is measured well on it
    clipped = big.grad.clone()
    trainer.optimizer.pre_step()
    torch.testing.assert_close(big.summed_grad, clipped)
    noise = big.grad * exp.batch_size - big.summed_grad
    assert abs(noise.std().item() / (trainer.sigma * C) - 1) < 0.02


def test_empty_poisson_batch_is_a_step_of_noise(tiny_dp):
    trainer = _trainer(experiments.get("tiny"))
    w = trainer.members[0].model._mu.weight
    before = w.detach().clone()
    assert float(trainer.step(trainer.members[0].train_t[:0])) == 0.0
    assert not torch.equal(before, w.detach())
    assert trainer.accountant.history[-1][2] == 1


def test_resumed_private_run_equals_an_uninterrupted_one(tiny_dp, tmp_path):
    assert memorization.main(_args(tmp_path)) == 0
    path = next((tmp_path / "res" / "tiny" / "results").glob("*.json.gz"))
    first = path.read_bytes()
    path.unlink()
    assert memorization.main(_args(tmp_path, "cv_repeat0_fold1", "--stop-after", "3")) == 3
    resume = next((tmp_path / "res" / "tiny" / "checkpoints").glob("*_resume.pt"))
    state = torch.load(resume, weights_only=True)
    assert state["extra"]["accountant"][0][2] == 3 * (40 // 16)
    assert memorization.main(_args(tmp_path)) == 0
    assert path.read_bytes() == first


def test_dcvaes_in_dp_mode_have_groupnorm_and_train_a_step(tiny_dp):
    for name in ("DiagonalGaussianDCVAE", "ConstantGaussianDCVAE"):
        exp = dataclasses.replace(experiments.get("tiny"), model=name, latent_dim=8,
                                  dp={"epsilon": 1})
        trainer = _trainer(exp)
        model = trainer.members[0].model
        kinds = {type(mod) for mod in model.modules()}
        assert nn.GroupNorm in kinds and not any(issubclass(k, nn.modules.batchnorm._BatchNorm)
                                                 for k in kinds)
        assert model.description == "NF32-L8-GN"
        assert naming.file_stem(exp, Job(0, 1)) == f"npz_{name}_NF32-L8-GN-dp-eps1_seed42_cv_repeat0_fold1"
        before = {k: v.clone() for k, v in model.state_dict().items()}
        loss = trainer.step(trainer.members[0].train_t[:6])
        assert math.isfinite(float(loss))
        # every parameter was updated by the clipped, noised step, log γ too
        after = model.state_dict()
        assert all(not torch.equal(before[k], after[k]) for k in before)
    assert naming.model_description("DiagonalGaussianDCVAE", 8) == "NF32-L8"  # the paper's, unchanged
    assert naming.model_description("BernoulliMLPVAE", 8, "group") == "512-256-8"


# ----------------------------------------------------------------------------------------------
# no mixing of private and non-private files


def test_private_and_non_private_files_never_mix(tiny_experiment, tmp_path, capsys):
    exp_file, _ = tiny_experiment
    assert memorization.main(_args(tmp_path / "plain")) == 0
    plain = next((tmp_path / "plain" / "res" / "tiny" / "results").glob("*.json.gz"))
    meta = results.read_result(plain)["meta"]
    assert "privacy" not in meta and "dp" not in meta["settings"]  # as before dp existed
    _set_experiment(exp_file, dp=DP)
    # a private job beside non-private results is refused
    assert memorization.main(_args(tmp_path / "plain", "cv_repeat0_fold0")) == 1
    err = capsys.readouterr().err
    assert "dp=None" in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert memorization.main(_args(tmp_path / "dp")) == 0
    private_file = next((tmp_path / "dp" / "res" / "tiny" / "results").glob("*.json.gz"))
    # a summary of both is refused, with and without the experiment to compare with
    with pytest.raises(summary.SummaryError, match="mixed privacy") as e:
        summary.summarize([plain, private_file], progress=False)
    assert len(str(e.value).splitlines()) == 1
    with pytest.raises(summary.SummaryError, match="dp="):
        summary.summarize([plain], progress=False, experiment=experiments.get("tiny"))
    # a resume file of a private run is refused by the non-private experiment, and back
    assert memorization.main(_args(tmp_path / "dp", "cv_repeat0_fold2", "--stop-after", "1")) == 3
    _set_experiment(exp_file, dp=None)
    (private_file).unlink()
    assert memorization.main(_args(tmp_path / "dp", "cv_repeat0_fold2")) == 0  # its own name
    _set_experiment(exp_file, dp={"epsilon": 10, "max_grad_norm": 2.0})
    for f in (tmp_path / "dp" / "res" / "tiny" / "results").glob("*"):
        f.unlink()
    assert memorization.main(_args(tmp_path / "dp", "cv_repeat0_fold2")) == 1
    err = capsys.readouterr().err
    assert "other settings" in err and "max_grad_norm" in err and "delete it" in err


def test_delta_not_below_one_over_n_is_refused_in_one_line(tiny_dp, tmp_path, capsys):
    exp_file, _ = tiny_dp
    _set_experiment(exp_file, dp={**DP, "delta": 0.5})
    assert memorization.main(_args(tmp_path)) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "below 1/n" in err and '"delta"' in err
    assert not (tmp_path / "res" / "tiny" / "results").exists() or not any(
        (tmp_path / "res" / "tiny" / "results").glob("*.json.gz"))


def test_groups_refuse_dp_naming_the_fix(tiny_dp, tmp_path, capsys):
    exp = experiments.get("tiny")
    with pytest.raises(ValueError, match="GROUP=1"):
        ensemble.run_group(exp, [Job(0, 0), Job(0, 1)], tmp_path)
    with pytest.raises(ValueError, match="GROUP=1"):
        plan.grouped_rules(exp, 3)
    # GROUP > 1 in make plans the other experiments in groups and a private one job by job
    plain = dataclasses.replace(exp, name="plain", dp=None)
    fragment = plan.make_fragment({"tiny": exp, "plain": plain}, group=3)
    assert fragment == plan.make_fragment({"tiny": exp, "plain": plain}, group=3)
    assert "--jobs" in fragment and "--experiment plain --jobs" in fragment
    assert "--experiment tiny --jobs" not in fragment and "--experiment tiny --job $*" in fragment
    assert memorization.main(["--experiment", "tiny", "--jobs", "cv_repeat0_fold0",
                              "cv_repeat0_fold1", "--results-dir", str(tmp_path),
                              "--device", "cpu"]) == 1
    err = capsys.readouterr().err
    assert "GROUP=1" in err and len(err.strip().splitlines()) == 1


def test_summary_of_a_private_experiment_records_its_privacy(tiny_dp, tmp_path):
    import summarize
    exp = experiments.get("tiny")
    for job in exp.jobs():
        assert memorization.main(_args(tmp_path, job.tag)) == 0
    files = [str(results.job_files(exp, j, tmp_path / "res").result) for j in exp.jobs()]
    out = tmp_path / "tiny.npz"
    assert summarize.main(["--experiment", "tiny", "--result-files", *files, "-o", str(out),
                           "--n-boot", "20", "--n-perm", "20"]) == 0
    privacy = summary.load(out).meta["privacy"]
    metas = [results.read_result(f)["meta"]["privacy"] for f in files]
    assert privacy["epsilon"] == 10 and privacy["delta"] == 1e-5
    assert privacy["epsilon_spent"] == max(m["epsilon_spent"] for m in metas)
    assert privacy["epsilon_spent"] <= 10 * 1.05
    # fold models see fewer examples than the full model: a larger sample rate, another σ
    assert privacy["noise_multiplier_full"] != privacy["noise_multiplier_folds"]
    # the bound on M of every example, from the fold models' recorded schedules
    fold_metas = [m for f, m in zip(files, metas) if "full" not in Path(f).name]
    assert {(r["sample_rate"], r["noise_multiplier"], r["steps"])
            for r in privacy["fold_models"]} == {
        (m["sample_rate"], m["noise_multiplier"], m["steps"]) for m in fold_metas}
    s = summary.load(out)
    bound = privacy_bound.summary_bound(s)
    assert bound.shape == (s.n,) and np.all(bound > 0)
    table = pd.read_csv(out.with_suffix(".csv"))
    np.testing.assert_allclose(table["privacy_bound"], bound, rtol=1e-5)
    # the report's key numbers carry the same bound
    from memo.figures import report
    numbers = dict(report.key_numbers(s))
    ok = np.isfinite(s.M_final)
    assert numbers["share with $M$ above the privacy bound"].startswith(
        f"{100 * np.mean(s.M_final[ok] > bound[ok]):.1f}")


# ----------------------------------------------------------------------------------------------
# the Rényi-DP bound on M (memo/score/privacy.py)


@pytest.mark.parametrize("q,sigma", [(0.04, 5.234375), (0.04, 0.964), (0.04, 0.4), (0.5, 0.7)])
def test_sampled_gaussian_rdp_agrees_with_opacus(q, sigma):
    from opacus.accountants.analysis.rdp import compute_rdp
    ours = privacy_bound.sampled_gaussian_rdp(q, sigma, 1000)
    theirs = np.array(compute_rdp(q=q, noise_multiplier=sigma, steps=1000,
                                  orders=list(privacy_bound.ORDERS)))
    np.testing.assert_allclose(ours, theirs, rtol=1e-6)


def test_rdp_without_subsampling_is_the_gaussian_mechanisms():
    orders = np.array([1.5, 2.0, 10.0])
    np.testing.assert_allclose(privacy_bound.sampled_gaussian_rdp(1.0, 2.0, 3, orders),
                               3 * orders / 8)


def test_bound_holds_and_is_near_tight_for_two_gaussian_mechanisms():
    """A toy where everything is exact: a model's parameter is θ ~ N(μ, 1) with μ = Δ when it
    trained on x and 0 when not, and p(x | θ) = exp(2θ − θ²) (largest at θ = Δ = 1). The in- and out-
    distributions differ by one substitution whose two halves (remove, add) are Gaussian
    mechanisms with Rényi curve α (Δ/2)² / 2 each. E_in p, E_out p and E_out p^γ have closed
    forms, so the bound can be checked against the true M, and against a brute-force
    minimisation written out directly."""
    half = 0.5   # each half of the substitution moves the mean by Δ/2
    orders = privacy_bound.ORDERS
    eps = orders * half ** 2 / 2

    def log_mean_p_pow(mu, g):  # log E[p(x|θ)^g], θ ~ N(mu, 1): a Gaussian integral
        a, b = g, 2 * g      # g (2θ − θ²) = b θ − a θ²
        return (-0.5 * np.log(1 + 2 * a) + (b + mu) ** 2 / (2 * (1 + 2 * a)) - mu ** 2 / 2)

    true_M = log_mean_p_pow(2 * half, 1) - log_mean_p_pow(0, 1)
    # the out-distribution as many equally likely out-values: quantiles of θ ~ N(0, 1)
    from scipy.stats import norm
    theta = norm.ppf((np.arange(20000) + 0.5) / 20000)
    v = (2 * theta - theta ** 2)[:, None]
    bound = privacy_bound.substitution_bound(v, eps)[0]
    # brute force: each pair (α, β) written out from the formula
    conj = orders / (orders - 1)
    brute = min((1 - 1 / a) * ea + (1 - 1 / b) * eb / ca
                + log_mean_p_pow(0, ca * cb) / (ca * cb) - log_mean_p_pow(0, 1)
                for a, ea, ca in zip(orders, eps, conj) for b, eb, cb in zip(orders, eps, conj))
    assert true_M > 0
    assert bound >= true_M
    assert bound == pytest.approx(brute, abs=2e-3)
    assert bound < 4 * true_M     # and it is not vacuous here


def test_bound_grows_with_the_spread_of_the_out_values_and_is_zero_without_privacy_loss():
    eps = privacy_bound.sampled_gaussian_rdp(0.04, 5.234375, 1000)
    rng = np.random.default_rng(0)
    z = rng.standard_normal((4000, 1))
    narrow, wide = (privacy_bound.substitution_bound(s * z, eps)[0] for s in (1.0, 3.0))
    assert 0 < narrow < wide
    # no privacy loss and no spread: M cannot rise
    flat = privacy_bound.substitution_bound(np.zeros((3, 5)), np.zeros_like(eps))
    np.testing.assert_allclose(flat, 0, atol=1e-12)
    # a missing out-value gives nan, not a number
    v = np.zeros((3, 2))
    v[1, 0] = np.nan
    assert np.isnan(privacy_bound.substitution_bound(v, eps)[0])


def test_out_values_are_the_held_out_models_values():
    values = np.arange(2 * 3 * 4, dtype=float).reshape(2, 3, 4)
    held = np.array([[0, 1, 2, 0], [2, 2, 1, 0]])
    out = privacy_bound.out_values(values, held)
    for r in range(2):
        for i in range(4):
            assert out[r, i] == values[r, held[r, i], i]

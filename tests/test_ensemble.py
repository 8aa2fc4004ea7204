"""Grouped (vectorized) training gives each model what one-at-a-time training gives it.

Each model draws the very same random numbers grouped and alone (checked exactly below), so
the runs differ only by float32 rounding: batched matmuls and grouped convolutions sum in
another order. Tolerances:

* MLP, lr 1e-3: observed ~2e-7 relative on losses and ~2e-4 nats on log p (values ~-300);
  we allow 1e-5 relative and 1e-3 nats.
* DCVAEs: their convolution biases that feed a BatchNorm have a gradient that is zero in exact
  arithmetic; Adam divides its rounding noise by its own size and so moves them by up to ±lr a
  step, whatever changes the summation order (grouping, two threads instead of one, another
  device). BatchNorm cancels them in training mode but only approximately in eval mode, where
  log p of these barely trained models (~-7600 nats, per-pixel variances down to e^-7) amplifies
  them: at lr 1e-3 grouped and single eval quantities differ by up to ~5e-4 relative, at lr
  1e-5 by ~1e-5. The DCVAE comparison runs at lr 1e-5 with a tolerance of 1e-4 relative; the
  random numbers themselves are compared exactly at lr 1e-3. The ESS is a function of
  differences of log weights whose float32 spacing there is ~5e-4 nats: compared to 1e-2.
"""
import copy
import json

import numpy as np
import pytest
import torch

from conftest import write_tiny_npz
from memo.train import ensemble, training
from memo.train import runner
from memo.config import experiments
from memo import models
from memo.models import objectives
from memo.data import preprocess
from memo.files import results


def _experiment(tmp_path, monkeypatch, n, n_test=10, **overrides):
    npz = write_tiny_npz(tmp_path / "tiny.npz", n=n, n_test=n_test)
    spec = {"data": f"npz:{npz}", "model": "BernoulliMLPVAE", "latent_dim": 4, "lr": 1e-3,
            "epochs": 3, "eval_every": 2, "n_is": 8, "batch_size": 16, "folds": 3,
            "repeats": 1, "checkpoint_every": 1, **overrides}
    path = tmp_path / "experiments.json"
    path.write_text(json.dumps({"tiny": spec}))
    monkeypatch.setenv("EXPERIMENTS_FILE", str(path))
    return experiments.get("tiny")


def _quiet(*_):
    pass


def _read(root, exp, job):
    return results.read_result(next((root / exp.name / "results").glob(f"*_{job.tag}.json.gz")))


def _assert_same_result(a, b, rtol, atol, ess_rtol=None):
    assert a["meta"] == b["meta"]
    ra, rb = a["results"], b["results"]
    for part in ("train", "test"):
        np.testing.assert_allclose(rb["losses"][part], ra["losses"][part], rtol=rtol, atol=atol)
    for key, tol in (("logpxs", rtol), ("ess", ess_rtol or rtol)):
        assert ra[key].keys() == rb[key].keys()
        for epoch in ra[key]:
            for part in ("train", "test"):
                da, db = ra[key][epoch][part], rb[key][epoch][part]
                assert da.keys() == db.keys()
                np.testing.assert_allclose([db[k] for k in da], [da[k] for k in da],
                                           rtol=tol, atol=atol, err_msg=f"{key} {epoch} {part}")
    assert ("controls" in ra) == ("controls" in rb)
    if "controls" in ra:   # the control images, scored alike on both paths
        for key, tol in (("logpxs", rtol), ("ess", ess_rtol or rtol)):
            ca, cb = ra["controls"][key], rb["controls"][key]
            assert ca.keys() == cb.keys() and ca
            for epoch in ca:
                assert ca[epoch].keys() == cb[epoch].keys()
                np.testing.assert_allclose([cb[epoch][k] for k in ca[epoch]],
                                           [ca[epoch][k] for k in ca[epoch]], rtol=tol,
                                           atol=atol, err_msg=f"controls {key} {epoch}")


def _compare_group_with_jobs(tmp_path, exp, jobs, rtol, atol, ess_rtol=None):
    one = [runner.run_job(exp, job, tmp_path / "one", log=_quiet) for job in jobs]
    grouped = ensemble.run_group(exp, jobs, tmp_path / "group", log=_quiet)
    assert len(grouped) == len(one)
    for job in jobs:
        _assert_same_result(_read(tmp_path / "one", exp, job), _read(tmp_path / "group", exp, job),
                            rtol, atol, ess_rtol)
    return grouped


def test_grouped_mlp_matches_one_at_a_time_with_ragged_folds(tmp_path, monkeypatch):
    # n = 61, K = 3: folds of 21, 20, 20 -> 40, 41, 41 training examples, last batches 8, 9, 9;
    # the full model (61 examples, 4 batches, test split) is in the same group.
    # 300 test images: the control images span two evaluation batches
    exp = _experiment(tmp_path, monkeypatch, n=61, n_test=300, epochs=2, eval_every=2)
    jobs = [experiments.Job(0, k) for k in range(3)] + [experiments.Job(0, None)]
    _compare_group_with_jobs(tmp_path, exp, jobs, rtol=1e-5, atol=1e-3)
    ckpt = "*_full_repeat0_epoch2.params"
    a, = (tmp_path / "one" / "tiny" / "checkpoints").glob(ckpt)
    b, = (tmp_path / "group" / "tiny" / "checkpoints").glob(ckpt)
    sa, sb = torch.load(a, weights_only=True), torch.load(b, weights_only=True)
    assert sa.keys() == sb.keys()
    for k in sa:
        torch.testing.assert_close(sb[k], sa[k], rtol=1e-4, atol=1e-5)
    assert not list(tmp_path.rglob("*_resume.pt"))


@pytest.mark.parametrize("model", ["DiagonalGaussianDCVAE", "ConstantGaussianDCVAE"])
def test_grouped_dcvae_matches_one_at_a_time_with_ragged_batch_counts(tmp_path, monkeypatch,
                                                                      model):
    # n = 25, K = 3: folds 0 and 1 train on 16 and 17 examples in batches of 16, so fold 0
    # takes one step per epoch and fold 1 two (the second of one image: BatchNorm over 1).
    exp = _experiment(tmp_path, monkeypatch, n=25, model=model, lr=1e-5, hflip=True,
                      epochs=2, eval_every=2, checkpoint_every=5)
    _compare_group_with_jobs(tmp_path, exp, [experiments.Job(0, 0), experiments.Job(0, 1)],
                             rtol=1e-4, atol=1e-3, ess_rtol=1e-2)


def test_each_model_draws_the_same_random_numbers_grouped_and_alone(tmp_path, monkeypatch):
    """Data order, flips, dequantization noise and eps of every training step, exactly."""
    exp = _experiment(tmp_path, monkeypatch, n=25, model="DiagonalGaussianDCVAE", hflip=True,
                      epochs=2, eval_every=2, checkpoint_every=5)
    jobs = [experiments.Job(0, 0), experiments.Job(0, 1), experiments.Job(0, 2)]
    alone = []  # per run_job: [(x, eps)] of each training step
    real_neg_elbo = objectives.neg_elbo

    def neg_elbo(model, x, generator=None, eps=None):
        if model.training:  # the draws of each training step, recorded
            if eps is None:
                eps = torch.randn((x.shape[0], exp.latent_dim), generator=generator)
            alone[-1].append((x, eps))
        return real_neg_elbo(model, x, generator, eps)
    monkeypatch.setattr(objectives, "neg_elbo", neg_elbo)
    for job in jobs:
        alone.append([])
        runner.run_job(exp, job, tmp_path / "one", log=_quiet)
    monkeypatch.setattr(objectives, "neg_elbo", real_neg_elbo)

    grouped = [[] for _ in jobs]
    real_step = ensemble.StackedVAEs.train_step

    def train_step(self, x, eps, rows=None, models=None):
        for i, g in enumerate(range(len(jobs)) if models is None else models):
            grouped[g].append((x[i], eps[i]))
        return real_step(self, x, eps, rows, models)
    monkeypatch.setattr(ensemble.StackedVAEs, "train_step", train_step)
    ensemble.run_group(exp, jobs, tmp_path / "group", log=_quiet)
    assert [len(s) for s in alone] == [len(s) for s in grouped] == [2, 4, 4]
    for steps_alone, steps_grouped in zip(alone, grouped):
        for (xa, ea), (xg, eg) in zip(steps_alone, steps_grouped):
            assert torch.equal(xa, xg) and torch.equal(ea, eg)


def test_interrupted_group_resumes_and_shares_checkpoints_with_run_job(tmp_path, monkeypatch):
    exp = _experiment(tmp_path, monkeypatch, n=61)
    jobs = [experiments.Job(0, 0), experiments.Job(0, 1)]  # 40 and 41 training examples
    whole = ensemble.run_group(exp, jobs, tmp_path / "whole", log=_quiet)
    root = tmp_path / "resumed"
    assert ensemble.run_group(exp, jobs, root, log=_quiet, stop_after=1) is None
    assert not list(root.rglob("*.json.gz"))
    assert len(list(root.rglob("*_resume.pt"))) == 2
    messages = []
    # a group's resume file is a run_job resume file ...
    runner.run_job(exp, jobs[1], root, log=messages.append)
    assert any("resuming after epoch 1" in m for m in messages)
    _assert_same_result(_read(tmp_path / "whole", exp, jobs[1]), _read(root, exp, jobs[1]),
                        rtol=1e-5, atol=1e-3)
    # ... and a group whose resume files disagree starts afresh, to the same numbers
    messages.clear()
    again = ensemble.run_group(exp, jobs, root, log=messages.append)
    assert any("starting afresh" in m for m in messages)
    assert again == whole
    # an interrupted group resumed as a group gives exactly the uninterrupted numbers
    root = tmp_path / "resumed2"
    ensemble.run_group(exp, jobs, root, log=_quiet, stop_after=2)
    messages.clear()
    assert ensemble.run_group(exp, jobs, root, log=messages.append) == whole
    assert any("resuming after epoch 2" in m for m in messages)
    assert not list(root.rglob("*_resume.pt"))


def test_nan_loss_aborts_the_group_naming_the_epoch(tmp_path, monkeypatch):
    exp = _experiment(tmp_path, monkeypatch, n=61, epochs=1, eval_every=1)
    real = preprocess.train_inputs
    monkeypatch.setattr(preprocess, "train_inputs", lambda *a, **k: real(*a, **k) * float("nan"))
    with pytest.raises(training.TrainingDivergedError, match="nan at epoch 1"):
        ensemble.run_group(exp, [experiments.Job(0, 0), experiments.Job(0, 1)], tmp_path, log=_quiet)
    assert not list(tmp_path.rglob("*.json.gz"))


def test_models_that_sit_out_a_step_do_not_move():
    torch.manual_seed(0)
    modules = [models.build("DiagonalGaussianDCVAE", 4, 3) for _ in range(3)]
    stack = ensemble.StackedVAEs(modules, lr=1e-3)
    x, eps = torch.randn(3, 4, 3, 32, 32), torch.randn(3, 4, 4)
    stack.train_step(x, eps)
    before = stack.flat.clone(), {k: b.clone() for k, b in stack.buffers.items()}
    state = {k: v.clone() for k, v in stack.optimizer.state[stack.rows[1]].items()}
    stack.train_step(x[[0, 2]], eps[[0, 2]], torch.tensor([0, 2]), [0, 2])
    assert torch.equal(stack.flat[1], before[0][1])
    assert not torch.equal(stack.flat[0], before[0][0])
    for k, b in stack.buffers.items():
        assert torch.equal(b[1], before[1][k][1])
    for k, v in stack.optimizer.state[stack.rows[1]].items():
        assert torch.equal(v, state[k])
    assert float(stack.optimizer.state[stack.rows[0]]["step"]) == 2.0


def test_stacked_adam_equals_one_adam_per_model():
    torch.manual_seed(0)
    modules = [models.build("BernoulliMLPVAE", 4, 1) for _ in range(2)]
    alone = [copy.deepcopy(m) for m in modules]
    opts = [training.adam(m.parameters(), 1e-3) for m in alone]
    stack = ensemble.StackedVAEs(modules, lr=1e-3)
    for _ in range(3):
        x = torch.bernoulli(torch.rand(2, 8, 1, 32, 32))
        eps = torch.randn(2, 8, 4)
        stack.train_step(x, eps)
        for g, (m, opt) in enumerate(zip(alone, opts)):
            loss = objectives.neg_elbo(m, x[g], eps=eps[g]).sum()
            opt.zero_grad()
            loss.backward()
            opt.step()
    for g, m in enumerate(alone):
        exported = copy.deepcopy(m)
        opt = training.adam(exported.parameters(), 1e-3)
        stack.export(g, exported, opt)
        a = torch.cat([p.detach().flatten() for p in exported.parameters()])
        b = torch.cat([p.detach().flatten() for p in m.parameters()])
        # Adam divides by sqrt(v): where a gradient is ~0, the batched matmul's rounding can
        # move a step by up to lr. So: every element within 2·lr per step, and all but a
        # handful (here ~1 in 1e5 on some CPUs) equal to float32 rounding.
        assert (a - b).abs().max() <= 2 * 1e-3 * 3
        close = torch.isclose(a, b, rtol=1e-5, atol=1e-6)
        assert (~close).sum() <= 1e-4 * a.numel()
        assert float(opt.state[next(exported.parameters())]["step"]) == 3.0


def test_cli_trains_a_group_and_checks_its_outputs(tmp_path, monkeypatch, capsys):
    import memorization
    exp = _experiment(tmp_path, monkeypatch, n=61, epochs=1, eval_every=1)
    root = tmp_path / "res"
    files = [str(results.job_files(exp, experiments.Job(0, k), root).result)
             for k in (0, 1)]
    base = ["--experiment", "tiny", "--results-dir", str(root), "--device", "cpu"]
    assert memorization.main(base + ["--jobs", "cv_repeat0_fold0", "cv_repeat0_fold1",
                                     "--output", files[0]]) == 1
    assert "does not match" in capsys.readouterr().err
    assert memorization.main(base + ["--jobs", "cv_repeat0_fold0", "cv_repeat0_fold1",
                                     "--output", *files]) == 0
    for f in files:
        assert results.read_result(f)["meta"]["mode"] == "split-cv"


def test_plan_groups_the_folds_of_a_repeat_into_grouped_targets(tiny_experiment):
    import plan
    exp = experiments.get("tiny")  # K = 3, L = 2
    one = plan.make_fragment({"tiny": exp})
    assert "&: | $(SETUP)" not in one and "--jobs" not in one  # no grouped training
    grouped = plan.make_fragment({"tiny": exp}, group=3)
    assert grouped.count("&: | $(SETUP)") == 2
    assert "--jobs cv_repeat1_fold0 cv_repeat1_fold1 cv_repeat1_fold2 --output $(GROUP_tiny_1)" \
        in grouped
    full_rule = next(line for line in grouped.splitlines() if "_%.json.gz:" in line)
    assert "full_repeat0.json.gz" in full_rule and "cv_repeat" not in full_rule


def test_a_group_killed_between_its_members_resume_files_resumes_from_the_older(tmp_path,
                                                                                 monkeypatch):
    """Members' resume files are written one after another: a kill in between leaves some at
    epoch E and others at the epoch before; the group goes back to that one for all."""
    from memo.train import checkpoints
    exp = _experiment(tmp_path, monkeypatch, n=61, epochs=3, eval_every=1)
    jobs = [experiments.Job(0, 0), experiments.Job(0, 1)]
    whole = ensemble.run_group(exp, jobs, tmp_path / "whole", log=_quiet)
    root = tmp_path / "killed"
    real, calls = checkpoints.save_resume, []

    def save_resume(*args, **kwargs):  # the 4th write (epoch 2, second member) never happens
        calls.append(1)
        if len(calls) == 4:
            raise KeyboardInterrupt
        return real(*args, **kwargs)
    monkeypatch.setattr(checkpoints, "save_resume", save_resume)
    with pytest.raises(KeyboardInterrupt):
        ensemble.run_group(exp, jobs, root, log=_quiet)
    monkeypatch.setattr(checkpoints, "save_resume", real)
    messages = []
    assert ensemble.run_group(exp, jobs, root, log=messages.append) == whole
    assert any("resuming after epoch 1" in m for m in messages), messages
    assert not list(root.rglob("*_resume*.pt"))

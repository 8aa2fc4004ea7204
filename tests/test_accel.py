"""Speed options (memo/train/accel.py) and the GPU fast path's rules, checked on the CPU.

* TF32 is confined to training: every evaluation runs with TF32 off, whatever was set before.
* torch.compile of the training loss gives the eager numbers up to float32 rounding: the
  compiled kernels fuse elementwise work and so round differently; on these tiny models after
  three epochs at lr 1e-3 that is observed at ~1e-6 relative on losses and log p; we allow
  1e-4 relative (and 1e-2 on the ESS, see test_ensemble.py).
* No host synchronisation per training step: the calls that force one (item, float, bool,
  tolist, numpy, cpu) made from our own code are counted, and their number must not grow with
  the number of steps. On a GPU, tests/test_gpu.py also runs a whole epoch under
  torch.cuda.set_sync_debug_mode("error").
"""
import collections
import sys
from pathlib import Path

import pytest
import torch

import memorization
from memo.train import accel, ensemble, evaluation, training
from memo.train import runner
from memo.config import experiments
from memo.files import results
from memo.models import estimator, objectives
from test_ensemble import _assert_same_result, _experiment, _quiet, _read

MEMO = str(Path(__file__).resolve().parents[1] / "scripts" / "memo")
SYNCING = ("item", "tolist", "numpy", "cpu", "__float__", "__int__", "__bool__")


def _flags():
    return torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32


@pytest.fixture
def tf32_on():
    """TF32 allowed everywhere (as cuDNN's default is), restored afterwards."""
    saved = _flags()
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def test_evaluation_turns_tf32_off_and_restores_the_flags(tf32_on):
    with accel.training_precision(accel.Speed(tf32=False)):
        assert _flags() == (False, False)
        with accel.exact_float32():
            assert _flags() == (False, False)
    with accel.training_precision(accel.Speed(tf32=True)):
        assert _flags() == (True, True)
        with accel.exact_float32():
            assert _flags() == (False, False)
        assert _flags() == (True, True)
    assert _flags() == (True, True)


def test_evaluate_runs_without_tf32_even_when_training_uses_it(monkeypatch, tf32_on):
    seen = []
    real = estimator.log_px

    def log_px(*args, **kwargs):
        seen.append(_flags())
        return real(*args, **kwargs)
    monkeypatch.setattr(estimator, "log_px", log_px)
    exp = experiments.Experiment(name="t", data="npz:x", model="BernoulliMLPVAE", latent_dim=4,
                                 lr=1e-3, epochs=1, eval_every=1, n_is=4)
    model = training.init_model(exp, 0, 1, "cpu")
    images = torch.randint(0, 256, (10, 1, 32, 32), dtype=torch.uint8)
    with accel.training_precision(accel.Speed(tf32=True)):
        evaluation.evaluate(model, images, torch.arange(10), exp.seed, exp.n_is, 1, 0)
    assert seen == [(False, False)]


def test_speed_options_are_checked_and_resolved():
    with pytest.raises(ValueError, match="unknown compile mode 'fast'"):
        accel.Speed(compile="fast")
    assert accel.Speed(compile="auto").compile_mode("cuda") == "reduce-overhead"
    assert accel.Speed(compile="auto").compile_mode("cpu") == "default"
    assert accel.Speed().compile_mode("cuda") is None
    assert accel.Speed(tf32=True).describe("cpu")["tf32"] is True


def test_cli_names_a_bad_compile_mode(tiny_experiment, tmp_path, capsys):
    code = memorization.main(["--experiment", "tiny", "--job", "cv_repeat0_fold0",
                              "--results-dir", str(tmp_path), "--compile", "fast"])
    assert code == 2 and "unknown compile mode 'fast'" in capsys.readouterr().err
    assert not list(tmp_path.rglob("*.json.gz"))


def test_compiled_training_gives_the_eager_numbers(tmp_path, monkeypatch):
    exp = _experiment(tmp_path, monkeypatch, n=45)
    job = experiments.Job(0, 1)
    runner.run_job(exp, job, tmp_path / "eager", log=_quiet)
    runner.run_job(exp, job, tmp_path / "compiled", log=_quiet,
                     speed=accel.Speed(compile="auto"))
    eager, compiled = _read(tmp_path / "eager", exp, job), _read(tmp_path / "compiled", exp, job)
    assert compiled["meta"]["speed"]["compile"] == "default"
    assert eager["meta"]["speed"]["compile"] is None
    compiled["meta"]["speed"] = eager["meta"]["speed"]
    _assert_same_result(eager, compiled, rtol=1e-4, atol=1e-3, ess_rtol=1e-2)


def test_compiled_group_gives_the_eager_group_numbers(tmp_path, monkeypatch):
    exp = _experiment(tmp_path, monkeypatch, n=45)
    jobs = [experiments.Job(0, 0), experiments.Job(0, 1)]
    ensemble.run_group(exp, jobs, tmp_path / "eager", log=_quiet)
    ensemble.run_group(exp, jobs, tmp_path / "compiled", log=_quiet,
                       speed=accel.Speed(compile="default"))
    for job in jobs:
        eager, compiled = _read(tmp_path / "eager", exp, job), _read(tmp_path / "compiled", exp, job)
        compiled["meta"]["speed"] = eager["meta"]["speed"]
        _assert_same_result(eager, compiled, rtol=1e-4, atol=1e-3, ess_rtol=1e-2)


#----------------------------------------------------------------------------
# No host synchronisation per step

class SyncCounter(collections.Counter):
    """Counts calls that would wait for the device, made from the files under `sources`."""

    def __init__(self):
        super().__init__()
        self.sources = [MEMO]


@pytest.fixture
def host_syncs(monkeypatch):
    counts = SyncCounter()
    for name in SYNCING:
        real = getattr(torch.Tensor, name)

        def wrapper(self, *args, _real=real, _name=name, **kwargs):
            if sys._getframe(1).f_code.co_filename.startswith(tuple(counts.sources)):
                counts[_name] += 1
            return _real(self, *args, **kwargs)
        monkeypatch.setattr(torch.Tensor, name, wrapper)
    return counts


def _syncs_per_batch_size(tmp_path, monkeypatch, host_syncs, grouped=False) -> list[dict]:
    """Syncs of a whole 3-epoch run at batch 4 and at batch 20: 10, then 2 steps an epoch."""
    jobs = [experiments.Job(0, 0), experiments.Job(0, 1)]
    counts = []
    for batch in (4, 20):
        (tmp_path / str(batch)).mkdir()
        exp = _experiment(tmp_path / str(batch), monkeypatch, n=60, batch_size=batch)
        root = tmp_path / str(batch) / "res"
        host_syncs.clear()
        if grouped:
            ensemble.run_group(exp, jobs, root, log=_quiet)
        else:
            runner.run_job(exp, jobs[0], root, log=_quiet)
        counts.append(dict(host_syncs))
    return counts


@pytest.mark.parametrize("grouped", [False, True], ids=["one", "grouped"])
def test_host_syncs_do_not_grow_with_the_number_of_steps(tmp_path, monkeypatch, host_syncs,
                                                         grouped):
    many_steps, few_steps = _syncs_per_batch_size(tmp_path, monkeypatch, host_syncs, grouped)
    assert many_steps and many_steps == few_steps  # non-empty: it sees the per-epoch syncs


def test_the_sync_counter_catches_a_per_step_item(tmp_path, monkeypatch, host_syncs):
    """The check above is not vacuous: a .item() in every step is caught."""
    real = objectives.neg_elbo

    def neg_elbo(model, x, generator=None, eps=None):
        loss = real(model, x, generator, eps)
        if model.training:
            loss.sum().item()
        return loss
    monkeypatch.setattr(objectives, "neg_elbo", neg_elbo)
    host_syncs.sources.append(__file__)
    many_steps, few_steps = _syncs_per_batch_size(tmp_path, monkeypatch, host_syncs)
    assert many_steps["item"] - few_steps["item"] == 3 * (10 - 2)  # epochs x extra steps


def test_compile_without_a_cxx_compiler_is_one_clear_error(tiny_experiment, tmp_path, capsys,
                                                           monkeypatch):
    monkeypatch.setattr(accel, "_cxx_compiler", lambda: None)
    code = memorization.main(["--experiment", "tiny", "--job", "cv_repeat0_fold0", "--device",
                              "cpu", "--results-dir", str(tmp_path), "--compile"])
    err = capsys.readouterr().err
    assert code == 1 and "needs a C++ compiler" in err and "Traceback" not in err
    assert not list(tmp_path.rglob("*.json.gz"))


def test_a_failing_compilation_is_one_clear_error(monkeypatch):
    def broken(*args, **kwargs):
        raise torch._dynamo.exc.BackendCompilerFailed.__new__(
            torch._dynamo.exc.BackendCompilerFailed)
    monkeypatch.setattr(torch, "compile", lambda fn, **kw: broken)
    loss = accel.compile_loss(lambda x: x.sum(), accel.Speed(compile="default"), "cpu")
    with pytest.raises(accel.CompileError, match="torch.compile \\(mode default\\) failed"):
        loss(torch.ones(3))


@pytest.mark.parametrize("grouped", [False, True], ids=["one", "grouped"])
def test_compiled_training_keeps_batchnorm_statistics(tmp_path, monkeypatch, grouped):
    """The DCVAE's BatchNorm running statistics (used by every evaluation) are updated by the
    compiled step as by the eager one: eval-mode numbers agree. lr 1e-5 for the reason given in
    test_ensemble.py (conv biases before BatchNorm amplify rounding at higher rates)."""
    exp = _experiment(tmp_path, monkeypatch, n=30, model="DiagonalGaussianDCVAE", lr=1e-5,
                      epochs=2, eval_every=2, hflip=True)
    jobs = [experiments.Job(0, 0), experiments.Job(0, 1)] if grouped else [experiments.Job(0, 1)]
    for name, speed in (("eager", accel.Speed()), ("compiled", accel.Speed(compile="default"))):
        if grouped:
            ensemble.run_group(exp, jobs, tmp_path / name, log=_quiet, speed=speed)
        else:
            runner.run_job(exp, jobs[0], tmp_path / name, log=_quiet, speed=speed)
    for job in jobs:
        eager, compiled = _read(tmp_path / "eager", exp, job), _read(tmp_path / "compiled", exp, job)
        compiled["meta"]["speed"] = eager["meta"]["speed"]
        _assert_same_result(eager, compiled, rtol=1e-4, atol=1e-3, ess_rtol=1e-2)

"""CUDA paths (skipped without a GPU): same numbers as the CPU, grouped as one at a time, no
host synchronisation per training step, and the speed options within their tolerances."""
import warnings

import pytest
import torch

import memorization
from memo.train import accel, ensemble, training
from memo.train import runner
from memo.models import estimator
from memo.config import experiments
from memo import models
from memo.data import preprocess
from memo.files import results
from test_ensemble import _assert_same_result, _experiment, _quiet, _read

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.fixture
def cudnn_default_tf32():
    """TF32 allowed as torch's defaults allow it for cuDNN convolutions; restored afterwards."""
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


@pytest.mark.parametrize("name,channels", [("BernoulliMLPVAE", 1), ("DiagonalGaussianDCVAE", 3)])
def test_log_px_on_cuda_matches_cpu(name, channels, cudnn_default_tf32):
    torch.manual_seed(0)
    model = models.build(name, 8, channels).eval()
    x_u8 = torch.randint(0, 256, (16, channels, 32, 32), dtype=torch.uint8)
    x = preprocess.eval_inputs(x_u8, torch.arange(16), model.binary, 0)
    eps = torch.randn(16, 64, 8)
    cpu, _ = estimator.log_px(model, x, 64, eps=eps)
    with accel.exact_float32():  # as every evaluation runs
        gpu, _ = estimator.log_px(model.cuda(), x.cuda(), 64, eps=eps.cuda())
    # float32 with different kernels: agreement to ~1e-4 relative of |log p| (hundreds of nats)
    assert torch.allclose(gpu.cpu(), cpu, rtol=1e-4, atol=1e-2)


def test_exact_float32_undoes_tf32_training_flags_on_cuda(cudnn_default_tf32):
    """Evaluation inside a TF32 training context (as run_job's evaluate is) matches the CPU."""
    model = models.build("DiagonalGaussianDCVAE", 8, 3).eval()
    images = torch.randint(0, 256, (40, 3, 32, 32), dtype=torch.uint8)
    x = preprocess.eval_inputs(images, torch.arange(40), False, 42)
    eps = torch.randn(40, 32, 8)
    ref, _ = estimator.log_px(model, x, 32, eps=eps)
    model.cuda()
    with accel.training_precision(accel.Speed(tf32=True)), accel.exact_float32():
        gpu, _ = estimator.log_px(model, x.cuda(), 32, eps=eps.cuda())
    assert torch.allclose(gpu.cpu(), ref, rtol=1e-4, atol=1e-2)


def test_evaluation_noise_is_the_same_on_cuda():
    idx = torch.arange(1000)
    assert torch.equal(preprocess.hash_uniform(42, idx.cuda(), 64).cpu(),
                       preprocess.hash_uniform(42, idx, 64))


def test_jobs_run_on_cuda_one_at_a_time_and_grouped(tiny_experiment, tmp_path):
    common = ["--experiment", "tiny", "--device", "cuda"]
    jobs = ["cv_repeat0_fold0", "cv_repeat0_fold1", "cv_repeat0_fold2"]
    for job in jobs:
        assert memorization.main([*common, "--job", job, "--results-dir", str(tmp_path / "one")]) == 0
    assert memorization.main([*common, "--jobs", *jobs, "--results-dir", str(tmp_path / "group")]) == 0
    for job in jobs:
        a = results.read_result(next((tmp_path / "one").rglob(f"*_{job}.json.gz")))
        b = results.read_result(next((tmp_path / "group").rglob(f"*_{job}.json.gz")))
        for epoch, parts in a["results"]["logpxs"].items():
            for part, values in parts.items():
                for idx, v in values.items():
                    assert b["results"]["logpxs"][epoch][part][idx] == pytest.approx(v, abs=1e-2)


def _sync_warnings(run) -> int:
    """CUDA synchronisations during run(), as counted by torch's sync debug mode."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            run()
        finally:
            torch.cuda.set_sync_debug_mode("default")
    return sum("synchroniz" in str(w.message) for w in caught)


@pytest.mark.parametrize("grouped", [False, True], ids=["one", "grouped"])
def test_no_cuda_sync_per_training_step(tmp_path, monkeypatch, grouped):
    jobs = [experiments.Job(0, 0), experiments.Job(0, 1)]
    counts = []
    for batch in (4, 20):  # 10, then 2 steps an epoch
        (tmp_path / str(batch)).mkdir()
        exp = _experiment(tmp_path / str(batch), monkeypatch, n=60, batch_size=batch)
        root = tmp_path / str(batch) / "res"
        if grouped:
            counts.append(_sync_warnings(lambda: ensemble.run_group(
                exp, jobs, root, device="cuda", log=_quiet)))
        else:
            counts.append(_sync_warnings(lambda: runner.run_job(
                exp, jobs[0], root, device="cuda", log=_quiet)))
    assert counts[0] == counts[1]


@pytest.mark.parametrize("grouped", [False, True], ids=["one", "grouped"])
def test_cuda_graphs_give_the_eager_numbers(tmp_path, monkeypatch, grouped):
    exp = _experiment(tmp_path, monkeypatch, n=45)
    jobs = [experiments.Job(0, 0), experiments.Job(0, 1)] if grouped else [experiments.Job(0, 1)]
    for name, speed in (("eager", accel.Speed()), ("graphs", accel.Speed(compile="auto"))):
        if grouped:
            ensemble.run_group(exp, jobs, tmp_path / name, "cuda", log=_quiet, speed=speed)
        else:
            runner.run_job(exp, jobs[0], tmp_path / name, "cuda", log=_quiet, speed=speed)
    for job in jobs:
        eager, graphs = _read(tmp_path / "eager", exp, job), _read(tmp_path / "graphs", exp, job)
        assert graphs["meta"]["speed"]["compile"] == "reduce-overhead"
        graphs["meta"]["speed"] = eager["meta"]["speed"]
        _assert_same_result(eager, graphs, rtol=1e-4, atol=1e-3, ess_rtol=1e-2)


@pytest.mark.parametrize("model", ["BernoulliMLPVAE", "DiagonalGaussianDCVAE"])
def test_tf32_training_stays_within_tolerance_of_float32(tmp_path, monkeypatch, model):
    """TF32 changes the training trajectory by rounding only: after 3 epochs every example's
    log p stays within 1 % (relative) of the float32 run, and the losses within 1 %."""
    exp = _experiment(tmp_path, monkeypatch, n=45, model=model,
                      latent_dim=8 if model != "BernoulliMLPVAE" else 4)
    job = experiments.Job(0, 1)
    for name, speed in (("fp32", accel.Speed()), ("tf32", accel.Speed(tf32=True))):
        runner.run_job(exp, job, tmp_path / name, "cuda", log=_quiet, speed=speed)
    fp32, tf32 = _read(tmp_path / "fp32", exp, job), _read(tmp_path / "tf32", exp, job)
    tf32["meta"]["speed"] = fp32["meta"]["speed"]
    _assert_same_result(fp32, tf32, rtol=1e-2, atol=1e-1, ess_rtol=0.5)


@pytest.mark.parametrize("grouped", [False, True], ids=["one", "grouped"])
def test_interrupted_cuda_jobs_resume_to_identical_numbers(tmp_path, monkeypatch, grouped):
    exp = _experiment(tmp_path, monkeypatch, n=45)
    jobs = [experiments.Job(0, 0), experiments.Job(0, 1)]

    def run(root, stop_after=None):
        if grouped:
            return ensemble.run_group(exp, jobs, root, "cuda", log=_quiet, stop_after=stop_after)
        return [runner.run_job(exp, job, root, "cuda", log=_quiet, stop_after=stop_after)
                for job in jobs]
    whole = run(tmp_path / "whole")
    assert run(tmp_path / "resumed", stop_after=1) in (None, [None, None])
    assert run(tmp_path / "resumed") == whole

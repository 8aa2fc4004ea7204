"""CUDA paths (skipped without a GPU): same numbers as the CPU, grouped as one at a time."""
import pytest
import torch

import memorization
from memo import estimator, models, preprocess, results

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.mark.parametrize("name,channels", [("BernoulliMLPVAE", 1), ("DiagonalGaussianDCVAE", 3)])
def test_log_px_on_cuda_matches_cpu(name, channels):
    torch.manual_seed(0)
    model = models.build(name, 8, channels).eval()
    x_u8 = torch.randint(0, 256, (16, channels, 32, 32), dtype=torch.uint8)
    x = preprocess.eval_inputs(x_u8, torch.arange(16), model.binary, 0)
    eps = torch.randn(16, 64, 8)
    cpu, _ = estimator.log_px(model, x, 64, eps=eps)
    gpu, _ = estimator.log_px(model.cuda(), x.cuda(), 64, eps=eps.cuda())
    # float32 with different kernels: agreement to ~1e-4 relative of |log p| (hundreds of nats)
    assert torch.allclose(gpu.cpu(), cpu, rtol=1e-4, atol=1e-2)


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

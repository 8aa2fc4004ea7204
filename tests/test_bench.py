"""The benchmark: its projection arithmetic, and one short real run writing its JSON report."""
import json

import pytest

import bench


def test_projection_counts_every_image_of_an_experiment():
    # 10 epochs, log p every 5 (epochs 5 and 10), n = 100, test split 20, K = 4, L = 2
    rates = {"train_one": 1.0, "is_one": 1.0, "train_group": 2.0, "is_group": 4.0,
             "train_base": 0.5, "is_base": 0.25}
    p = bench.project(rates, epochs=10, eval_every=5, n=100, n_test=20, folds=4, repeats=2)
    # a fold model trains on 75, holds out 25 for the loss, samples all 100 twice
    assert p["images"] == {"trained": 8 * 10 * 75 + 10 * 100,
                           "heldout_loss": 8 * 10 * 25 + 10 * 20,
                           "importance_sampled": 8 * 2 * 100 + 2 * 100}
    fold = 10 * 75 + 10 * 25 / 3 + 2 * 100  # seconds at rate 1
    full = 10 * 100 + 10 * 20 / 3 + 2 * 100
    assert p["hours_one_at_a_time"] * 3600 == pytest.approx(8 * fold + full)
    fold_group = (10 * 75 + 10 * 25 / 3) / 2 + 2 * 100 / 4
    assert p["hours_grouped"] * 3600 == pytest.approx(8 * fold_group + full)
    fold_base = (10 * 75 + 10 * 25 / 3) / 0.5 + 2 * 100 / 0.25
    full_base = (10 * 100 + 10 * 20 / 3) / 0.5 + 2 * 100 / 0.25
    assert p["hours_baseline"] * 3600 == pytest.approx(8 * fold_base + full_base)


def test_a_short_run_writes_rates_projections_and_speed_variants(tmp_path, capsys):
    out = tmp_path / "bench.json"
    assert bench.main(["--quick", "--seconds", "0.05", "--models", "BernoulliMLPVAE",
                       "--group", "2", "--device", "cpu", "--compile", "default", "--tf32",
                       "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    cpu = report["devices"]["cpu"]
    rates = cpu["rates"]["BernoulliMLPVAE"]
    assert set(rates) == set(bench.RATES) and all(v > 0 for v in rates.values())
    assert set(cpu["projections"]) == {"bmnist_lr3", "bmnist_lr4"}
    assert list(cpu["variants"]) == ["compile=default"]  # TF32 is measured on CUDA only
    variant = cpu["variants"]["compile=default"]["rates"]["BernoulliMLPVAE"]
    assert variant["is_one"] == rates["is_one"] and variant["train_one"] > 0
    printed = capsys.readouterr().out
    assert "BernoulliMLPVAE" in printed and "training with compile=default" in printed


def test_unavailable_device_is_a_clear_error(tmp_path, capsys):
    import torch
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    assert bench.main(["--device", "cuda", "--out", str(tmp_path / "b.json")]) == 2
    assert "device cuda is not available" in capsys.readouterr().err

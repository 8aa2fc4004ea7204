"""The authors' method as an option of every experiment: their folds (SyncRNG), fresh
evaluation noise for every model, whole-batch flips; recorded in each result file, never mixed."""
import gzip
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from memo.config import experiments, splits
from memo.data import preprocess
from memo.files import results
from memo.score import summary
from test_ensemble import _compare_group_with_jobs, _experiment, _quiet, _read

FIXTURES = Path(__file__).parent / "fixtures" / "authors"


@pytest.mark.parametrize("n", [60000, 50000, 162770])
def test_authors_splits_reproduce_their_fold_assignment(n):
    with np.load(FIXTURES / "authors_folds.npz") as z:
        theirs = z[f"fold_of_N{n}"]                                   # (L, n) fold of example i
    for r in range(theirs.shape[0]):
        ours = np.empty(n, dtype=np.int64)
        for k, block in enumerate(splits.folds(n, 10, 42, r, "authors")):
            ours[block] = k
        np.testing.assert_array_equal(ours, theirs[r])


def test_authors_held_out_fold_matches_their_result_file():
    with gzip.open(FIXTURES / "BinarizedMNIST_BernoulliMLPVAE_512-256-16_seed42_cv_repeat0_fold0"
                   ".json.gz", "rt") as f:
        theirs = json.load(f)["results"]["logpxs"]["2"]
    train, test = splits.train_test_indices(60000, 10, 42, 0, 0, "authors")
    assert sorted(map(int, theirs["test"])) == test.tolist()
    assert sorted(map(int, theirs["train"])) == train.tolist()


def test_the_paper_experiments_use_the_authors_method_and_the_demo_ours():
    for name in experiments.PAPER_EXPERIMENTS:
        assert experiments.get(name).method == experiments.AUTHORS_METHOD
    assert experiments.get(experiments.DEMO_EXPERIMENT).method == {
        "splits": "ours", "eval_noise": "fixed", "flip": "image"}
    assert experiments.get("bmnist_lr3").directory == "binarized_mnist_extra_lr3"
    with pytest.raises(experiments.SettingsError, match="eval_noise = 'new'"):
        experiments.Experiment(name="x", data="fashion", model="BernoulliMLPVAE", latent_dim=2,
                               lr=1e-3, epochs=1, eval_every=1, n_is=1, eval_noise="new")


def test_batch_flips_flip_all_images_or_none():
    x = torch.arange(2 * 3 * 4 * 4, dtype=torch.uint8).view(2, 3, 4, 4).repeat(8, 1, 1, 1)
    seen = set()
    for seed in range(20):
        g = torch.Generator().manual_seed(seed)
        y = preprocess.hflip_batch(x, g)
        flipped = (y == x.flip(-1)).flatten(1).all(1)
        kept = (y == x).flatten(1).all(1)
        assert flipped.all() or kept.all()
        seen.add(bool(flipped.all()))
    assert seen == {True, False}


def test_fresh_evaluation_noise_differs_between_draws_fixed_does_not():
    x = torch.full((3, 1, 8, 8), 128, dtype=torch.uint8)
    index = torch.arange(3)
    fixed = [preprocess.eval_inputs(x, index, True, 42) for _ in range(2)]
    assert torch.equal(*fixed)
    g = torch.Generator().manual_seed(0)
    a, b = (preprocess.eval_inputs(x, index, True, 42, g) for _ in range(2))
    assert not torch.equal(a, b)
    assert 0.3 < float(a.mean()) < 0.7  # Bernoulli(128/255)


def test_grouped_training_equals_one_at_a_time_with_the_authors_method(tmp_path, monkeypatch):
    exp = _experiment(tmp_path, monkeypatch, n=61, epochs=2, eval_every=2, hflip=True,
                      **experiments.AUTHORS_METHOD)
    jobs = [experiments.Job(0, k) for k in range(3)] + [experiments.FULL_JOB]
    _compare_group_with_jobs(tmp_path, exp, jobs, rtol=1e-5, atol=1e-3)
    meta = _read(tmp_path / "one", exp, jobs[0])["meta"]
    assert meta["method"] == experiments.AUTHORS_METHOD
    assert meta["trainer_params"] == {"hflip": True}
    assert meta["model"] == "BernoulliMLPVAE_512-256-4" and meta["num_feature"] is None


def test_fresh_and_fixed_noise_give_other_values_from_the_same_training(tmp_path, monkeypatch):
    from memo.train import runner
    fixed = _experiment(tmp_path, monkeypatch, n=40, epochs=1, eval_every=1)
    import dataclasses
    fresh = dataclasses.replace(fixed, eval_noise="fresh")
    job = experiments.Job(0, 0)
    a = runner.run_job(fixed, job, tmp_path / "a", log=_quiet)
    b = runner.run_job(fresh, job, tmp_path / "b", log=_quiet)
    assert a["losses"]["train"] == b["losses"]["train"]        # training is the same
    assert a["logpxs"]["1"]["test"] != b["logpxs"]["1"]["test"]  # evaluation inputs are not


def test_a_summary_refuses_to_mix_methods(tmp_path, monkeypatch):
    from memo.train import runner
    exp = _experiment(tmp_path, monkeypatch, n=30, epochs=1, eval_every=1, folds=2)
    import dataclasses
    other = dataclasses.replace(exp, eval_noise="fresh")
    for job in exp.jobs():
        runner.run_job(other if job == experiments.Job(0, 1) else exp, job, tmp_path,
                     log=_quiet)
    paths = [results.job_files(exp, job, tmp_path).result for job in exp.jobs()]
    with pytest.raises(summary.SummaryError, match="mixed methods"):
        summary.summarize(paths, progress=False, n_boot=10)

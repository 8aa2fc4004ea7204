"""The authors' published results as they are: their archive's layout (their own checksum list)
unzipped into results/ trains nothing, summarizes, and is checked by results.sha256."""
import gzip
import json
import re
from pathlib import Path

import numpy as np

from memo.config import experiments, splits
from memo.files import results
from memo.score import summary
from test_make import run_make

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = Path(__file__).parent / "fixtures" / "authors"
N = 20  # examples of the planted MNIST experiment: tiny files in the real format


def _authors_result(path: Path, rng) -> bytes:
    """A result file as the authors' memorization.py writes it, for N examples of BinarizedMNIST
    (their meta keys and conventions; logpxs every 5 epochs; their folds of N examples)."""
    m = re.search(r"_(cv_repeat(\d+)_fold(\d+)|full_repeat0)\.json\.gz$", path.name)
    full = m[2] is None
    run, fold = (0, None) if full else (int(m[2]), int(m[3]))
    if full:
        train, test = np.arange(N), np.arange(0)
    else:
        train, test = splits.train_test_indices(N, 10, 42, run, fold, "authors")
    meta = {"batch_size": 64, "dataset": "BinarizedMNIST", "epochs": 100, "fold_idx": fold,
            "img_dim": 32, "latent_dim": 16, "learning_rate": 0.001,
            "mode": "full" if full else "split-cv", "model": "BernoulliMLPVAE_512-256-16",
            "num_feature": None, "num_iw_samples": 256, "run": run, "seed": 42,
            "trainer_params": {}}
    logpxs = {str(e): {"train": {str(i): float(-100 - rng.random()) for i in train},
                       "test": {str(i): float(-105 - rng.random()) for i in test}}
              for e in range(5, 101, 5)}
    content = {"meta": meta, "results": {"logpxs": logpxs,
                                          "losses": {"train": [100.0] * 100, "test": [101.0] * 100}}}
    return gzip.compress(json.dumps(content).encode())


def _plant_archive(root: Path) -> list[str]:
    """Every path of the authors' checksum list under root; the MNIST lr 1e-3 result files in
    their real format, every other file a placeholder (Make only looks at names there)."""
    paths = [line.split("  ", 1)[1] for line in (FIXTURES / "results.sha256").read_text().splitlines()]
    rng = np.random.default_rng(0)
    for p in paths:
        f = root / p
        f.parent.mkdir(parents=True, exist_ok=True)
        real = "binarized_mnist_extra_lr3/results/" in p
        f.write_bytes(_authors_result(f, rng) if real else b"")
    return paths


def test_the_shipped_checksum_list_is_the_authors(tmp_path):
    assert (ROOT / "results.sha256").read_bytes() == (FIXTURES / "results.sha256").read_bytes()
    paths = _plant_archive(tmp_path)
    assert len(paths) == 407
    # our file names are theirs: every result file and checkpoint of the paper's experiments
    ours = set()
    for name in experiments.PAPER_EXPERIMENTS:
        exp = experiments.get(name)
        for job in exp.jobs():
            files = results.job_files(exp, job, "results")
            ours.add(files.result.as_posix())
            if job.full and exp.data != "cifar10":  # their archive has no CIFAR-10 checkpoint
                ours.add(files.checkpoint.as_posix())
    assert ours == set(paths)


def test_published_results_plan_no_training_and_summarize(tmp_path):
    _plant_archive(tmp_path)
    res, ana = tmp_path / "results", tmp_path / "analysis"
    common = [f"RESULTS={res}", f"ANALYSIS={ana}", f"PLAN={tmp_path / 'build' / 'plan.mk'}"]
    rc, out = run_make("-n", "summaries", "analysis", *common)
    assert rc == 0, out
    assert "memorization.py" not in out  # nothing is trained
    for name in experiments.PAPER_EXPERIMENTS:
        assert f"summarize.py --experiment {name} " in out
    nn = set(re.findall(r"nearest_neighbours\.py --experiment (\w+)", out))
    assert nn == {"bmnist_lr3", "bmnist_lr4", "celeba"}  # no CIFAR-10 checkpoint, no rho

    # the summary really reads their files (labels need MNIST, which is not here: -1)
    rc, out = run_make("summary-bmnist_lr3", *common)
    assert rc == 0, out
    s = summary.load(ana / "bmnist_lr3.npz")
    assert s.meta["experiment"] == "bmnist_lr3" and s.meta["method"]["splits"] == "authors"
    assert s.M.shape == (20, N) and np.isfinite(s.M).all()
    assert (ana / "bmnist_lr3.csv").exists()


def test_analysis_without_a_complete_experiment_is_one_line_and_fails(tmp_path):
    common = [f"RESULTS={tmp_path / 'results'}", f"ANALYSIS={tmp_path / 'analysis'}",
              f"PLAN={tmp_path / 'build' / 'plan.mk'}"]
    rc, out = run_make("analysis", *common)
    assert rc != 0
    lines = [line for line in out.splitlines() if line.strip()]
    assert len(lines) == 1 and "no experiment has all its result files" in lines[0], out
    assert not (tmp_path / "analysis").exists()


def test_checksums_never_overwrite_the_published_list(tmp_path):
    before = (ROOT / "results.sha256").read_bytes()
    for args in ([], ["CHECKSUMS=results.sha256"], [f"CHECKSUMS={ROOT / 'results.sha256'}"]):
        rc, out = run_make("checksums", f"RESULTS={tmp_path}", *args)
        assert rc != 0 and "never overwritten" in out and "CHECKSUMS=" in out
    assert (ROOT / "results.sha256").read_bytes() == before


def test_verify_checks_the_published_list_by_default_and_names_what_is_missing():
    rc, out = run_make("verify")
    if rc == 0:  # the published results are actually here
        assert "OK (407 files match results.sha256)" in out
    else:
        assert "FAILED" in out and "binarized_mnist_extra_lr3" in out


def test_figures_and_the_report_never_train(tiny_experiment, tmp_path):
    """A summary whose result files are gone (moved, or deleted to retrain) is drawn as it is."""
    exp_file, _ = tiny_experiment
    common = [f"RESULTS={tmp_path / 'empty'}", f"ANALYSIS={tmp_path / 'analysis'}",
              f"EXPERIMENTS_FILE={exp_file}", f"PLAN={tmp_path / 'build' / 'plan.mk'}"]
    for goal in ("figures", "report", "figures-tiny"):
        rc, out = run_make("-n", goal, *common)
        assert "memorization.py" not in out, out
    rc, out = run_make("-n", "summary-tiny", *common)  # a summary itself still trains what is missing
    assert rc == 0 and len(re.findall(r"memorization\.py", out)) == 7

"""Result files (the authors' schema) and summaries: round trips, exact scores, refusals."""
import gzip
import json
import math

import numpy as np
import pytest

import summarize as summarize_cli
from memo.config import experiments, naming, splits
from memo.files import results
from memo.score import summary

PREFIX = "BinarizedMNIST_BernoulliMLPVAE_512-256-16"


def authors_file(path, repeat, fold, logpxs, mode="split-cv", seed=42, losses=None):
    """A result file with exactly the authors' keys (no extras, no ESS)."""
    meta = {"batch_size": 64, "dataset": "BinarizedMNIST", "epochs": 2, "fold_idx": fold,
            "img_dim": 32, "latent_dim": 16, "learning_rate": 0.001, "mode": mode,
            "model": "BernoulliMLPVAE", "num_feature": None, "num_iw_samples": 256,
            "run": repeat, "seed": seed, "trainer_params": {}}
    content = {"meta": meta, "results": {"logpxs": logpxs, "losses": losses or
                                         {"train": [1.0, 0.5], "test": [1.1, 0.7]}}}
    with gzip.open(path, "wt") as f:
        json.dump(content, f)
    return path


def make_experiment(tmp_path, n=13, folds=3, repeats=2, seed=42, value=None):
    """Write authors'-schema files for every (repeat, fold) and the full model.

    log p of example i under model (r, k) at epoch e is value(i, r, k, e, held_out)."""
    value = value or (lambda i, r, k, e, out: -10.0 - i - 0.1 * r - 0.01 * k - e - 3 * out)
    d = tmp_path / "results" / "exp" / "results"
    d.mkdir(parents=True)
    paths = []
    for r in range(repeats):
        for k in range(folds):
            tr, te = splits.train_test_indices(n, folds, seed, r, k)
            logpxs = {str(e): {"train": {str(i): value(i, r, k, e, 0) for i in tr},
                               "test": {str(i): value(i, r, k, e, 1) for i in te}} for e in (1, 2)}
            paths.append(authors_file(d / f"{PREFIX}_seed{seed}_cv_repeat{r}_fold{k}.json.gz",
                                      r, k, logpxs))
    full = authors_file(d / f"{PREFIX}_seed{seed}_full_repeat0.json.gz", 0, None,
                        {"2": {"train": {str(i): -1.0 for i in range(n)}, "test": {}}}, mode="full")
    return paths, full


def test_result_file_round_trip_is_atomic_and_exact(tmp_path):
    path = tmp_path / "a" / f"{PREFIX}_seed42_cv_repeat0_fold1.json.gz"
    meta = {"dataset": "BinarizedMNIST", "model": "BernoulliMLPVAE", "seed": 42, "mode": "split-cv",
            "run": 0, "fold_idx": 1}
    res = {"logpxs": {"5": {"train": {"0": -1.5, "2": -3.25}, "test": {"1": -7.0}}},
           "losses": {"train": [3.0], "test": [4.0]}, "ess": {"5": {"train": {}, "test": {}}}}
    results.write_result(path, meta, res)
    assert results.read_result(path) == {"meta": meta, "results": res}
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temporary left behind
    first = path.read_bytes()
    results.write_result(path, meta, res)
    assert path.read_bytes() == first  # byte-identical: no timestamp in the gzip header


def test_names_parse_back():
    job = experiments.Job(3, 7)
    s = naming.file_stem(experiments.get("bmnist_lr3"), job)
    assert s == f"{PREFIX}_seed42_cv_repeat3_fold7"
    assert naming.parse_stem(s + ".json.gz") == (PREFIX, 42, job)
    assert experiments.Job.parse("full_repeat0").full


def test_one_function_names_every_file_of_a_job():
    exp = experiments.get("bmnist_lr3")
    files = results.job_files(exp, experiments.FULL_JOB, "res")
    stem = f"{PREFIX}_seed42_full_repeat0"
    base = "res/binarized_mnist_extra_lr3"  # the authors' directory name
    assert files.result.as_posix() == f"{base}/results/{stem}.json.gz"
    assert files.resume.as_posix() == f"{base}/checkpoints/{stem}_resume.pt"
    assert files.checkpoint.as_posix() == f"{base}/checkpoints/{stem}_epoch100.params"
    assert [j.tag for j in exp.jobs()][:2] == ["cv_repeat0_fold0", "cv_repeat0_fold1"]
    assert all(experiments.Job.parse(j.tag) == j for j in exp.jobs())


def test_corrupt_and_truncated_files_are_refused_by_name(tmp_path):
    paths, _ = make_experiment(tmp_path)
    blob = paths[0].read_bytes()
    paths[0].write_bytes(blob[: len(blob) // 2])
    with pytest.raises(results.ResultFileError, match=paths[0].name):
        results.read_result(paths[0])
    paths[1].write_bytes(gzip.compress(b'{"meta": {}}'))
    with pytest.raises(results.ResultFileError, match="schema"):
        results.read_result(paths[1])


def test_scores_are_exact_on_known_values(tmp_path):
    n, folds, repeats = 13, 3, 2
    paths, full = make_experiment(tmp_path, n, folds, repeats)
    s = summary.summarize(paths + [full], progress=False)
    assert list(s.epochs) == [1, 2]
    for i in range(n):
        for ei, e in enumerate((1, 2)):
            ins, outs = [], []
            for r in range(repeats):
                for k in range(folds):
                    held = i in splits.train_test_indices(n, folds, 42, r, k)[1]
                    (outs if held else ins).append(-10.0 - i - 0.1 * r - 0.01 * k - e - 3 * held)
            lme = lambda a: math.log(np.mean(np.exp(a)))
            assert s.U[ei, i] == pytest.approx(lme(ins), abs=1e-12)
            assert s.V[ei, i] == pytest.approx(lme(outs), abs=1e-12)
            assert s.M[ei, i] == pytest.approx(lme(ins) - lme(outs), abs=1e-12)
    assert (s.n_in == repeats * (folds - 1)).all() and (s.n_out == repeats).all()
    assert list(s.full_losses_train) == [1.0, 0.5]
    assert np.isnan(s.ess_in).all()  # the authors' files carry no ESS


def test_summarize_refuses_missing_folds_and_lists_them(tmp_path):
    paths, _ = make_experiment(tmp_path)
    paths[4].unlink()
    with pytest.raises(summary.SummaryError, match="repeat 1 fold 1"):
        summary.summarize([p for p in paths if p.exists()], progress=False)


def test_summarize_refuses_mixed_seeds(tmp_path):
    paths, _ = make_experiment(tmp_path)
    c = results.read_result(paths[2])
    c["meta"]["seed"] = 7
    results.write_result(paths[2], c["meta"], c["results"])
    with pytest.raises(summary.SummaryError, match="seed"):
        summary.summarize(paths, progress=False)


def test_cli_writes_npz_and_csv_and_fails_cleanly(tmp_path, capsys):
    paths, full = make_experiment(tmp_path)
    out = tmp_path / "analysis" / "exp.npz"
    assert summarize_cli.main(["--result-files", *map(str, paths + [full]), "-o", str(out),
                               "--n-boot", "50", "--data-root", str(tmp_path / "nodata")]) == 0
    loaded = summary.load(out)
    assert loaded.M.shape == (2, 13) and loaded.meta["folds"] == 3
    assert np.isfinite(loaded.M_se).all()
    csv = out.with_suffix(".csv").read_text().splitlines()
    assert csv[0].startswith("index,label,U,V,M") and len(csv) == 14
    paths[0].write_bytes(b"garbage")
    assert summarize_cli.main(["--result-files", *map(str, paths), "-o", str(out)]) == 1
    assert paths[0].name in capsys.readouterr().err


def test_summary_round_trips_through_its_file(tmp_path):
    paths, full = make_experiment(tmp_path)
    s = summary.summarize(paths + [full], progress=False, n_boot=50)
    s.labels = np.arange(13) % 10
    out = tmp_path / "analysis" / "exp.npz"
    summary.save(s, out)
    loaded = summary.load(out)
    assert loaded.path == out and loaded.name == "exp" and loaded.meta == s.meta
    for key in summary.ARRAYS:
        a, b = np.asarray(getattr(s, key)), np.asarray(getattr(loaded, key))
        assert a.dtype == b.dtype and a.shape == b.shape, key
        np.testing.assert_array_equal(a, b, err_msg=key)
    assert loaded.repeats == 2 and loaded.n == 13
    with np.load(out) as z:
        assert z.files == [*summary.ARRAYS, "meta"]   # the keys, in the order of earlier files

"""One training job through the CLI: result files, resume, clear errors."""
import numpy as np
import pytest
import torch

import memorization
from memo.config import experiments
from memo.data import preprocess
from memo.files import results
from memo.train import progress


def _args(tmp_path, job="cv_repeat0_fold1", *extra):
    return ["--experiment", "tiny", "--job", job, "--results-dir", str(tmp_path / "res"),
            "--device", "cpu", "--threads", "1", *extra]


def _result(tmp_path, job):
    return results.read_result(next((tmp_path / "res" / "tiny" / "results").glob(f"*_{job}.json.gz")))


def test_job_writes_the_authors_schema_plus_ess(tiny_experiment, tmp_path):
    assert memorization.main(_args(tmp_path)) == 0
    c = _result(tmp_path, "cv_repeat0_fold1")
    meta = c["meta"]
    for key in results.AUTHOR_META_KEYS:
        assert key in meta
    assert meta["mode"] == "split-cv" and meta["run"] == 0 and meta["fold_idx"] == 1
    logpxs = c["results"]["logpxs"]
    assert sorted(logpxs, key=int) == ["2", "3"]
    tr, te = logpxs["3"]["train"], logpxs["3"]["test"]
    assert len(tr) == 40 and len(te) == 20 and not set(tr) & set(te)
    assert set(c["results"]["ess"]["3"]["train"]) == set(tr)
    ess = np.array(list(c["results"]["ess"]["3"]["train"].values()))
    assert ((ess >= 1) & (ess <= 8 + 1e-9)).all()
    assert len(c["results"]["losses"]["train"]) == 3 == len(c["results"]["losses"]["test"])


def test_one_result_line_per_model_and_epoch_lines_when_verbose(tiny_experiment, tmp_path,
                                                                 capsys):
    assert memorization.main(_args(tmp_path)) == 0
    quiet = capsys.readouterr().out.splitlines()
    assert quiet[0].startswith("[tiny cv_repeat0_fold1] done, epoch 3/3 loss train ")
    assert " | mean log p in " in quiet[0] and len(quiet) == 2 and quiet[1].startswith("wrote ")
    assert memorization.main(_args(tmp_path, "cv_repeat1_fold0", "--verbose")) == 0
    loud = capsys.readouterr().out.splitlines()
    assert [line.split(" loss")[0] for line in loud[:4]] == [
        "[tiny cv_repeat1_fold0] epoch 1/3", "[tiny cv_repeat1_fold0] epoch 2/3",
        "[tiny cv_repeat1_fold0] epoch 3/3", "[tiny cv_repeat1_fold0] done, epoch 3/3"]
    numbers = [line.split(" loss")[1].rsplit(" (", 1)[0] for line in loud[2:4]]
    assert numbers[0] == numbers[1]   # the result line repeats the last epoch's numbers


@pytest.mark.parametrize("makeflags, disable", [
    ("", None), ("k", None), ("-j1", None), ("-j4 --jobserver-auth=3,4", True), ("-j", True)])
def test_progress_bars_are_off_beside_other_make_jobs(monkeypatch, makeflags, disable):
    monkeypatch.setenv("MAKEFLAGS", makeflags)
    assert progress.disabled() is disable   # None: a bar when stderr is a terminal


def test_full_model_keeps_its_final_checkpoint(tiny_experiment, tmp_path):
    assert memorization.main(_args(tmp_path, "full_repeat0")) == 0
    c = _result(tmp_path, "full_repeat0")
    assert c["meta"]["mode"] == "full" and len(c["results"]["logpxs"]["3"]["train"]) == 60
    assert len(c["results"]["losses"]["test"]) == 3  # the npz's x_test
    ckpt = list((tmp_path / "res" / "tiny" / "checkpoints").glob("*_full_repeat0_epoch3.params"))
    assert len(ckpt) == 1
    state = torch.load(ckpt[0], weights_only=True)
    assert "_mu.weight" in state


def test_interrupted_job_resumes_to_identical_numbers(tiny_experiment, tmp_path):
    assert memorization.main(_args(tmp_path)) == 0
    path = next((tmp_path / "res" / "tiny" / "results").glob("*.json.gz"))
    first = results.read_result(path)
    path.unlink()
    assert memorization.main(_args(tmp_path, "cv_repeat0_fold1", "--stop-after", "2")) == 3
    assert not path.exists()
    assert list((tmp_path / "res" / "tiny" / "checkpoints").glob("*_resume.pt"))
    assert memorization.main(_args(tmp_path)) == 0
    assert results.read_result(path) == first
    assert not list((tmp_path / "res" / "tiny" / "checkpoints").glob("*_resume.pt"))


def test_nan_loss_aborts_with_the_epoch_and_writes_nothing(tiny_experiment, tmp_path, monkeypatch,
                                                            capsys):
    real = preprocess.train_inputs
    monkeypatch.setattr(preprocess, "train_inputs",
                        lambda *a, **k: real(*a, **k) * float("nan"))
    assert memorization.main(_args(tmp_path)) == 1
    err = capsys.readouterr().err
    assert "nan" in err and "epoch 1" in err and "Traceback" not in err
    assert not list((tmp_path / "res").rglob("*.json.gz"))


def test_unknown_names_fail_with_the_valid_choices(tiny_experiment, tmp_path, capsys):
    assert memorization.main(["--experiment", "nope", "--job", "full_repeat0"]) == 2
    assert "bmnist_lr3" in capsys.readouterr().err
    assert memorization.main(_args(tmp_path, "full_repeat0", "--model", "Foo")) == 2
    assert "BernoulliMLPVAE" in capsys.readouterr().err
    assert memorization.main(_args(tmp_path, "full_repeat0", "--data", "mnist3")) == 2
    assert "npz:PATH" in capsys.readouterr().err


def test_missing_data_names_the_files_and_the_fix(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("DATA_ROOT", str(tmp_path / "empty"))
    assert memorization.main(["--experiment", "cifar10", "--job", "full_repeat0",
                              "--results-dir", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert "data_batch_1" in err and str(tmp_path / "empty") in err and "Traceback" not in err


def test_experiments_file_errors_are_clear(tmp_path, monkeypatch):
    bad = tmp_path / "e.json"
    bad.write_text('{"x": {"data": "fashion", "colour": 1}}')
    monkeypatch.setenv("EXPERIMENTS_FILE", str(bad))
    with pytest.raises(experiments.UnknownExperimentError, match="colour"):
        experiments.get("x")


def test_resume_checkpoint_from_other_settings_is_refused(tiny_experiment, tmp_path, capsys):
    assert memorization.main(_args(tmp_path, "cv_repeat0_fold1", "--stop-after", "1")) == 3
    assert memorization.main(_args(tmp_path, "cv_repeat0_fold1", "--lr", "0.01")) == 1
    err = capsys.readouterr().err
    assert "other settings" in err and "lr" in err and "delete it" in err


def test_resume_checkpoint_from_another_device_is_refused(tiny_experiment, tmp_path, capsys):
    assert memorization.main(_args(tmp_path, "cv_repeat0_fold1", "--stop-after", "1")) == 3
    resume = next((tmp_path / "res" / "tiny" / "checkpoints").glob("*_resume.pt"))
    state = torch.load(resume, weights_only=False)
    assert state["generator_device"] == "cpu"
    state["generator_device"] = "cuda"  # as a GPU run would have written it
    torch.save(state, resume)
    assert memorization.main(_args(tmp_path, "cv_repeat0_fold1")) == 1
    err = capsys.readouterr().err
    assert "written by a run on cuda" in err and "resume it on cuda" in err
    assert "Traceback" not in err

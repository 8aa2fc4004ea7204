"""Careless and hostile inputs: bad settings, crafted or broken checkpoints, stale results,
interrupted jobs. Each gives one clear line and never runs code from a file."""
import json
import os

import pytest
import torch

import memorization
import nearest_neighbours
import summarize
from memo.train import checkpoints, training
from memo.train import runner
from memo.config import experiments
from memo import fileio
from memo.files import results


def _args(tmp_path, *extra, job="cv_repeat0_fold1"):
    return ["--experiment", "tiny", "--job", job, "--results-dir", str(tmp_path / "res"),
            "--device", "cpu", "--threads", "1", *extra]


def _one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err
    lines = err.splitlines()
    assert len(lines) == 1, err
    return lines[0]


class _Payload:
    """Unpickling this runs `open(marker, "w")`: what a crafted file would do."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (eval, (f"open({self.marker!r}, 'w').close() or 0",))


def _plant(path, marker, wrap=lambda p: p):
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(wrap(_Payload(marker)), path)


#----------------------------------------------------------------------------
# settings

@pytest.mark.parametrize("flags, field, allowed", [
    (["--epochs", "0"], "epochs", "integer >= 1"),
    (["--folds", "1"], "folds", "integer >= 2"),
    (["--eval-every", "0"], "eval_every", "from 1 to epochs = 3"),
    (["--eval-every", "4"], "eval_every", "from 1 to epochs = 3"),
    (["--n-is", "0"], "n_is", "integer >= 1"),
    (["--lr", "-1"], "lr", "> 0"),
    (["--stop-after", "0"], "--stop-after", "from 1 to epochs = 3"),
    (["--stop-after", "-5"], "--stop-after", "from 1 to epochs = 3"),
])
def test_every_bad_setting_is_one_line_before_any_work(tiny_experiment, tmp_path, capsys, flags,
                                                       field, allowed):
    assert memorization.main(_args(tmp_path, *flags)) == 2
    line = _one_error_line(capsys)
    assert field in line and allowed in line
    assert not (tmp_path / "res").exists()  # nothing trained, nothing written


@pytest.mark.parametrize("content, words", [
    ({"tiny": {"latent_dim": "eight"}}, ["latent_dim = 'eight'", "integer >= 1"]),
    ([{"name": "tiny"}], ["expected a JSON object", "list"]),
    ({"tiny": 5}, ["must be an object"]),
])
def test_a_bad_experiments_file_is_one_line(tiny_experiment, tmp_path, capsys, content, words):
    exp_file, npz = tiny_experiment
    if isinstance(content, dict) and isinstance(content.get("tiny"), dict):
        base = json.loads(exp_file.read_text())["tiny"]
        content = {"tiny": {**base, **content["tiny"]}}
    exp_file.write_text(json.dumps(content))
    assert memorization.main(_args(tmp_path)) == 2
    line = _one_error_line(capsys)
    assert str(exp_file) in line and all(w in line for w in words)


def test_the_table_checks_each_field():
    with pytest.raises(experiments.SettingsError) as e:
        experiments.Experiment(name="x y", data="fashion", model="BernoulliMLPVAE",
                               latent_dim=0, lr=0.0, epochs=2, eval_every=3, n_is=1, folds=1,
                               hflip="no")
    lines = str(e.value).splitlines()
    assert [line.split(": ")[1].split(" =")[0] for line in lines] == [
        "name", "latent_dim", "folds", "eval_every", "lr", "hflip"]
    assert experiments.eval_epochs(10, 4) == [4, 8, 10]


#----------------------------------------------------------------------------
# checkpoints: never run code, one line naming the file

def test_a_crafted_resume_checkpoint_runs_no_code(tiny_experiment, tmp_path, capsys):
    exp = experiments.get("tiny")
    resume = results.job_files(exp, experiments.Job(0, 1), tmp_path / "res").resume
    marker = tmp_path / "marker"
    _plant(resume, marker, wrap=lambda p: {"model": p, "optimizer": {}, "generator": None,
                                           "history": {}, "epoch": 1})
    assert memorization.main(_args(tmp_path)) == 1
    line = _one_error_line(capsys)
    assert str(resume) in line and "refused" in line
    assert not marker.exists()
    # the control: the same file does run its payload when loaded without weights_only
    torch.load(resume, weights_only=False)
    assert marker.exists()


def test_a_truncated_resume_checkpoint_is_one_line_naming_it(tiny_experiment, tmp_path, capsys):
    assert memorization.main(_args(tmp_path, "--stop-after", "1")) == 3
    resume = results.job_files(experiments.get("tiny"), experiments.Job(0, 1),
                               tmp_path / "res").resume
    resume.write_bytes(resume.read_bytes()[:300])
    capsys.readouterr()
    assert memorization.main(_args(tmp_path)) == 1
    line = _one_error_line(capsys)
    assert str(resume) in line and "truncated or corrupt" in line and "delete it" in line


def test_a_crafted_full_model_checkpoint_runs_no_code(tiny_experiment, tmp_path, capsys):
    exp = experiments.get("tiny")
    files = results.job_files(exp, experiments.FULL_JOB, tmp_path / "res")
    marker = tmp_path / "marker"
    _plant(files.checkpoint, marker, wrap=lambda p: {"mu.weight": p})
    rc = nearest_neighbours.main(["--experiment", "tiny", "--results-dir", str(tmp_path / "res"),
                                  "--device", "cpu", "-o", str(tmp_path / "nn.npz")])
    assert rc == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err and str(files.checkpoint) in err and "refused" in err
    assert not marker.exists() and not (tmp_path / "nn.npz").exists()


def test_real_resume_files_load_with_weights_only(tiny_experiment, tmp_path):
    assert memorization.main(_args(tmp_path, "--stop-after", "2")) == 3
    resume = results.job_files(experiments.get("tiny"), experiments.Job(0, 1),
                               tmp_path / "res").resume
    state = torch.load(resume, weights_only=True)
    assert state["epoch"] == 2 and len(state["history"]["losses"]["train"]) == 2


#----------------------------------------------------------------------------
# interruptions and leftovers

def test_ctrl_c_is_one_line_and_keeps_the_checkpoint(tiny_experiment, tmp_path, capsys,
                                                      monkeypatch):
    assert memorization.main(_args(tmp_path, "--stop-after", "1")) == 3
    resume = results.job_files(experiments.get("tiny"), experiments.Job(0, 1),
                               tmp_path / "res").resume
    before = resume.read_bytes()

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt
    monkeypatch.setattr(training.OneModel, "train_epoch", interrupted)
    capsys.readouterr()
    assert memorization.main(_args(tmp_path)) == 130
    assert "interrupted" in _one_error_line(capsys)
    assert resume.read_bytes() == before


def test_the_next_run_of_a_job_removes_its_orphaned_temporary_files(tiny_experiment, tmp_path):
    files = results.job_files(experiments.get("tiny"), experiments.Job(0, 1), tmp_path / "res")
    orphans = [fileio.temporary_name(p) for p in (files.result, files.resume)]
    other = fileio.temporary_name(files.result.with_name("another.json.gz"))
    for p in orphans + [other]:
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(b"partial")
    assert memorization.main(_args(tmp_path)) == 0
    assert not any(p.exists() for p in orphans)
    assert other.exists()  # another job's file is not this job's business


def test_atomic_writes_leave_the_usual_permissions(tmp_path):
    old = os.umask(0o027)
    try:
        fileio.atomic_write_bytes(tmp_path / "f", b"x")
    finally:
        os.umask(old)
    assert (tmp_path / "f").stat().st_mode & 0o777 == 0o640


#----------------------------------------------------------------------------
# stale results

def test_results_made_under_other_settings_are_refused_by_the_summary(tiny_experiment, tmp_path,
                                                                      capsys):
    exp_file, _ = tiny_experiment
    exp = experiments.get("tiny")
    for job in exp.jobs():
        runner.run_job(exp, job, tmp_path / "res", log=lambda *a: None)
    paths = [str(results.job_files(exp, job, tmp_path / "res").result) for job in exp.jobs()]
    out = tmp_path / "s.npz"
    assert summarize.main(["--result-files", *paths, "-o", str(out), "--experiment", "tiny",
                           "--n-boot", "10"]) == 0
    spec = json.loads(exp_file.read_text())
    spec["tiny"]["lr"] = 1e-4
    exp_file.write_text(json.dumps(spec))
    capsys.readouterr()
    assert summarize.main(["--result-files", *paths, "-o", str(tmp_path / "t.npz"),
                           "--experiment", "tiny", "--n-boot", "10"]) == 1
    line = _one_error_line(capsys)
    assert "lr=0.001" in line and "lr=0.0001" in line and "tiny" in line and "delete" in line
    assert not (tmp_path / "t.npz").exists()


def test_the_authors_recorded_settings_are_compared():
    exp = experiments.get("bmnist_lr3")
    theirs = {"learning_rate": 1e-3, "epochs": 100, "num_iw_samples": 256, "batch_size": 64,
              "latent_dim": 16, "seed": 42, "dataset": "BinarizedMNIST"}
    assert results.settings_mismatches(theirs, exp) == []
    assert results.settings_mismatches({**theirs, "learning_rate": 1e-4}, exp) == [
        ("lr", 1e-4, 1e-3)]
    assert checkpoints.CheckpointError.__mro__[1] is ValueError


def test_no_job_is_trained_beside_results_of_other_settings(tiny_experiment, tmp_path, capsys):
    exp_file, _ = tiny_experiment
    assert memorization.main(_args(tmp_path)) == 0
    spec = json.loads(exp_file.read_text())
    spec["tiny"]["folds"] = 4
    exp_file.write_text(json.dumps(spec))
    capsys.readouterr()
    assert memorization.main(_args(tmp_path, job="cv_repeat0_fold3")) == 1
    line = _one_error_line(capsys)
    assert "folds=3" in line and "folds=4" in line and "delete" in line
    assert len(list((tmp_path / "res" / "tiny" / "results").glob("*.json.gz"))) == 1

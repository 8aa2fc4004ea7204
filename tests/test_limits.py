"""Names that cannot collide, settings within bounds, writes that stay inside their folder,
checkpoints checked before and after loading."""
from __future__ import annotations

import json
import zipfile
from pathlib import Path

import pytest
import torch

import analysis
import memorization
import summarize
from memo import models
from memo.config import experiments
from memo.files import results
from memo.train import checkpoints
from test_results_summary import make_experiment


def _spec(**kw):
    return dict(data="bmnist", model="BernoulliMLPVAE", latent_dim=4, lr=1e-3, epochs=3,
                eval_every=1, n_is=8, **kw)


@pytest.mark.parametrize("name", ["tiny_nn", "tiny_measures", "a_benchmark", "x_sweep",
                                  "x_controls", "x_flagged", "tiny\n", "../evil", ""])
def test_names_that_could_collide_are_refused(name):
    with pytest.raises(experiments.SettingsError, match="name = "):
        experiments.Experiment(name=name, **_spec())
    with pytest.raises(experiments.SettingsError, match="results_dir = "):
        experiments.Experiment(name="ok", results_dir="dir\n", **_spec())


@pytest.mark.parametrize("field, value", [("epochs", 10**9), ("n_is", 10**7),
                                          ("latent_dim", 10**7), ("folds", 10**6)])
def test_sizes_past_their_bounds_are_refused(field, value):
    with pytest.raises(experiments.SettingsError, match=f"{field} = {value} is not allowed"):
        experiments.Experiment(name="ok", **{**_spec(), field: value})
    with pytest.raises(experiments.SettingsError, match="n_is \\* latent_dim"):
        experiments.Experiment(name="ok", **{**_spec(), "n_is": 4096, "latent_dim": 512})


def test_a_user_experiment_cannot_take_a_built_in_name(tmp_path, monkeypatch):
    f = tmp_path / "mine.json"
    f.write_text(json.dumps({experiments.DEMO_EXPERIMENT: _spec()}))
    monkeypatch.setenv("EXPERIMENTS_FILE", str(f))
    with pytest.raises(experiments.UnknownExperimentError, match="built-in"):
        experiments.get(experiments.DEMO_EXPERIMENT)


def test_training_refuses_a_checkpoints_folder_leading_elsewhere(tiny_experiment, tmp_path,
                                                                 capsys):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    base = tmp_path / "res" / "tiny"
    base.mkdir(parents=True)
    (base / "checkpoints").symlink_to(elsewhere)
    args = ["--experiment", "tiny", "--job", "cv_repeat0_fold1", "--results-dir",
            str(tmp_path / "res"), "--device", "cpu", "--threads", "1"]
    assert memorization.main(args) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "outside" in err and "checkpoints" in err
    assert not any(elsewhere.iterdir())


def test_full_model_weights_are_checked_before_and_after_loading(tiny_experiment, tmp_path):
    exp = experiments.get("tiny")
    path = results.job_files(exp, experiments.FULL_JOB, tmp_path).checkpoint
    path.parent.mkdir(parents=True)
    model = models.of_experiment(exp, 1)
    with torch.no_grad():
        next(model.parameters()).fill_(float("nan"))
    checkpoints.save_weights(path, model)
    with pytest.raises(checkpoints.CheckpointError, match="non-finite weights"):
        checkpoints.load_full_model(exp, tmp_path, "cpu", 1)
    # a zip whose member inflates far past the model's tensors: refused from its header
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
        with z.open("archive/data/0", "w", force_zip64=True) as member:
            block = bytes(1 << 20)
            for _ in range(checkpoints.state_bytes(model) // len(block) + 1):
                member.write(block)
    assert path.stat().st_size < 1 << 20
    with pytest.raises(checkpoints.CheckpointError, match="refused before loading"):
        checkpoints.load_full_model(exp, tmp_path, "cpu", 1)


def _refused(rc, capsys, link) -> str:
    err = capsys.readouterr().err.strip()
    assert rc == 1 and len(err.splitlines()) == 1, err
    assert f"{link} leads to" in err and "outside" in err and "replace the link" in err
    return err


def test_writes_refuse_a_link_leading_outside_analysis_or_output(tmp_path, monkeypatch, capsys):
    """analysis/<exp>.npz and output/<exp> as links (an unpacked archive) would have the
    summary and the figures write elsewhere: refused in one line, the target untouched."""
    monkeypatch.chdir(tmp_path)
    paths, _ = make_experiment(tmp_path)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    precious = elsewhere / "exp.npz"
    precious.write_bytes(b"not yours")
    out = tmp_path / "analysis" / "exp.npz"
    out.parent.mkdir()
    out.symlink_to(precious)
    args = ["--result-files", *map(str, paths), "-o", str(out), "--n-boot", "10",
            "--data-root", str(tmp_path / "nodata")]
    _refused(summarize.main(args), capsys, out)
    assert precious.read_bytes() == b"not yours"
    assert sorted(p.name for p in elsewhere.iterdir()) == ["exp.npz"]
    assert [p.name for p in out.parent.iterdir()] == ["exp.npz"]   # no lock, no CSV

    out.unlink()   # the same run without the link writes its summary
    assert summarize.main(args) == 0
    capsys.readouterr()
    figures = tmp_path / "elsewhere" / "figures"
    figures.mkdir()
    (tmp_path / "output").mkdir()
    (tmp_path / "output" / "exp").symlink_to(figures)
    # the default folder (output/<exp>) and the one Make names (--out output/<exp>)
    for extra in ([], ["--out", "output/exp"]):
        rc = analysis.main(["quantiles", "analysis/exp.npz", "--no-latex", *extra])
        _refused(rc, capsys, Path("output") / "exp")
        assert not any(figures.iterdir())


def test_the_full_models_snapshots_are_checked_finite_too(tiny_experiment, tmp_path):
    """The other measures read the full model's weights at every evaluation epoch: a snapshot
    with a NaN is refused in one line naming it, as the final checkpoint is."""
    from memo.measures import measures
    exp = experiments.get("tiny")
    files = results.job_files(exp, experiments.FULL_JOB, tmp_path)
    files.checkpoint.parent.mkdir(parents=True)
    model = models.of_experiment(exp, 1)
    checkpoints.save_weights(files.checkpoint, model)
    snapshot = files.weights_at(exp.eval_epochs()[0])
    with torch.no_grad():
        next(model.parameters())[0].fill_(float("inf"))
    checkpoints.save_weights(snapshot, model)
    with pytest.raises(checkpoints.CheckpointError, match="non-finite weights") as e:
        measures._weights(exp, tmp_path, models.of_experiment(exp, 1))
    assert str(snapshot) in str(e.value) and len(str(e.value).splitlines()) == 1


def test_npz_images_past_the_memory_at_hand_are_one_line(tmp_path, monkeypatch):
    """A small npz inflating to more images than fit (a 2 MB file of 2.7 M zero images): the
    allocation that fails is said in one line with the sizes, not a traceback."""
    import numpy as np
    from memo import data
    from memo.data import npz

    def no_memory(images):
        raise RuntimeError("[enforce fail at alloc_cpu.cpp:127] DefaultCPUAllocator: can't "
                           "allocate memory: you tried to allocate 2764800000 bytes.")
    monkeypatch.setattr(npz, "pad_to", no_memory)
    path = tmp_path / "many.npz"
    np.savez_compressed(path, x=np.zeros((3000, 28, 28), np.uint8))
    with pytest.raises(ValueError, match="holds 3000 images of 28x28, 0.0 GiB once inflated") as e:
        data.load(f"npz:{path}")
    assert len(str(e.value).splitlines()) == 1 and "fewer images" in str(e.value)


def test_an_allocation_that_fails_ends_the_script_with_one_line(capsys):
    import cli

    def too_big():
        raise MemoryError()
    assert cli.run("summarize.py", too_big) == cli.FAILURE
    err = capsys.readouterr().err.strip()
    assert err.startswith("summarize.py: error: out of memory") and len(err.splitlines()) == 1


def test_a_write_on_a_full_or_read_only_disk_says_what_to_do():
    import errno

    import cli
    full = OSError(errno.ENOSPC, "No space left on device: writing results/x.json.gz")
    assert cli.message(full) == ("No space left on device: writing results/x.json.gz; free "
                                 "space on that disk, or write elsewhere")
    ro = OSError(errno.EROFS, "Read-only file system", "analysis/.x.npz.lock")
    assert cli.message(ro) == ("Read-only file system: analysis/.x.npz.lock; write elsewhere "
                               "(-o/--out, or RESULTS= and ANALYSIS= for make)")
    assert cli.message(OSError(errno.EIO, "Input/output error", "f")) == "Input/output error: f"


def test_npz_images_that_cannot_fit_are_refused_before_they_are_inflated(tmp_path, monkeypatch):
    """The cost of loading is known from the header (the array and its 32x32 copy): past the
    memory at hand the file is refused before a byte of it is inflated."""
    import numpy as np
    from memo import data, fileio
    from memo.data import npz

    path = tmp_path / "many.npz"
    np.savez_compressed(path, x=np.zeros((3000, 28, 28), np.uint8))
    assert npz._needed_bytes(path, "x") == 3000 * 28 * 28 + 128 + 3000 * 32 * 32   # .npy header 128

    def never(*args):
        raise AssertionError("inflated")
    monkeypatch.setattr(npz, "_npz_array", never)
    monkeypatch.setattr(fileio, "memory_at_hand", lambda: 3000 * (28 * 28 + 32 * 32))
    with pytest.raises(ValueError, match="holds 3000 images of 28x28") as e:
        data.load(f"npz:{path}")
    assert len(str(e.value).splitlines()) == 1


def test_the_memory_at_hand_heeds_the_address_space_limit():
    import subprocess
    import sys
    code = ("import resource, sys; sys.path.insert(0, 'scripts'); from memo import fileio; "
            "used = next(int(l.split()[1]) * 1024 for l in open('/proc/self/status') "
            "if l.startswith('VmSize:')); "
            "resource.setrlimit(resource.RLIMIT_AS, (used + 200 * 2**20, resource.RLIM_INFINITY)); "
            "print(fileio.memory_at_hand())")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       cwd=Path(__file__).resolve().parents[1])
    assert p.returncode == 0, p.stderr
    assert 0 < int(p.stdout) <= 200 * 2**20

"""A model of one's own through the pipeline (docs/models.md): the worked example in
examples/own_model trains (one model and a vectorized group), resumes and summarizes through
Make on tiny data, its full model loads from its checkpoint and samples; an unknown or
incomplete model is one clear line."""
import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import TINY, write_tiny_npz
from memo import models
from memo.config import experiments, naming
from memo.files import results
from memo.score import summary
from memo.train import checkpoints

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "own_model"
SPEC = "mixture:BernoulliMixture"


@pytest.fixture
def own_model(tmp_path, monkeypatch):
    """The example's model file beside an experiments file 'tinymix' on tiny npz data."""
    folder = tmp_path / "mine"
    folder.mkdir()
    shutil.copy(EXAMPLE / "mixture.py", folder / "mixture.py")
    npz = write_tiny_npz(tmp_path / "tiny.npz")
    spec = dict(TINY, data=f"npz:{npz}", model=SPEC, model_args={"components": 3}, repeats=1)
    exp_file = folder / "experiments.json"
    exp_file.write_text(json.dumps({"tinymix": spec}))
    monkeypatch.setenv("EXPERIMENTS_FILE", str(exp_file))
    return exp_file


def test_the_example_experiments_file_is_valid():
    table = experiments.load_user_experiments(EXAMPLE / "experiments.json")
    exp = table["mixture_demo"]
    assert exp.model == SPEC and exp.model_args == {"components": 20}
    assert naming.model_description(exp.model, exp.latent_dim, model_args=exp.model_args) \
        == "L1" + naming.args_tag({"components": 20})


def test_own_model_trains_as_group_resumes_summarizes_and_samples_through_make(own_model,
                                                                               tmp_path):
    res, ana, build = tmp_path / "res", tmp_path / "ana", tmp_path / "build"
    env = dict(os.environ, EXPERIMENTS_FILE=str(own_model))
    exp = experiments.get("tinymix")
    torch.set_num_threads(1)
    # the full model stops after epoch 1 (its resume checkpoint kept)...
    from memo.train import runner
    assert runner.run_job(exp, experiments.FULL_JOB, res, stop_after=1, log=lambda m: None) is None
    # ...Make trains the fold models three to a process and resumes the full model
    out = subprocess.run(["make", "--no-print-directory", "-j2", "summary-tinymix", "GROUP=3",
                          f"RESULTS={res}", f"ANALYSIS={ana}", f"EXPERIMENTS_FILE={own_model}",
                          f"PLAN={build / 'experiments.mk'}"], cwd=ROOT, env=env, text=True,
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=600)
    assert out.returncode == 0, out.stdout
    assert len(re.findall(r"memorization\.py .*--jobs", out.stdout)) == 1   # the group of folds
    assert "resuming after epoch 1" in out.stdout
    files = sorted((res / "tinymix" / "results").glob("*.json.gz"))
    assert [f.name for f in files] == sorted(results.job_files(exp, job, res).result.name
                                             for job in exp.jobs())
    assert all("_BernoulliMixture_L4-" in f.name for f in files)
    meta = results.read_result(files[0])["meta"]
    assert meta["settings"]["model_args"] == {"components": 3}
    s = summary.load(ana / "tinymix.npz")
    assert s.M.shape[-1] == 60 and np.isfinite(s.M).all()
    # an exact log p has no effective sample size: every ESS recorded is NaN
    ess = results.read_result(files[0])["results"]["ess"][str(exp.epochs)]
    values = [v for part in ess.values() for v in part.values()]
    assert len(values) == 60 and np.isnan(values).all()

    # the full model loads from its checkpoint through the interface and samples
    model = checkpoints.load_full_model(exp, res, "cpu", in_channels=1)
    assert type(model).__name__ == "BernoulliMixture" and model.logits.shape == (3, 1024)
    g = torch.Generator().manual_seed(0)
    x = model.sample(5, g, batch=2)
    assert x.shape == (5, 1, 32, 32) and 0 <= x.min() and x.max() <= 1
    assert torch.equal(x, model.sample(5, torch.Generator().manual_seed(0), batch=5))


def test_the_example_log_p_is_exact():
    """log p of every binary image of 4 pixels sums to 1 (the mixture normalizes)."""
    from importlib import util
    spec = util.spec_from_file_location("mixture_example", EXAMPLE / "mixture.py")
    module = util.module_from_spec(spec)
    spec.loader.exec_module(module)
    torch.manual_seed(0)
    model = module.BernoulliMixture(3, 1, size=2)
    grid = torch.tensor([[(i >> d) & 1 for d in range(4)] for i in range(16)],
                        dtype=torch.float32).view(16, 1, 2, 2)
    lp, ess = model.log_px(grid, 1)
    assert torch.logsumexp(lp.double(), 0).item() == pytest.approx(0.0, abs=1e-6)
    assert torch.isnan(ess).all()


def test_registry_refuses_an_unknown_name_naming_the_valid_ones():
    with pytest.raises(ValueError) as e:
        models.build("NoSuchVAE", 16, 1)
    assert "NoSuchVAE" in str(e.value) and "\n" not in str(e.value)
    for name in naming.MODEL_NAMES:
        assert name in str(e.value)
    assert set(models.MODELS) == set(naming.MODEL_NAMES)
    with pytest.raises(experiments.SettingsError, match="module.path:ClassName"):
        experiments.Experiment(name="x", data="fashion", model="not a name", latent_dim=2,
                               lr=1e-3, epochs=1, eval_every=1, n_is=1)
    with pytest.raises(experiments.SettingsError, match="model_args"):
        experiments.Experiment(name="x", data="fashion", model="BernoulliMLPVAE", latent_dim=2,
                               lr=1e-3, epochs=1, eval_every=1, n_is=1, model_args={"a": 1})


INCOMPLETE = '''
import torch
from memo.models.interface import Model

class NoLogP(Model):
    binary = True
    @classmethod
    def from_settings(cls, latent_dim, in_channels, norm="batch"):
        return cls()
    noise_shape = (0,)
    def loss(self, x, eps=None, generator=None):
        return x.flatten(1).sum(1)
    def sample(self, n, generator, batch=512):
        return torch.zeros(n, 1, 32, 32)
    def log_jacobian(self, x):
        return torch.zeros(len(x))

class Single(NoLogP):
    def log_px(self, x, n_samples, generator=None, chunk=None, eps=None):
        return self.loss(x), self.loss(x)

class NotAModel:
    pass

raise_here = None
'''


@pytest.mark.parametrize("spec, message", [
    ("incomplete:NoLogP", "does not implement log_px of the model interface"),
    ("incomplete:NotAModel", "is not a subclass of memo.models.interface.Model"),
    ("incomplete:Missing", "module incomplete ("),
    ("nosuchmodule:Thing", "cannot import module 'nosuchmodule'"),
    ("broken:Thing", "importing broken raised ZeroDivisionError"),
])
def test_a_model_that_cannot_serve_is_one_line(tmp_path, monkeypatch, spec, message):
    (tmp_path / "incomplete.py").write_text(INCOMPLETE)
    (tmp_path / "broken.py").write_text("1 / 0\n")
    monkeypatch.setenv("EXPERIMENTS_FILE", str(tmp_path / "experiments.json"))
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(models.interface.ModelImportError) as e:
        models.build(spec, 2, 1)
    assert message in str(e.value) and "\n" not in str(e.value)


def test_a_model_that_does_not_allow_a_group_is_refused_in_one_line(tmp_path, monkeypatch):
    (tmp_path / "incomplete.py").write_text(INCOMPLETE)
    monkeypatch.syspath_prepend(str(tmp_path))
    models.build("incomplete:Single", 2, 1)   # complete: builds
    with pytest.raises(ValueError,
                       match=r"does not train as a group .* use GROUP=1, one --job per process$"):
        models.refuse_group("incomplete:Single")
    models.refuse_group("BernoulliMLPVAE")
    with pytest.raises(models.interface.ModelImportError, match="does not take model_args"):
        models.build("incomplete:Single", 2, 1, model_args={"width": 3})


def test_private_training_refuses_parameters_opacus_cannot_see_in_one_line(own_model,
                                                                           tmp_path):
    """The example holds its parameters on the model itself: Opacus forms no per-example
    gradients there, so DP-SGD is refused before any file is written."""
    import dataclasses
    from memo.train import runner
    exp = dataclasses.replace(experiments.get("tinymix"), name="tinymixdp", dp={"epsilon": 10})
    with pytest.raises(ValueError) as e:
        runner.run_job(exp, experiments.Job(0, 0), tmp_path / "res", log=lambda m: None)
    assert "cannot train with dp: its parameters logits, mix belong to the model itself" \
        in str(e.value) and "\n" not in str(e.value)
    assert not list((tmp_path / "res").rglob("*.*"))

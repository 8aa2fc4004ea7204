"""The design a user experiment gets when its experiments file leaves out folds or repeats."""
import json

from memo.config import design, experiments


def _load(tmp_path, spec):
    path = tmp_path / "exps.json"
    fields = {"data": "fashion", "model": "BernoulliMLPVAE", "latent_dim": 2, "lr": 1e-3,
              "epochs": 2, "eval_every": 1, "n_is": 1}
    path.write_text(json.dumps({"mine": {**fields, **spec}}))
    return experiments.load_user_experiments(path)["mine"]


def test_omitted_folds_and_repeats_resolve_to_the_default_design(tmp_path):
    exp = _load(tmp_path, {})
    assert (exp.folds, exp.repeats) == (design.DEFAULT_FOLDS, design.DEFAULT_REPEATS) == (5, 2)
    assert len(exp.jobs()) == design.models(exp.folds, exp.repeats) == 11


def test_explicit_folds_and_repeats_are_kept(tmp_path):
    exp = _load(tmp_path, {"folds": 3, "repeats": 4})
    assert (exp.folds, exp.repeats) == (3, 4)
    assert len(exp.jobs()) == 13
    assert _load(tmp_path, {"repeats": 4}).folds == 5
    assert _load(tmp_path, {"folds": 10}).repeats == 2


def test_built_in_experiments_keep_their_designs():
    assert (experiments.get("cifar10").folds, experiments.get("cifar10").repeats) == (10, 10)
    assert experiments.get("fashion_planted").repeats == 4
    assert experiments.get("fashion_demo").folds == 5
    assert experiments.get("fashion_demo").repeats == 2

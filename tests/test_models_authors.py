"""Our models load the authors' checkpoints and reproduce their outputs; ours save in their layout.

The fixtures (tests/fixtures/authors/README.md) were written by the authors' code from their own
model classes. Outputs must agree to float32 rounding: observed differences are at most a few
float32 spacings (~4e-8 on mu/logvar, ~6e-8 on probabilities, ≤ 2.3e-7 relative on log p).
"""
from pathlib import Path

import numpy as np
import pytest
import torch

import nearest_neighbours
from memo.train import checkpoints
from memo.config import experiments
from memo import models
from memo.data import preprocess
from memo.files import results

FIXTURES = Path(__file__).parent / "fixtures" / "authors"
NAMES = ["BernoulliMLPVAE_512-256-4", "DiagonalGaussianDCVAE_NF4-L6",
         "ConstantGaussianDCVAE_NF4-L5"]
TOL = {"rtol": 1e-5, "atol": 1e-6}


def _reference(name):
    with np.load(FIXTURES / f"{name}_reference.npz") as f:
        return {k: f[k] for k in f.files}


def _checkpoint(name):
    return torch.load(FIXTURES / f"{name}.params", map_location="cpu", weights_only=True)


def _build(name, seed=0):
    ref = _reference(name)
    cls = models.MODELS[name.split("_")[0]]
    latent, channels = int(ref["latent_dim"]), int(ref["in_channels"])
    torch.manual_seed(seed)
    if cls.binary:
        return cls(latent_dim=latent, in_channels=channels, size=int(ref["img_dim"]))
    return cls(latent_dim=latent, in_channels=channels, nf=int(ref["num_feature"]))


@torch.no_grad()
def _outputs(model, ref):
    """Ours in the form of the authors' reference arrays."""
    x, z = torch.from_numpy(ref["x"]), torch.from_numpy(ref["z"])
    mu, logvar = model.encode(x)
    params = model.decode(z)
    if model.binary:
        raw = model.pixel_mean(z)                       # their decoder ends in Sigmoid, Unflatten
        log_p = model.log_likelihood(x, params)
    else:
        raw = model._decoder(z)                         # their decode(z): the raw channels
        log_p = model.log_likelihood(x, params) + preprocess.logit_to_pixel_log_jacobian(x)
    return {"mu": mu, "logvar": logvar, "decoder_output": raw, "log_pxz": log_p}


def _loaded(name):
    model = _build(name)
    models.load_weights(model, _checkpoint(name), FIXTURES / f"{name}.params")
    return model.eval()


@pytest.mark.parametrize("name", NAMES)
def test_our_layout_is_the_authors(name):
    ours, theirs = _build(name).state_dict(), _checkpoint(name)
    assert list(ours) == list(theirs)
    assert [tuple(v.shape) for v in ours.values()] == [tuple(v.shape) for v in theirs.values()]
    assert [v.dtype for v in ours.values()] == [v.dtype for v in theirs.values()]


@pytest.mark.parametrize("name", NAMES)
def test_their_checkpoint_reproduces_their_outputs(name):
    ref = _reference(name)
    out = _outputs(_loaded(name), ref)
    for key, value in out.items():
        assert value.shape == ref[key].shape, key
        np.testing.assert_allclose(value.numpy(), ref[key], **TOL, err_msg=key)


def test_mlp_logits_are_the_sigmoid_inputs_and_is_shapes_agree():
    name = NAMES[0]
    ref, model = _reference(name), _loaded(name)
    x, z = torch.from_numpy(ref["x"]), torch.from_numpy(ref["z"])
    with torch.no_grad():
        logits = model.decode(z)
        assert logits.shape == (4, 64)
        np.testing.assert_allclose(torch.sigmoid(logits).view(ref["x"].shape).numpy(),
                                   ref["decoder_output"], **TOL)
        # importance-sampling shapes (B, N, L) take the matrix-product path
        log_p = model.log_likelihood(x, model.decode(z[:, None].expand(4, 3, -1)))
    assert log_p.shape == (4, 3)
    np.testing.assert_allclose(log_p.numpy(), np.repeat(ref["log_pxz"][:, None], 3, 1), **TOL)


def test_dcvae_decode_splits_the_raw_channels():
    for name in NAMES[1:]:
        ref, model = _reference(name), _loaded(name)
        with torch.no_grad():
            params = model.decode(torch.from_numpy(ref["z"]))
        c = int(ref["in_channels"])
        np.testing.assert_array_equal(params[0].numpy(), ref["decoder_output"][:, :c])
        if isinstance(model, models.DiagonalGaussianDCVAE):
            np.testing.assert_array_equal(
                params[1].numpy(), np.maximum(ref["decoder_output"][:, c:], -7.0))
        else:
            assert params[1] is model.loggamma and params[1].item() != -2.0  # loaded, not init


def test_architecture_facts():
    for name in NAMES[1:]:
        model = _build(name)
        convs = [m for m in model.modules() if isinstance(m, (torch.nn.Conv2d,
                                                              torch.nn.ConvTranspose2d))]
        assert len(convs) == 9 and all(m.bias is None for m in convs)
    fresh = models.build("ConstantGaussianDCVAE", 32, in_channels=3)
    assert fresh.loggamma.item() == -2.0 and fresh.loggamma.requires_grad
    for name, latent in (("BernoulliMLPVAE", 16), ("DiagonalGaussianDCVAE", 64)):
        assert models.build(name, latent, in_channels=1 if latent == 16 else 3).latent_dim == latent


@pytest.mark.parametrize("name", NAMES)
def test_ours_round_trip_through_a_file(name, tmp_path):
    ref = _reference(name)
    model = _loaded(name)
    path = tmp_path / f"{name}.params"
    checkpoints.save_weights(path, model)
    state = checkpoints.load_state(path, "checkpoint", "")
    assert list(state) == list(_checkpoint(name))
    fresh = _build(name, seed=1)
    models.load_weights(fresh, state, path)
    fresh.eval()
    a, b = _outputs(model, ref), _outputs(fresh, ref)
    for key in a:
        assert torch.equal(a[key], b[key]), key


def _refusal(model, state, source) -> str:
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ValueError) as info:
        models.load_weights(model, state, source)
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # nothing half-loaded
    message = str(info.value)
    assert "\n" not in message and str(source) in message and "delete" not in message
    return message


def test_a_checkpoint_of_another_layout_is_refused_naming_the_keys():
    name = NAMES[0]
    # the layout without the authors' Flatten and leading underscores
    old = {k.lstrip("_").replace("encoder.1.", "encoder.0.").replace("encoder.3.", "encoder.2."): v
           for k, v in _checkpoint(name).items()}
    msg = _refusal(_build(name), old, "old.params")
    assert "missing _encoder.1.weight, _encoder.1.bias" in msg
    assert "unexpected encoder.0.weight, encoder.0.bias" in msg
    assert "_encoder.*, _mu.*, _logvar.*, _decoder.*" in msg and "leading underscore" in msg

    theirs = _checkpoint(NAMES[1])                 # a diagonal checkpoint for the constant model
    msg = _refusal(_build(NAMES[2]), theirs, "diag.params")
    assert "missing loggamma; unexpected none" in msg
    assert "loggamma, _encoder.*" in msg


def test_a_checkpoint_of_other_sizes_or_not_a_state_dict_is_refused():
    msg = _refusal(models.BernoulliMLPVAE(latent_dim=5, size=8), _checkpoint(NAMES[0]), "l4")
    assert "_mu.weight (4, 256) instead of (5, 256)" in msg and "512-256-5" in msg
    _refusal(_build(NAMES[0]), {"model": {"a": 1}}, "resume.pt")
    _refusal(_build(NAMES[0]), [torch.zeros(1)], "list.params")


def test_nearest_neighbours_refuses_an_old_layout_checkpoint_in_one_line(tiny_experiment, tmp_path,
                                                                        capsys):
    exp = experiments.get("tiny")
    path = results.job_files(exp, experiments.FULL_JOB, tmp_path / "res").checkpoint
    path.parent.mkdir(parents=True)
    model = models.build(exp.model, exp.latent_dim, in_channels=1)
    torch.save({k.lstrip("_"): v for k, v in model.state_dict().items()}, path)
    rc = nearest_neighbours.main(["--experiment", "tiny", "--results-dir", str(tmp_path / "res"),
                                  "--device", "cpu", "-o", str(tmp_path / "nn.npz")])
    err = capsys.readouterr().err.strip()
    assert rc == 1 and "Traceback" not in err and len(err.splitlines()) == 1
    assert str(path) in err and "missing _encoder.1.weight" in err and "unexpected" in err
    assert not (tmp_path / "nn.npz").exists()

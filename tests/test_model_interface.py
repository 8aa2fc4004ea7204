"""The model interface (memo/models/interface.py): every registered model implements it, and the
registry builds by name with one clear error for a name it does not hold."""
import pytest
import torch

from memo import models
from memo.config import naming
from memo.data import preprocess
from memo.models import interface

B = 3


def _model(name, norm="batch"):
    torch.manual_seed(0)
    return models.build(name, 4, 1, norm).eval()


def _inputs(model, n=B):
    images = torch.randint(0, 256, (n, 1, 32, 32), dtype=torch.uint8,
                           generator=torch.Generator().manual_seed(1))
    return preprocess.eval_inputs(images, torch.arange(n), model.binary, 0)


def _gen(seed):
    return torch.Generator().manual_seed(seed)


def test_the_registry_holds_the_models_of_naming_in_its_order():
    assert tuple(models.MODELS) == naming.MODEL_NAMES
    assert all(issubclass(cls, interface.Model) for cls in models.MODELS.values())


@pytest.mark.parametrize("name,norm", [(n, "batch") for n in naming.MODEL_NAMES]
                         + [("ConstantGaussianDCVAE", "group")])
def test_each_registered_model_implements_the_interface(name, norm):
    model = _model(name, norm)
    assert isinstance(model, interface.Model) and type(model) is models.MODELS[name]
    assert model.description == naming.model_description(name, 4, norm)
    assert model.norm_layer(norm) == models.norm_layer_name(name, norm)
    x = _inputs(model)

    # the data space: binarized pixels, or logit space with its Jacobian to the 8-bit pixels
    if model.binary:
        assert set(x.unique().tolist()) <= {0.0, 1.0}
        assert torch.equal(model.log_jacobian(x), torch.zeros(B))
    else:
        assert torch.equal(model.log_jacobian(x), preprocess.logit_to_pixel_log_jacobian(x))

    # the noise a loss takes: (*batch, *noise_shape), the draws of torch.randn
    eps = model.noise(B, _gen(2))
    assert eps.shape == (B, *model.noise_shape)
    assert torch.equal(eps, torch.randn((B, *model.noise_shape), generator=_gen(2)))
    assert model.noise((B, 5), _gen(2), dtype=torch.float64).shape == (B, 5, *model.noise_shape)

    # per-example loss: (B,), the same from eps as from the generator that draws them
    with torch.no_grad():
        loss = model.loss(x, eps)
        assert loss.shape == (B,) and torch.isfinite(loss).all()
        assert torch.equal(model.loss(x, generator=_gen(2)), loss)
        torch.testing.assert_close(model.loss(x[:1], eps[:1]), loss[:1])  # eval: per example

    # log p(x) with its ESS, from a generator or from the same draws given
    lp, ess = model.log_px(x, 6, _gen(3))
    assert lp.shape == ess.shape == (B,) and torch.isfinite(lp).all()
    if model.noise_shape == (0,):   # an exact log p: no importance weights
        assert torch.isnan(ess).all()
    else:
        assert ((ess >= 1 - 1e-4) & (ess <= 6 + 1e-4)).all()
    lp2, ess2 = model.log_px(x, 6, eps=model.noise((B, 6), _gen(3)))
    assert torch.equal(lp, lp2)
    torch.testing.assert_close(ess, ess2, rtol=0, atol=0, equal_nan=True)

    # samples: pixel intensities of the data's shape, independent of the batch, eval mode
    model.train()
    s = model.sample(5, _gen(4), batch=2)
    assert s.shape == (5, 1, 32, 32) and s.min() >= 0 and s.max() <= 1
    torch.testing.assert_close(s, model.sample(5, _gen(4)))          # rounding of the batch
    assert model.training and all(m.training for m in model.modules())


def test_an_unknown_model_is_one_error_line_naming_the_registered_ones():
    for call in (lambda: models.build("NoSuchVAE", 4, 1),
                 lambda: models.norm_layer_name("NoSuchVAE")):
        with pytest.raises(ValueError) as info:
            call()
        msg = str(info.value)
        assert "\n" not in msg and "'NoSuchVAE'" in msg
        assert all(name in msg for name in models.MODELS)
    with pytest.raises(ValueError, match="unknown norm 'layer'"):
        models.build("BernoulliMLPVAE", 4, 1, "layer")


def test_register_takes_a_model_class_once():
    with pytest.raises(ValueError, match="already registered"):
        models.register(models.BernoulliMLPVAE)
    with pytest.raises(TypeError, match="not a subclass"):
        models.register(torch.nn.Linear)

    class Incomplete(interface.Model):  # the abstract members are required
        binary = True
    with pytest.raises(TypeError):
        Incomplete()
    assert "Incomplete" not in models.MODELS

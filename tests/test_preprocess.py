"""Batched preprocessing: binarization, dequantization + logit, flips, fixed evaluation noise."""
import math

import pytest
import torch

from memo.data import preprocess


def test_binarization_is_bernoulli_of_the_grey_level():
    levels = torch.tensor([0, 1, 77, 128, 200, 255], dtype=torch.uint8)
    x = levels.view(1, -1).expand(40000, -1).contiguous()  # 40000 draws per level
    out = preprocess.binarize(x, torch.rand(x.shape, generator=torch.Generator().manual_seed(0)))
    assert set(out.unique().tolist()) <= {0.0, 1.0}
    p = levels.double() / 255
    se = torch.sqrt(p * (1 - p) / 40000)
    assert (out.double().mean(0) - p).abs().le(5 * se + 1e-12).all()
    assert out[:, 0].eq(0).all() and out[:, -1].eq(1).all()  # 0 never on, 255 always on


def test_evaluation_noise_is_uniform_and_fixed_per_example():
    idx = torch.arange(5000)
    u = preprocess.hash_uniform(42, idx, 1024)
    assert u.min() >= 0 and u.max() < 1
    assert abs(u.mean().item() - 0.5) < 0.002 and abs(u.var().item() - 1 / 12) < 0.002
    # the same example gets the same noise whatever batch it is in
    assert torch.equal(preprocess.hash_uniform(42, idx[[17, 3]], 1024), u[[17, 3]])
    assert not torch.equal(preprocess.hash_uniform(43, idx[:2], 1024), u[:2])
    x = torch.randint(0, 256, (8, 1, 32, 32), dtype=torch.uint8)
    a = preprocess.eval_inputs(x, torch.arange(8), True, 42)
    b = preprocess.eval_inputs(x[4:], torch.arange(4, 8), True, 42)
    assert torch.equal(a[4:], b)


def test_dequantize_and_logit_invert_to_the_pixels():
    x = torch.arange(256, dtype=torch.uint8).view(1, 1, 16, 16).repeat(3, 3, 2, 2)
    u = torch.rand(x.shape, generator=torch.Generator().manual_seed(1))
    x_tilde = preprocess.dequantize(x, u)
    assert torch.all((x_tilde * 256).floor() == x.float())
    back = preprocess.from_logit(preprocess.to_logit(x_tilde))
    assert torch.allclose(back, x_tilde, atol=1e-5)
    y = preprocess.to_logit(x_tilde)
    lam = preprocess.LAMBDA
    assert y.min() > math.log(lam / (1 - lam)) - 1e-5 and y.max() < math.log((1 - lam) / lam) + 1e-5


def test_flips_are_per_image():
    x = torch.arange(64 * 4, dtype=torch.float32).view(64, 1, 2, 2)
    out = preprocess.hflip_random(x, torch.Generator().manual_seed(0))
    flipped = (out == x.flip(-1)).flatten(1).all(1)
    same = (out == x).flatten(1).all(1)
    assert (flipped ^ same).all()               # each image whole: flipped or not
    assert 10 < flipped.sum() < 54              # some of each, about half


def test_training_inputs_have_fresh_noise():
    g = torch.Generator().manual_seed(0)
    x = torch.full((4, 1, 32, 32), 128, dtype=torch.uint8)
    a = preprocess.train_inputs(x, True, False, g)
    b = preprocess.train_inputs(x, True, False, g)
    assert not torch.equal(a, b)
    c = preprocess.train_inputs(x.expand(4, 3, 32, 32), False, True, g)
    assert c.dtype == torch.float32 and torch.isfinite(c).all()


@pytest.mark.parametrize("binary", [True, False])
def test_eval_inputs_do_not_flip(binary):
    x = torch.randint(0, 256, (4, 3, 32, 32), dtype=torch.uint8)
    a = preprocess.eval_inputs(x, torch.arange(4), binary, 0)
    b = preprocess.eval_inputs(x, torch.arange(4), binary, 0)
    assert torch.equal(a, b)

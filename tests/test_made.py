"""The built-in exact-likelihood model (memo/models/made.py): its log p(x) is a normalized
distribution (every binary image of a tiny size enumerated), each logit depends on the earlier
pixels only, and its samples follow its own conditionals."""
import torch

from memo.models.made import BernoulliMADE, made_masks


def _all_images(c, size):
    d = c * size * size
    bits = torch.arange(2 ** d)[:, None] >> torch.arange(d)[None, :] & 1
    return bits.float().view(-1, c, size, size)


def test_log_p_sums_to_one_over_every_binary_image():
    for c, size, hidden in ((1, 3, 7), (2, 2, 5)):   # D = 9 and D = 8
        torch.manual_seed(c)
        model = BernoulliMADE(hidden, c, size)
        with torch.no_grad():   # random, not small, weights: far from the uniform model
            for p in model.parameters():
                p.mul_(8)
        lp, ess = \
            model.double().log_px(_all_images(c, size).double(), 1)
        assert abs(torch.logsumexp(lp, 0).item()) < 1e-12
        assert lp.std() > 1                                # not the uniform distribution
        assert torch.isnan(ess).all()
        torch.testing.assert_close(model.loss(_all_images(c, size).double()), -lp)


def test_each_logit_depends_on_earlier_pixels_only():
    torch.manual_seed(0)
    model = BernoulliMADE(6, 1, 3).double()
    x = torch.rand(1, 1, 3, 3, dtype=torch.float64)
    jac = torch.autograd.functional.jacobian(lambda v: model.logits(v.view(1, 1, 3, 3))[0],
                                             x.flatten())
    assert torch.equal(jac.triu(), torch.zeros(9, 9, dtype=torch.float64))
    assert (jac.tril(-1).abs() > 0).sum() == 36          # and on every earlier one
    for m in made_masks(9, 6):
        assert set(m.unique().tolist()) <= {0.0, 1.0}


def test_samples_are_drawn_from_the_conditionals():
    """On D = 4 pixels, the frequency of each of the 16 images among 40,000 samples is its
    probability (to 4 standard errors)."""
    torch.manual_seed(1)
    model = BernoulliMADE(5, 1, 2).double()
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(3)
    images = _all_images(1, 2).double()
    prob = model.log_px(images, 1)[0].exp()
    s = model.sample(40_000, torch.Generator().manual_seed(0), batch=10_000)
    code = (s.view(-1, 4) * (2 ** torch.arange(4, dtype=torch.float64))).sum(1).long()
    freq = torch.bincount(code, minlength=16).double() / len(code)
    se = (prob * (1 - prob) / len(code)).sqrt()
    assert ((freq - prob).abs() <= 4 * se + 1e-9).all()
    assert torch.equal(s, model.sample(40_000, torch.Generator().manual_seed(0), batch=7_000))

"""An exact-likelihood model built in: MADE (Germain et al. 2015), an autoregressive model of
binarized pixels with Bernoulli conditionals in raster order,

    log p(x) = sum_d [x_d l_d(x_<d) - softplus(l_d(x_<d))],

all D = C·32·32 logits l from one pass of a masked MLP (two hidden layers of H units, ReLU,
and a masked direct input-output connection). Unit k of a hidden layer gets a degree m_k in
1..D-1 (cycled, so each degree is used about equally: no randomness in the masks); a hidden
weight from a unit of degree m' to one of degree m is kept when m >= m', an output weight to
pixel d when d > m, and the direct weight from pixel d' to pixel d when d > d'. So l_d depends
on x_<d only and log p(x) is exact: the training loss is -log p(x), there is no noise, and the
ESS is NaN. `latent_dim` of an experiment is its hidden width H (it has no latent variable);
its file-name tag is "H<H>". Sampling runs D passes, one per pixel, for all samples at once.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from memo.config import naming
from memo.models.interface import Model, eval_mode, register


class MaskedLinear(nn.Linear):
    """nn.Linear whose weight is multiplied by a fixed 0/1 mask (a buffer) in every call."""

    def __init__(self, mask: torch.Tensor, bias: bool = True):
        super().__init__(mask.shape[1], mask.shape[0], bias=bias)
        self.register_buffer("mask", mask.to(self.weight.dtype))

    def forward(self, x):
        return F.linear(x, self.weight * self.mask, self.bias)


def made_masks(d: int, hidden: int, layers: int = 2) -> list[torch.Tensor]:
    """The masks (out, in) of `layers` hidden layers and the output layer, then the direct
    connection's, for D = d inputs in their natural order."""
    degree_in = torch.arange(1, d + 1)
    degrees = [degree_in] + [torch.arange(hidden) % max(d - 1, 1) + 1 for _ in range(layers)]
    masks = [(degrees[i + 1][:, None] >= degrees[i][None, :]) for i in range(layers)]
    masks.append(degree_in[:, None] > degrees[-1][None, :])
    masks.append(degree_in[:, None] > degree_in[None, :])
    return [m.float() for m in masks]


class BernoulliMADE(Model):
    """MADE with Bernoulli outputs on binarized pixels (module docstring)."""

    binary = True
    groupable = True

    def __init__(self, hidden: int = 500, in_channels: int = 1, size: int = 32):
        super().__init__()
        self.shape = (in_channels, size, size)
        d = in_channels * size * size
        *hid, out, direct = made_masks(d, hidden)
        self.hidden = nn.Sequential(MaskedLinear(hid[0]), nn.ReLU(), MaskedLinear(hid[1]),
                                    nn.ReLU())
        self.out = MaskedLinear(out)
        self.direct = MaskedLinear(direct, bias=False)
        self.description = naming.model_description("BernoulliMADE", hidden)

    @classmethod
    def from_settings(cls, latent_dim, in_channels, norm="batch"):
        return cls(hidden=latent_dim, in_channels=in_channels)  # no normalization layer

    @property
    def noise_shape(self):
        return (0,)

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """(B, D) logits of p(x_d = 1 | x_<d) for every pixel d of x (B, C, H, W)."""
        x = x.flatten(1)
        return self.out(self.hidden(x)) + self.direct(x)

    def _log_px(self, x):
        logits = self.logits(x)
        return (x.flatten(1) * logits - F.softplus(logits)).sum(1)

    def loss(self, x, eps=None, generator=None):
        return -self._log_px(x)

    @torch.no_grad()
    def log_px(self, x, n_samples, generator=None, chunk=None, eps=None):
        lp = self._log_px(x)
        return lp, torch.full_like(lp, float("nan"))

    @torch.no_grad()
    def sample(self, n, generator, batch=512):
        """Binary images drawn pixel by pixel: the uniforms of every draw first, from
        `generator` on its device, then D steps for each `batch` of samples. A step updates
        the first hidden layer's input by the one pixel just drawn (its other inputs are
        unchanged), so it costs H² + H + D rather than a full pass."""
        if n < 1:
            raise ValueError(f"n must be positive; got {n}")
        p = next(self.parameters())
        d = self.out.out_features
        u = torch.rand((n, d), generator=generator, device=generator.device, dtype=p.dtype)
        first, second = self.hidden[0], self.hidden[2]
        w1, w2 = first.weight * first.mask, second.weight * second.mask
        wo, wd = self.out.weight * self.out.mask, self.direct.weight * self.direct.mask
        w1t = w1.T.contiguous()   # (D, H): row i is what pixel i adds to the first layer
        out = []
        with eval_mode(self):
            for s in range(0, n, batch):
                ub = u[s:s + batch].to(p.device)
                x = torch.zeros_like(ub)
                a1 = first.bias.expand(len(ub), -1).clone()
                for i in range(d):
                    h2 = F.relu(F.linear(F.relu(a1), w2, second.bias))
                    logit = h2 @ wo[i] + self.out.bias[i] + x @ wd[i]
                    xi = (ub[:, i] < torch.sigmoid(logit)).to(x.dtype)
                    x[:, i] = xi
                    a1 += xi[:, None] * w1t[i]
                out.append(x.view(-1, *self.shape))
        return torch.cat(out)

    def log_jacobian(self, x):
        return x.new_zeros(x.shape[0])  # log p is of the binarized pixels themselves


register(BernoulliMADE)

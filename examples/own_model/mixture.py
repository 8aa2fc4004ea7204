"""A model of your own, measured by the pipeline: a mixture of C factorized Bernoulli
distributions over binarized pixels (docs/models.md walks through it).

    p(x) = sum_c pi_c prod_d theta_cd^x_d (1 - theta_cd)^(1 - x_d)

Its log p(x) is exact (a log-sum-exp over the components), so its training loss is -log p(x),
it needs no noise, and its ESS is NaN. experiments.json beside this file names it as
"mixture:BernoulliMixture"; the pipeline imports it from this folder.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from memo.models.interface import Model, eval_mode


class BernoulliMixture(Model):
    binary = True       # binarized pixels, x in {0, 1}, (B, C, 32, 32) like every data set
    groupable = True    # plain tensor code: several copies may train as one vmap group

    def __init__(self, components: int, in_channels: int, size: int = 32):
        super().__init__()
        self.shape = (in_channels, size, size)
        self.logits = nn.Parameter(0.1 * torch.randn(components, in_channels * size * size))
        self.mix = nn.Parameter(torch.zeros(components))
        self.description = f"mixture{components}"

    @classmethod
    def from_settings(cls, latent_dim, in_channels, norm="batch", components=8):
        # latent_dim is not used by this model; `components` comes from model_args
        return cls(components, in_channels)

    @property
    def noise_shape(self):
        return (0,)     # no noise: loss and log p are deterministic

    def _log_px(self, x):
        x = x.flatten(1)                                       # (B, D)
        # log Bernoulli(x | sigmoid(l)) = x l - softplus(l), summed over pixels
        per_component = x @ self.logits.T - F.softplus(self.logits).sum(1)   # (B, C)
        return torch.logsumexp(per_component + F.log_softmax(self.mix, 0), dim=1)

    def loss(self, x, eps=None, generator=None):
        return -self._log_px(x)

    def log_px(self, x, n_samples, generator=None, chunk=None, eps=None):
        lp = self._log_px(x)
        return lp, torch.full_like(lp, float("nan"))          # exact: ESS NaN

    @torch.no_grad()
    def sample(self, n, generator, batch=512):
        # all draws first, from the generator on its device; samples are component means
        c = torch.multinomial(F.softmax(self.mix, 0).to(generator.device), n, replacement=True,
                              generator=generator).to(self.logits.device)
        with eval_mode(self):
            return torch.cat([torch.sigmoid(self.logits[c[s:s + batch]]).view(-1, *self.shape)
                              for s in range(0, n, batch)])

    def log_jacobian(self, x):
        return torch.zeros(x.shape[0], device=x.device)       # binary data: nothing to add

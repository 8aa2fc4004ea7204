"""The VAEs of the paper (supplement Table 1): a Bernoulli MLP VAE and two DCGAN-like VAEs.

The pipeline uses a model through the interface of memo/models/interface.py (`Model`: loss,
noise, log_px, sample, binary, log_jacobian, description) and makes one by name from the
registry there (`build`, `MODELS`, `register`). The VAEs implement it with their encoder and
decoder, the objective (objectives.neg_elbo) and the estimator (estimator.log_px). Their parts,
used inside memo/models and by the tests against the authors' code (and, besides, by the
samplers of memo/measures/copying.py and scripts/nearest_neighbours.py, which call pixel_mean,
and by the authors'-style baseline of scripts/bench.py):
  encode(x) -> (mu, logvar)          q(z|x) = N(mu, diag exp(logvar)),  (B, L) each
  decode(z) -> params                decoder output for z of shape (..., L)
  log_likelihood(x, params) -> (...) log p(x|z) summed over the D = C·H·W dimensions
  pixel_mean(z) -> (B, C, H, W)      decoder mean in pixel space [0, 1] (for samples/figures)
  latent_dim: int                    L
The description is the authors' file-name tag, e.g. "512-256-16", "NF32-L64".

Differentially private training (memo/train/private.py, docs/privacy.md) needs each example's own
gradient, which BatchNorm does not have (it mixes the examples of a batch). For it the DCVAEs
are built with norm="group": every BatchNorm2d becomes a GroupNorm (`group_norm`), their
file-name tag gains "-GN", and the constant-variance decoder holds log γ in a module of its own
(`SharedLogVariance`, state_dict key `_gamma.loggamma`) so per-example gradient hooks see it.
The MLP VAE has no normalization layer and is the same under either norm.

Parameters and buffers are laid out as in the authors' models, so that `state_dict()` saves
their checkpoint layout and their checkpoints load as they are (`load_weights`): modules
`_encoder`, `_mu`, `_logvar`, `_decoder` (layer indices included: the MLP encoder starts with
a Flatten, the DCVAE decoders with an Unflatten, the MLP decoder ends in Sigmoid, Unflatten),
`loggamma` for the constant-variance decoder, and no convolution biases.
"""
from __future__ import annotations

import math
from collections.abc import Mapping

import torch
import torch.nn as nn
import torch.nn.functional as F

from memo.config import naming
from memo.data import preprocess
from memo.models import estimator, objectives
from memo.models.interface import (MODELS, Model, build, eval_mode, model_class,
                                   norm_layer_name, of_experiment, refuse_group, register,
                                   user_class)

_LOG_2PI = math.log(2 * math.pi)


class _VAE(Model):
    """The interface (memo/models/interface.py) in terms of encode, decode, log_likelihood and
    pixel_mean: thin calls of objectives.neg_elbo and estimator.log_px."""

    groupable = True

    @property
    def latent_dim(self) -> int:
        return self._mu.out_features

    @property
    def noise_shape(self) -> tuple[int, ...]:
        return (self.latent_dim,)

    def encode(self, x):
        h = self._encoder(x)
        return self._mu(h), self._logvar(h)

    def loss(self, x, eps=None, generator=None):
        return objectives.neg_elbo(self, x, generator=generator, eps=eps)

    def log_px(self, x, n_samples, generator=None, chunk=None, eps=None):
        return estimator.log_px(self, x, n_samples, generator, chunk, eps)

    @torch.no_grad()
    def sample(self, n, generator, batch=512):
        if n < 1:
            raise ValueError(f"n must be positive; got {n}")
        p = next(self.parameters())
        z = self.noise(n, generator, dtype=p.dtype)
        with eval_mode(self):
            return torch.cat([self.pixel_mean(z[s:s + batch].to(p.device))
                              for s in range(0, n, batch)])


@register
class BernoulliMLPVAE(_VAE):
    """FC 1024→512→256→(μ, log σ²) encoder, L→256→512→1024 decoder with Bernoulli means."""
    binary = True

    def __init__(self, latent_dim: int = 16, in_channels: int = 1, size: int = 32):
        super().__init__()
        self.shape = (in_channels, size, size)
        d = in_channels * size * size
        self._encoder = nn.Sequential(nn.Flatten(), nn.Linear(d, 512), nn.ReLU(),
                                      nn.Linear(512, 256), nn.ReLU())
        self._mu = nn.Linear(256, latent_dim)
        self._logvar = nn.Linear(256, latent_dim)
        self._decoder = nn.Sequential(nn.Linear(latent_dim, 256), nn.ReLU(), nn.Linear(256, 512),
                                      nn.ReLU(), nn.Linear(512, d), nn.Sigmoid(),
                                      nn.Unflatten(1, self.shape))
        self.description = self.describe(latent_dim)

    @classmethod
    def from_settings(cls, latent_dim, in_channels, norm="batch"):
        return cls(latent_dim=latent_dim, in_channels=in_channels)  # no normalization layer

    @staticmethod
    def describe(latent_dim: int) -> str:
        return naming.model_description("BernoulliMLPVAE", latent_dim)

    def log_jacobian(self, x):
        return x.new_zeros(x.shape[0])  # log p is of the binarized pixels themselves

    def decode(self, z):
        # stop before the Sigmoid: the log-likelihood is computed from logits, which stays
        # exact where probabilities round to 0 or 1
        h = z
        for layer in self._decoder:
            if isinstance(layer, nn.Sigmoid):
                return h  # (..., D) Bernoulli logits
            h = layer(h)
        raise AssertionError("the MLP decoder has no Sigmoid")

    def log_likelihood(self, x, logits):
        # log Bern(x; sigmoid(l)) = x·l − softplus(l), summed over the D pixels
        x = x.flatten(1)                                          # (B, D)
        if logits.dim() == 2:                                     # training: (B, D)
            return (x * logits - F.softplus(logits)).sum(-1)
        # importance sampling, logits (B, ..., D): x·l as a batched matrix product, without a
        # (B, ..., D) temporary. On the 2-core CPU this was never slower and, in processes
        # where the elementwise form hit its slow mode, 1.7x faster IS.
        b, d = x.shape
        xl = torch.matmul(logits.reshape(b, -1, d), x[:, :, None]).reshape(logits.shape[:-1])
        return xl - F.softplus(logits).sum(-1)

    def pixel_mean(self, z):
        return self._decoder(z.reshape(-1, z.shape[-1]))  # the whole decoder: (B, C, H, W)


GROUPS = 32  # GroupNorm groups (Wu & He's default); the DCVAEs' widths are multiples of 32


def group_norm(channels: int) -> nn.GroupNorm:
    """The per-example replacement of BatchNorm2d(channels) for private training: statistics
    over groups of channels of one example, learned scale and shift as BatchNorm's."""
    return nn.GroupNorm(math.gcd(GROUPS, channels), channels)


def _norm_layer(norm: str, channels: int) -> nn.Module:
    return nn.BatchNorm2d(channels) if norm == "batch" else group_norm(channels)


class _DCVAE(_VAE):
    """DCGAN-like encoder/decoder with F feature maps (Table 1); 32×32 inputs. Convolutions
    have no bias (those feeding a BatchNorm would be cancelled by it).
    norm: "batch" (the paper's) or "group" (private training, see the module docstring)."""
    binary = False

    def __init__(self, latent_dim: int, in_channels: int, out_channels: int, nf: int = 32,
                 norm: str = "batch"):
        super().__init__()
        c, f = in_channels, nf

        def enc(a, b):
            return [nn.Conv2d(a, b, 4, 2, 1, bias=False), _norm_layer(norm, b), nn.LeakyReLU(0.2)]

        def dec(a, b, k=4, s=2, p=1):
            return [nn.ConvTranspose2d(a, b, k, s, p, bias=False), _norm_layer(norm, b),
                    nn.ReLU()]

        self._encoder = nn.Sequential(nn.Conv2d(c, f, 4, 2, 1, bias=False), nn.LeakyReLU(0.2),
                                      *enc(f, 2 * f), *enc(2 * f, 4 * f), *enc(4 * f, 8 * f),
                                      nn.Flatten())              # (B, 8F·2·2) = (B, 32F)
        self._mu = nn.Linear(32 * f, latent_dim)
        self._logvar = nn.Linear(32 * f, latent_dim)
        self._decoder = nn.Sequential(nn.Unflatten(1, (latent_dim, 1, 1)),
                                      *dec(latent_dim, 8 * f, 2, 1, 0),  # 1×1 → 2×2
                                      *dec(8 * f, 4 * f), *dec(4 * f, 2 * f), *dec(2 * f, f),
                                      nn.ConvTranspose2d(f, out_channels, 4, 2, 1,
                                                         bias=False))  # → 32×32
        self.channels = c
        self.norm = norm
        self.description = self.describe(latent_dim, nf, norm)

    @classmethod
    def from_settings(cls, latent_dim, in_channels, norm="batch"):
        return cls(latent_dim=latent_dim, in_channels=in_channels, norm=norm)

    @classmethod
    def norm_layer(cls, norm="batch"):
        return "BatchNorm2d" if norm == "batch" else "GroupNorm"

    def log_jacobian(self, x):
        return preprocess.logit_to_pixel_log_jacobian(x)

    @staticmethod
    def describe(latent_dim: int, nf: int = naming.PAPER_NF, norm: str = "batch") -> str:
        return naming.model_description("DiagonalGaussianDCVAE", latent_dim, norm, nf)

    def _decode_images(self, z):
        lead = z.shape[:-1]
        out = self._decoder(z.reshape(-1, z.shape[-1]))
        return out.view(*lead, *out.shape[1:])

    def pixel_mean(self, z):
        mean = self.decode(z)[0]
        return preprocess.from_logit(mean).view(-1, *mean.shape[-3:])


def _gaussian_log_likelihood(x, mean, logvar):
    x = x.view(x.shape[0], *([1] * (mean.dim() - 4)), *x.shape[1:])
    ll = -0.5 * (_LOG_2PI + logvar + (x - mean) ** 2 * torch.exp(-logvar))
    return ll.flatten(-3).sum(-1)


@register
class DiagonalGaussianDCVAE(_DCVAE):
    """Per-pixel mean and log-variance (clamped at ≥ −7), in logit space (CIFAR-10)."""

    def __init__(self, latent_dim: int = 64, in_channels: int = 3, nf: int = 32,
                 norm: str = "batch"):
        super().__init__(latent_dim, in_channels, 2 * in_channels, nf, norm)

    def decode(self, z):
        out = self._decode_images(z)
        mean, logvar = out.split(self.channels, dim=-3)
        return mean, logvar.clamp(min=-7.0)

    def log_likelihood(self, x, params):
        mean, logvar = params
        return _gaussian_log_likelihood(x, mean, logvar)


class SharedLogVariance(nn.Module):
    """log γ as a module called on the decoder mean, for private training: per-example gradient
    hooks (Opacus) see only parameters of modules that are called on a batch."""

    def __init__(self, init: float = -2.0):
        super().__init__()
        self.loggamma = nn.Parameter(torch.tensor(init))

    def forward(self, mean):
        # the input only carries the batch: detached, so the hooks fire on the output's gradient
        return self.loggamma.expand_as(mean)


@register
class ConstantGaussianDCVAE(_DCVAE):
    """Per-pixel mean, one learned shared variance γ (log γ starts at −2), logit space (CelebA)."""

    def __init__(self, latent_dim: int = 32, in_channels: int = 3, nf: int = 32,
                 norm: str = "batch"):
        super().__init__(latent_dim, in_channels, in_channels, nf, norm)
        if norm == "batch":
            self.loggamma = nn.Parameter(torch.tensor(-2.0))
        else:
            self._gamma = SharedLogVariance(-2.0)

    def decode(self, z):
        mean = self._decode_images(z)
        if self.norm == "batch":
            return mean, self.loggamma
        return mean, self._gamma(mean.detach())

    def log_likelihood(self, x, params):
        mean, loggamma = params
        return _gaussian_log_likelihood(x, mean, loggamma.expand_as(mean))


# the exact-likelihood model, registered after the VAEs (naming.MODEL_NAMES' order)
from memo.models.made import BernoulliMADE  # noqa: E402

# registered above in the order of naming.MODEL_NAMES; build, norm_layer_name and the
# registry itself (MODELS, register, model_class) are memo/models/interface.py's
__all__ = ["MODELS", "Model", "BernoulliMLPVAE", "DiagonalGaussianDCVAE", "ConstantGaussianDCVAE",
           "BernoulliMADE",
           "SharedLogVariance", "build", "eval_mode", "group_norm", "load_weights",
           "model_class", "norm_layer_name", "of_experiment", "refuse_group", "register",
           "user_class"]


def _layout(keys) -> str:
    """'loggamma, _encoder.*, ...': the top-level names of state_dict keys, in order."""
    tops = dict.fromkeys(k.split(".")[0] + (".*" if "." in k else "") for k in keys)
    return ", ".join(tops)


def _few(keys: list[str], n: int = 4) -> str:
    if not keys:
        return "none"
    more = f" and {len(keys) - n} more" if len(keys) > n else ""
    return ", ".join(keys[:n]) + more


def load_weights(model: nn.Module, state, source) -> None:
    """Load a state_dict in the authors' layout (theirs or ours) into model.

    A file of another layout or of other sizes is refused with one ValueError line naming
    `source`, the keys that differ and the layout expected; model is then left unchanged."""
    name = f"{type(model).__name__}_{model.description}"
    if not (isinstance(state, Mapping)
            and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items())):
        raise ValueError(f"{source} is not a state_dict (names to tensors) of {name}")
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    if missing or unexpected:
        # the layout before this one: the same names without the leading underscore
        older = any(f"_{k}" in expected for k in unexpected)
        hint = " (its names lack the authors' leading underscore)" if older else ""
        raise ValueError(f"{source} does not fit {name}: its keys differ from the authors' "
                         f"layout ({_layout(expected)}){hint}: missing {_few(missing)}; "
                         f"unexpected {_few(unexpected)}")
    wrong = [f"{k} {tuple(state[k].shape)} instead of {tuple(v.shape)}"
             for k, v in expected.items() if state[k].shape != v.shape]
    if wrong:
        raise ValueError(f"{source} holds a model of other sizes than {name}: {_few(wrong, 3)}")
    model.load_state_dict(state)

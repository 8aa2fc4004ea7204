"""What the pipeline needs of a model, and the registry of models by name.

Training (memo/train), evaluation, the measures (memo/measures) and sampling use a model only
through the members of `Model`; the VAEs of memo/models implement them with their encoder and
decoder, the objective (objectives.py) and the estimator (estimator.py). Code outside
memo/models neither calls an encoder or decoder nor draws a model's latent noise itself.

  loss(x, eps=None, generator=None) -> (B,)        per-example training loss (the VAEs: the
                                                   negative ELBO, one reparameterised sample)
  noise(batch, generator=None, device=None, dtype=None) -> (*batch, *noise_shape)
                                                   the standard normal draws `loss` takes as
                                                   eps (batch: B), and `log_px` (batch: (B, N))
  noise_shape: tuple                               one example's draw: (L,) for the VAEs
  log_px(x, n_samples, generator=None, chunk=None, eps=None) -> (log p (B,), ESS (B,))
                                                   log p(x) of the 8-bit data; estimated models
                                                   give the ESS of their importance weights,
                                                   exact ones NaN
  sample(n, generator, batch=512) -> (n, C, H, W)  decoder means of z ~ N(0, I), pixel
                                                   intensities in [0, 1]
  binary: bool                                     the data space: True, binarized pixels
                                                   (Bernoulli likelihood); False, dequantized
                                                   pixels in logit space (memo/data/preprocess)
  log_jacobian(x) -> (B,)                          added to log p of model inputs x gives log p
                                                   of the 8-bit pixels (0 for binary models)
  description: str                                 the file-name tag (memo/config/naming.py)
  from_settings(latent_dim, in_channels, norm)     (class) the model of an experiment's settings
  norm_layer(norm) -> str | None                   (class) its normalization layers' class name

A model class is registered under its class name (`register`); `build(name, ...)` makes one
from an experiment's settings. memo/config/naming.py keeps the same names, in the same order,
for checks and file names that load no torch.
"""
from __future__ import annotations

import abc
import contextlib

import torch
import torch.nn as nn

from memo.config import naming


@contextlib.contextmanager
def eval_mode(model: nn.Module):
    """Run model in eval mode, restoring each submodule's own training flag afterwards."""
    flags = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield model
    finally:
        for m, flag in flags:
            m.training = flag


class Model(nn.Module, metaclass=abc.ABCMeta):
    """The interface of every model (module docstring). Subclasses set `binary` (class) and
    `description` (instance) and implement the abstract members."""

    binary: bool
    description: str

    @classmethod
    @abc.abstractmethod
    def from_settings(cls, latent_dim: int, in_channels: int, norm: str = "batch") -> "Model":
        """The model of an experiment's settings; norm: "batch" or "group" (private training)."""

    @classmethod
    def norm_layer(cls, norm: str = "batch") -> str | None:
        """The class name of the model's normalization layers under `norm` (None: none)."""
        return None

    @property
    @abc.abstractmethod
    def noise_shape(self) -> tuple[int, ...]:
        """The shape of one example's loss noise."""

    def noise(self, batch, generator: torch.Generator | None = None, device=None,
              dtype: torch.dtype | None = None) -> torch.Tensor:
        """(*batch, *noise_shape) standard normal draws in one call (batch: an int or a tuple
        of leading dimensions), on `device`, by default the generator's."""
        lead = tuple(batch) if isinstance(batch, (tuple, list, torch.Size)) else (batch,)
        if device is None and generator is not None:
            device = generator.device
        return torch.randn((*lead, *self.noise_shape), generator=generator, device=device,
                           dtype=dtype)

    @abc.abstractmethod
    def loss(self, x: torch.Tensor, eps: torch.Tensor | None = None,
             generator: torch.Generator | None = None) -> torch.Tensor:
        """(B,) training loss of each example of the model inputs x, with the noise eps
        (`noise(B)`), by default drawn from `generator`."""

    @abc.abstractmethod
    def log_px(self, x: torch.Tensor, n_samples: int, generator: torch.Generator | None = None,
               chunk: int | None = None, eps: torch.Tensor | None = None
               ) -> tuple[torch.Tensor, torch.Tensor]:
        """(log p(x), ESS), each (B,): log p of the 8-bit data of the model inputs x; an
        estimate from n_samples draws (eps: `noise((B, n_samples))`, by default drawn from
        `generator`), with the effective sample size of its weights (NaN for an exact log p).
        chunk: at most about this many decoder rows at once (memory, not the numbers)."""

    @abc.abstractmethod
    def sample(self, n: int, generator: torch.Generator, batch: int = 512) -> torch.Tensor:
        """(n, C, H, W) samples as pixel intensities in [0, 1], on the model's device: all
        draws first, from `generator` on its device (so a sample does not depend on `batch`),
        decoded `batch` at a time in eval mode (restored afterwards), without gradients."""

    @abc.abstractmethod
    def log_jacobian(self, x: torch.Tensor) -> torch.Tensor:
        """(B,) what to add to log p of model inputs x to have log p of the 8-bit pixels."""


# ----------------------------------------------------------------------------------------------
# the registry

MODELS: dict[str, type[Model]] = {}


def register(cls: type[Model]) -> type[Model]:
    """Register a Model class under its class name (a class decorator); a name is taken once."""
    if not (isinstance(cls, type) and issubclass(cls, Model)):
        raise TypeError(f"{cls!r} is not a subclass of memo.models.interface.Model")
    if cls.__name__ in MODELS:
        raise ValueError(f"a model named {cls.__name__} is already registered")
    MODELS[cls.__name__] = cls
    return cls


def model_class(name: str) -> type[Model]:
    """The registered class of that name; one ValueError line naming the registered ones."""
    try:
        return MODELS[name]
    except (KeyError, TypeError):
        raise ValueError(f"unknown model {name!r}; valid choices (the registered models): "
                         f"{', '.join(MODELS)}") from None


def _check_norm(norm: str) -> None:
    if norm not in naming.NORMS:
        raise ValueError(f"unknown norm {norm!r}; valid choices: {', '.join(naming.NORMS)}")


def build(name: str, latent_dim: int, in_channels: int, norm: str = "batch") -> Model:
    """The registered model `name` of these settings (its `from_settings`).
    norm: the normalization layers, "batch" or "group" (private training)."""
    cls = model_class(name)
    _check_norm(norm)
    return cls.from_settings(latent_dim, in_channels, norm)


def norm_layer_name(name: str, norm: str = "batch") -> str | None:
    """The class name of a model's normalization layers (None: it has none), for metadata."""
    cls = model_class(name)
    _check_norm(norm)
    return cls.norm_layer(norm)

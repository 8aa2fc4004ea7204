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
  from_settings(latent_dim, in_channels, norm, **model_args)
                                                   (class) the model of an experiment's settings
  norm_layer(norm) -> str | None                   (class) its normalization layers' class name
  groupable: bool                                  (class) whether several copies may train as
                                                   one vectorized group (torch.func.vmap over
                                                   functional_call of loss and log_px)

A model class is registered under its class name (`register`); `build(name, ...)` makes one
from an experiment's settings. memo/config/naming.py keeps the same names, in the same order,
for checks and file names that load no torch. A user's own class is named by import path,
'package.module:ClassName' (`user_class`, docs/models.md): imported from the folder of the
experiments file ($EXPERIMENTS_FILE) first, then sys.path. Importing it runs the user's code,
which the user chose by naming it in their experiments file; result files, checkpoints and data
never name code to run.
"""
from __future__ import annotations

import abc
import contextlib
import importlib
import os
import sys
from pathlib import Path

import torch
import torch.nn as nn

from memo.config import naming
from memo.errors import MemoError


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
    groupable: bool = False

    @classmethod
    @abc.abstractmethod
    def from_settings(cls, latent_dim: int, in_channels: int, norm: str = "batch",
                      **model_args) -> "Model":
        """The model of an experiment's settings; norm: "batch" or "group" (private training);
        model_args: the experiment's `model_args` (user models)."""

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


class ModelImportError(ValueError, MemoError):
    """A user model ('module:Class') that cannot be imported or is not a Model."""


def _user_folder() -> Path | None:
    path = os.environ.get("EXPERIMENTS_FILE")
    return Path(path).resolve().parent if path else None


def user_class(spec: str) -> type[Model]:
    """The user's class 'package.module:ClassName', imported with the experiments file's folder
    first on sys.path; one ModelImportError line for a module that cannot be imported, a
    missing name, or a class that is not a complete memo.models.interface.Model."""
    module_name, _, class_name = spec.partition(":")
    folder = _user_folder()
    if folder is not None and str(folder) not in sys.path:
        sys.path.insert(0, str(folder))
    where = f"the experiments file's folder {folder} and sys.path" if folder else "sys.path"
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as e:
        raise ModelImportError(f"model {spec!r}: cannot import module {module_name!r} "
                                f"({e}); it is looked for in {where}") from None
    except Exception as e:  # the user's module failed while it ran: say where, in one line
        raise ModelImportError(f"model {spec!r}: importing {module_name} raised "
                                f"{type(e).__name__}: {e}".splitlines()[0]) from None
    cls = getattr(module, class_name, None)
    if cls is None:
        raise ModelImportError(f"model {spec!r}: module {module_name} "
                                f"({getattr(module, '__file__', '?')}) has no {class_name}")
    if not (isinstance(cls, type) and issubclass(cls, Model)):
        raise ModelImportError(f"model {spec!r}: {class_name} is not a subclass of "
                                f"memo.models.interface.Model (docs/models.md)")
    missing = sorted(getattr(cls, "__abstractmethods__", ()))
    if missing:
        raise ModelImportError(f"model {spec!r}: {class_name} does not implement "
                                f"{', '.join(missing)} of the model interface (docs/models.md)")
    if not isinstance(getattr(cls, "binary", None), bool):
        raise ModelImportError(f"model {spec!r}: {class_name} must set the class attribute "
                                f"binary = True (binarized pixels) or False (dequantized)")
    return cls


def model_class(name: str) -> type[Model]:
    """The registered class of that name, or a user's 'module:Class'; one ValueError line
    naming the registered ones for an unknown name."""
    if naming.is_user_model(name):
        return user_class(name)
    try:
        return MODELS[name]
    except (KeyError, TypeError):
        raise ValueError(f"unknown model {name!r}; valid choices (the registered models): "
                         f"{', '.join(MODELS)}, or your own class as 'module.path:ClassName'"
                         ) from None


def refuse_group(name: str) -> None:
    """One ValueError line where a model's class does not allow vectorized group training."""
    cls = model_class(name)
    if not cls.groupable:
        raise ValueError(f"model {name} does not train as a group (its class does not set "
                         f"groupable = True): use GROUP=1, one --job per process")


def _check_norm(norm: str) -> None:
    if norm not in naming.NORMS:
        raise ValueError(f"unknown norm {norm!r}; valid choices: {', '.join(naming.NORMS)}")


def build(name: str, latent_dim: int, in_channels: int, norm: str = "batch",
          model_args: dict | None = None) -> Model:
    """The registered model `name` (or a user's 'module:Class') of these settings (its
    `from_settings`). norm: the normalization layers, "batch" or "group" (private training);
    model_args: keyword arguments of a user model's from_settings."""
    cls = model_class(name)
    _check_norm(norm)
    if not model_args:
        return cls.from_settings(latent_dim, in_channels, norm)
    try:
        return cls.from_settings(latent_dim, in_channels, norm, **model_args)
    except TypeError as e:
        raise ModelImportError(f"model {name!r}: from_settings does not take model_args "
                               f"{sorted(model_args)}: {e}") from None


def of_experiment(exp, in_channels: int) -> Model:
    """The model of an experiment (memo/config/experiments.Experiment), untrained."""
    return build(exp.model, exp.latent_dim, in_channels, exp.norm, exp.model_args)


def norm_layer_name(name: str, norm: str = "batch") -> str | None:
    """The class name of a model's normalization layers (None: it has none), for metadata."""
    cls = model_class(name)
    _check_norm(norm)
    return cls.norm_layer(norm)

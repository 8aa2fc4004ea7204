"""The experiments, defined once: the paper's four (PAPER.md §5) and the offline demo.

The Makefile, the training CLI and the summaries all read this table. A user adds
experiments of their own in a JSON file (``EXPERIMENTS_FILE``), one object per name
with the same fields as ``Experiment``.
"""
from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Experiment:
    name: str
    data: str                  # data set spec: bmnist, fashion, cifar10, celeba or npz:PATH
    model: str                 # key of memo.models.MODELS
    latent_dim: int
    lr: float
    epochs: int
    eval_every: int            # log p(x) is computed every this many epochs (and at the last)
    n_is: int                  # importance samples per example
    batch_size: int = 64
    seed: int = 42
    folds: int = 10            # K
    repeats: int = 10          # L in the paper
    subset: int = 0            # use only the first `subset` training images (0 = all)
    checkpoint_every: int = 5  # epochs between resume checkpoints
    hflip: bool | None = None  # None: the data set's default (CIFAR-10, CelebA flip)

    def eval_epochs(self) -> list[int]:
        """Epochs (1-based) after which log p(x) is computed."""
        epochs = [e for e in range(self.eval_every, self.epochs + 1, self.eval_every)]
        if not epochs or epochs[-1] != self.epochs:
            epochs.append(self.epochs)
        return epochs

    def jobs(self) -> list[str]:
        """Every unit of work: one per (repeat, fold), plus the full-data model."""
        cv = [f"cv_repeat{r}_fold{k}" for r in range(self.repeats) for k in range(self.folds)]
        return cv + ["full_repeat0"]


# The paper's settings (PAPER.md §5; supplement B.3): Adam, batch 64, seed 42, K = L = 10.
# `fashion_demo` is the offline default, sized to finish in minutes on a 2-core CPU:
# a small training set and many epochs make memorization visible quickly.
_TABLE = [
    Experiment("bmnist_lr3", "bmnist", "BernoulliMLPVAE", 16, 1e-3, 100, 5, 256),
    Experiment("bmnist_lr4", "bmnist", "BernoulliMLPVAE", 16, 1e-4, 100, 5, 256),
    Experiment("cifar10", "cifar10", "DiagonalGaussianDCVAE", 64, 1e-3, 100, 50, 128),
    Experiment("celeba", "celeba", "ConstantGaussianDCVAE", 32, 1e-3, 50, 25, 128),
    Experiment("fashion_demo", "fashion", "BernoulliMLPVAE", 16, 1e-3, 40, 10, 128,
               folds=5, repeats=2, subset=2000, checkpoint_every=10),
]
EXPERIMENTS: dict[str, Experiment] = {e.name: e for e in _TABLE}
PAPER_EXPERIMENTS = ["bmnist_lr3", "bmnist_lr4", "cifar10", "celeba"]
DEMO_EXPERIMENT = "fashion_demo"  # what `make demo` runs


class UnknownExperimentError(ValueError):
    pass


def load_user_experiments(path: str | os.PathLike | None = None) -> dict[str, Experiment]:
    """Experiments from a JSON file {name: {field: value}}; path defaults to $EXPERIMENTS_FILE."""
    path = path or os.environ.get("EXPERIMENTS_FILE")
    if not path:
        return {}
    try:
        table = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise UnknownExperimentError(f"cannot read experiments file {path}: {e}") from None
    fields = {f.name for f in dataclasses.fields(Experiment)}
    out = {}
    for name, spec in table.items():
        unknown = set(spec) - fields
        if unknown:
            raise UnknownExperimentError(
                f"{path}: experiment {name!r} has unknown fields {sorted(unknown)}; "
                f"valid fields: {sorted(fields - {'name'})}")
        try:
            out[name] = Experiment(name=name, **spec)
        except TypeError as e:
            raise UnknownExperimentError(f"{path}: experiment {name!r}: {e}") from None
    return out


def all_experiments() -> dict[str, Experiment]:
    return {**EXPERIMENTS, **load_user_experiments()}


def get(name: str) -> Experiment:
    table = all_experiments()
    if name not in table:
        raise UnknownExperimentError(
            f"unknown experiment {name!r}; valid choices: {', '.join(sorted(table))} "
            "(add your own in a JSON file named by EXPERIMENTS_FILE)")
    return table[name]

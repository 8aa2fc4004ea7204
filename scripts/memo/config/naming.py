"""Names and facts that need no data and no model: the data sets' display names and sizes, the
models' file-name tags, and the stem of a job's files (the authors' names; docs/fidelity.md).

Make's plan, the result files and the summaries name things through this module; it imports
neither torch nor the loaders, so that naming a file never loads a framework.
"""
from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path

from memo import fileio
from memo.config.experiments import DEFAULT_CONTROLS, Experiment, Job

# ----------------------------------------------------------------------------------------------
# data sets

DATASET_NAMES = {
    "bmnist": "BinarizedMNIST",
    "fashion": "FashionMNIST",
    "cifar10": "CIFAR10",
    "celeba": "CelebA",
    "planted": "PlantedFashionMNIST",
}
VALID_SPECS = "bmnist, fashion, cifar10, celeba, planted, npz:PATH"


@dataclass(frozen=True)
class Facts:
    channels: int
    hflip: bool       # random horizontal flips in training by default (as the authors' code)
    n_train: int      # images in the official training split (CelebA: its "train" partition)
    n_test: int


FACTS = {
    "bmnist": Facts(channels=1, hflip=False, n_train=60000, n_test=10000),
    "fashion": Facts(channels=1, hflip=False, n_train=60000, n_test=10000),
    "cifar10": Facts(channels=3, hflip=True, n_train=50000, n_test=10000),
    "celeba": Facts(channels=3, hflip=True, n_train=162770, n_test=19962),
    "planted": Facts(channels=1, hflip=False, n_train=2000, n_test=9000),
}


def parse_spec(spec: str) -> tuple[str, str | None]:
    """(kind, npz path or None); ValueError for anything that is not a known spec."""
    if not isinstance(spec, str):
        raise ValueError(f"data set spec must be a string, got {spec!r}; valid choices: {VALID_SPECS}")
    if spec.startswith("npz:"):
        path = spec[len("npz:"):]
        if not path:
            raise ValueError(f"npz spec needs a path, e.g. npz:/data/mine.npz (got {spec!r})")
        return "npz", path
    if spec in DATASET_NAMES:
        return spec, None
    raise ValueError(f"unknown data set {spec!r}; valid choices: {VALID_SPECS}")


def max_examples(exp: Experiment) -> int | None:
    """At most how many training examples the experiment has: its subset, the data set's
    size, or for npz data the image count in the file's header (nothing else is read); None
    when that file cannot be read."""
    kind, path = parse_spec(exp.data)
    if kind in FACTS:
        n = FACTS[kind].n_train
    else:
        try:
            head = fileio.npz_member(Path(path).expanduser(), "x")
        except (OSError, ValueError):
            return None
        if head is None or not head[0]:
            return None
        n = int(head[0][0])
    return min(n, exp.subset) if exp.subset else n


def controls_count(exp: Experiment, n_test: int | None = None) -> int | None:
    """The number of control images an experiment scores: its own number, or by default
    DEFAULT_CONTROLS capped at the test split (n_test, 0 without one; for a standard data set
    known without reading it; None for npz data until its file is read)."""
    if exp.controls is not None:
        return exp.controls
    if n_test is None:
        kind, _ = parse_spec(exp.data)
        if kind not in FACTS:
            return None
        n_test = FACTS[kind].n_test
    return min(DEFAULT_CONTROLS, n_test)


def dataset_name(spec: str) -> str:
    """Display name used in result file names: "bmnist" -> "BinarizedMNIST", "npz:PATH" -> "npz"."""
    kind, _ = parse_spec(spec)
    return "npz" if kind == "npz" else DATASET_NAMES[kind]


# ----------------------------------------------------------------------------------------------
# models (memo/models: the classes of these names)

MODEL_NAMES = ("BernoulliMLPVAE", "DiagonalGaussianDCVAE", "ConstantGaussianDCVAE",
               "BernoulliMADE")
NORMS = ("batch", "group")
PAPER_NF = 32   # the DCVAEs' width F at the paper's size (the authors' num_feature)


def is_user_model(name: str) -> bool:
    """A user's own model class, named by import path 'package.module:ClassName'
    (docs/models.md), rather than a built-in model's name."""
    return isinstance(name, str) and ":" in name


def model_tag(name: str) -> str:
    """The <Model> of a file name: a built-in model's name, or a user model's class name."""
    return name.rpartition(":")[2]


def check_model(name: str, norm: str = "batch") -> None:
    """ValueError (one line, with the valid choices) for an unknown model or norm. A user
    model ('module:Class') is only checked when it is imported (memo/models/interface.py)."""
    if name not in MODEL_NAMES and not is_user_model(name):
        raise ValueError(f"unknown model {name!r}; valid choices: {', '.join(MODEL_NAMES)}, "
                         f"or your own class as 'module.path:ClassName'")
    if norm not in NORMS:
        raise ValueError(f"unknown norm {norm!r}; valid choices: {', '.join(NORMS)}")


def args_tag(model_args: dict | None) -> str:
    """'' without arguments, else '-' and 8 hex digits of their canonical JSON: files of the
    same class under other arguments get other names."""
    if not model_args:
        return ""
    text = json.dumps(model_args, sort_keys=True, separators=(",", ":"))
    return "-" + hashlib.sha256(text.encode()).hexdigest()[:8]


def model_description(name: str, latent_dim: int, norm: str = "batch", nf: int = PAPER_NF,
                      model_args: dict | None = None) -> str:
    """The authors' file-name tag of a model: "512-256-16" (MLP), "NF32-L64" (DCVAEs, "-GN"
    with GroupNorm); the MLP has no normalization layer and the same tag under either norm.
    A user model's tag is formed from the settings without importing it: "L16", "-GN" under
    group norm, then args_tag(model_args) ("L16-3f2a9c01")."""
    check_model(name, norm)
    if is_user_model(name):
        return f"L{latent_dim}" + ("-GN" if norm == "group" else "") + args_tag(model_args)
    if name == "BernoulliMLPVAE":
        return f"512-256-{latent_dim}"
    if name == "BernoulliMADE":   # latent_dim: its hidden width (memo/models/made.py)
        return f"H{latent_dim}"
    return f"NF{nf}-L{latent_dim}" + ("-GN" if norm == "group" else "")


def num_feature(name: str) -> int | None:
    """The authors' `num_feature` of a model at the paper's width: F for the DCVAEs, None for
    the MLP and for user models (as their result files record it)."""
    check_model(name)
    return (None if name in ("BernoulliMLPVAE", "BernoulliMADE") or is_user_model(name)
            else PAPER_NF)


# ----------------------------------------------------------------------------------------------
# a job's files

_STEM = re.compile(r"^(?P<prefix>.+)_seed(?P<seed>\d+)_(?P<job>cv_repeat\d+_fold\d+|full_repeat\d+)$")


def description(exp: Experiment) -> str:
    """The <desc> of a file name: the model's tag, then the privacy tag of a private run
    ("512-256-16-dp-eps10", "NF32-L64-GN-dp-eps1"), so private files never mix with others."""
    desc = model_description(exp.model, exp.latent_dim, exp.norm, model_args=exp.model_args)
    return desc if exp.dp is None else f"{desc}-dp-eps{exp.dp['epsilon']:g}"


def file_stem(exp: Experiment, job: Job) -> str:
    """'<Dataset>_<Model>_<desc>_seed<S>_<job tag>', the authors' name of a job's files."""
    return (f"{dataset_name(exp.data)}_{model_tag(exp.model)}_{description(exp)}"
            f"_seed{exp.seed}_{job.tag}")


def parse_stem(name: str) -> tuple[str, int, Job]:
    """(prefix '<Dataset>_<Model>_<desc>', seed, job) from a result file name or stem."""
    base = Path(name).name.removesuffix(".json.gz")
    m = _STEM.match(base)
    if not m:
        raise ValueError(f"not a result file name: {name}")
    return m["prefix"], int(m["seed"]), Job.parse(m["job"])

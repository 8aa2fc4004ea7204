"""The experiments, defined once: the paper's four (arXiv:2107.12580) and the offline demo.

The Makefile, the training CLI and the summaries all read this table. A user adds
experiments of their own in a JSON file (``EXPERIMENTS_FILE``), one object per name
with the same fields as ``Experiment``.
"""
from __future__ import annotations

import dataclasses
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

from memo.config import design
from memo.errors import MemoError


class SettingsError(ValueError, MemoError):
    """An experiment setting of the wrong type or outside its range; one line per setting."""


_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")  # safe in file names and Make targets
# an experiment's other outputs are named <name><suffix> (analysis/<name>_nn.npz, ...): a name
# ending in one of these could be another experiment's output
RESERVED_SUFFIXES = ("_nn", "_measures", "_benchmark", "_sweep", "_controls", "_flagged")
# sizes past these are typing errors, and would allocate without bound before any work
UPPER_BOUNDS = {"latent_dim": 4096, "epochs": 100_000, "n_is": 100_000, "folds": 1000,
                "repeats": 1000, "batch_size": 1 << 20, "n_perm": 10_000_000,
                "n_boot": 1_000_000}
# the importance samples of an evaluation batch (256 examples) are drawn at once:
# 256 * n_is * latent_dim floats, 1 GiB at this bound (the paper: at most 1000 * 64)
MAX_SAMPLE_FLOATS = 1 << 20
# a built-in model's name, or a user's class 'package.module:ClassName' (docs/models.md)
_MODEL = re.compile(r"^(?:[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*:)?[A-Za-z_]\w*$")


METHOD_CHOICES = {"splits": ("ours", "authors"), "eval_noise": ("fixed", "fresh"),
                  "flip": ("image", "batch")}
AUTHORS_METHOD = {"splits": "authors", "eval_noise": "fresh", "flip": "batch"}
# the summary's options an experiment holds (scripts/summarize.py's --test, --n-perm, --fdr-q,
# --n-boot), and the tests it can flag by (memo/score/flagging.py, memo/score/calibration.py)
SUMMARY_OPTIONS = ("test", "n_perm", "fdr_q", "n_boot")
SUMMARY_TESTS = ("moderated-t", "t", "permutation")


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


# Differentially private training (memo/train/private.py, docs/privacy.md): the `dp` setting's keys
# and the defaults filled in for those not given; epsilon must be given.
DP_DEFAULTS = {"delta": 1e-5, "max_grad_norm": 1.0}
DEFAULT_CONTROLS = 1000  # control images where an experiment does not say (a rate's 95 % interval
                         # is then about ±1.4 points at 5 %)
DP_KEYS = ("epsilon", "delta", "max_grad_norm")


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and abs(v) < float("inf")


def dp_problems(dp) -> list[str]:
    """The problems of a `dp` setting, one line each; empty when it is fine (or None)."""
    if dp is None:
        return []
    if not isinstance(dp, dict):
        return [f"dp = {dp!r} is not allowed (null, or an object with epsilon and optionally "
                f"delta, max_grad_norm)"]
    out = []
    unknown = sorted(map(str, set(dp) - set(DP_KEYS)))
    if unknown:
        out.append(f"dp has unknown keys {unknown} (valid keys: {', '.join(DP_KEYS)})")
    if "epsilon" not in dp:
        out.append("dp.epsilon is missing (the target epsilon, a number > 0)")
    checks = (("epsilon", lambda v: v > 0, "a number > 0"),
              ("delta", lambda v: 0 < v < 1, "a number with 0 < delta < 1, default 1e-5"),
              ("max_grad_norm", lambda v: v > 0, "a number > 0, default 1.0"))
    for key, ok, allowed in checks:
        if key in dp and not (_is_number(dp[key]) and ok(dp[key])):
            out.append(f"dp.{key} = {dp[key]!r} is not allowed ({allowed})")
    return out


def setting_problems(exp) -> list[str]:
    """Every setting of exp that has the wrong type or lies outside its range, as
    'field: value (allowed)' lines; empty when all are fine."""
    out = []

    def need(field: str, ok: bool, allowed: str):
        if not ok:
            out.append(f"{field} = {getattr(exp, field)!r} is not allowed ({allowed})")

    need("name", isinstance(exp.name, str) and bool(_NAME.fullmatch(exp.name))
         and not exp.name.endswith(RESERVED_SUFFIXES),
         "letters, digits, '_', '.', '-', not ending in " + ", ".join(RESERVED_SUFFIXES)
         + " (the names of an experiment's other outputs)")
    need("data", isinstance(exp.data, str) and bool(exp.data),
         "bmnist, fashion, cifar10, celeba or npz:PATH")
    need("model", isinstance(exp.model, str) and bool(_MODEL.fullmatch(exp.model)),
         "a built-in model's name, or your own class as 'module.path:ClassName'")
    need("model_args", exp.model_args is None or (
        isinstance(exp.model_args, dict) and ":" in str(exp.model)
        and all(isinstance(k, str) and k.isidentifier() for k in exp.model_args)),
         "null, or for a model given as 'module:Class' an object of keyword arguments of "
         "its from_settings")
    for field, low in (("latent_dim", 1), ("epochs", 1), ("n_is", 1), ("batch_size", 1),
                       ("seed", 0), ("folds", 2), ("repeats", 1), ("subset", 0),
                       ("checkpoint_every", 1), ("n_perm", 0), ("n_boot", 0)):
        value = getattr(exp, field)
        high = UPPER_BOUNDS.get(field)
        need(field, _is_int(value) and value >= low and (high is None or value <= high),
             f"an integer >= {low}" + (f" and <= {high}" if high else ""))
    if _is_int(exp.n_is) and _is_int(exp.latent_dim) and exp.n_is * exp.latent_dim > MAX_SAMPLE_FLOATS:
        out.append(f"n_is * latent_dim = {exp.n_is} * {exp.latent_dim} is not allowed (at most "
                   f"{MAX_SAMPLE_FLOATS}: the importance samples of an evaluation batch are "
                   "drawn at once)")
    need("controls", exp.controls is None or (_is_int(exp.controls) and exp.controls >= 0),
         "null (the default) or an integer >= 0")
    epochs = exp.epochs if _is_int(exp.epochs) and exp.epochs >= 1 else None
    need("eval_every", _is_int(exp.eval_every) and 1 <= exp.eval_every <= (epochs or exp.eval_every),
         f"an integer from 1 to epochs{f' = {epochs}' if epochs else ''}")
    need("lr", isinstance(exp.lr, (int, float)) and not isinstance(exp.lr, bool)
         and 0 < exp.lr < float("inf"), "a number > 0")
    need("hflip", exp.hflip is None or isinstance(exp.hflip, bool), "true, false or null")
    need("test", exp.test in SUMMARY_TESTS, " or ".join(map(repr, SUMMARY_TESTS)))
    need("fdr_q", isinstance(exp.fdr_q, (int, float)) and not isinstance(exp.fdr_q, bool)
         and 0 < exp.fdr_q < 1, "a number between 0 and 1")
    for field, choices in METHOD_CHOICES.items():
        need(field, getattr(exp, field) in choices, " or ".join(map(repr, choices)))
    need("results_dir", exp.results_dir == "" or (isinstance(exp.results_dir, str)
                                                  and bool(_NAME.fullmatch(exp.results_dir))),
         "empty, or letters, digits, '_', '.', '-'")
    return out + dp_problems(exp.dp)


_JOB_TAG = re.compile(r"^(?:cv_repeat(?P<repeat>\d+)_fold(?P<fold>\d+)|full_repeat(?P<full>\d+))$")


@dataclass(frozen=True)
class Job:
    """One unit of work: a (repeat, fold) model, or the full-data model (fold None)."""
    repeat: int
    fold: int | None

    @property
    def full(self) -> bool:
        return self.fold is None

    @property
    def mode(self) -> str:
        return "full" if self.full else "split-cv"

    @property
    def tag(self) -> str:
        """The authors' job part of a file name: cv_repeat<r>_fold<k> or full_repeat<r>."""
        return f"full_repeat{self.repeat}" if self.full else f"cv_repeat{self.repeat}_fold{self.fold}"

    @classmethod
    def parse(cls, tag: str) -> "Job":
        m = _JOB_TAG.match(tag)
        if not m:
            raise ValueError(f"cannot parse job {tag!r}; expected cv_repeat<R>_fold<K> or full_repeat0")
        if m["full"] is not None:
            return cls(int(m["full"]), None)
        return cls(int(m["repeat"]), int(m["fold"]))


FULL_JOB = Job(0, None)  # the model trained on all of D


def eval_epochs(epochs: int, eval_every: int) -> list[int]:
    """Epochs (1-based) after which log p(x) is computed: every eval_every, and the last."""
    out = list(range(eval_every, epochs + 1, eval_every))
    if not out or out[-1] != epochs:
        out.append(epochs)
    return out


@dataclass(frozen=True, kw_only=True)
class Experiment:
    name: str
    data: str                  # data set spec: bmnist, fashion, cifar10, celeba or npz:PATH
    model: str                 # key of memo.models.MODELS, or a user's 'module:Class'
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
    # The method (docs/fidelity.md): ours by default, the authors' for the paper's experiments.
    splits: str = "ours"       # K-fold permutations: "ours" (numpy) or "authors" (SyncRNG)
    eval_noise: str = "fixed"  # evaluation binarization/dequantization: "fixed" per example,
                               # or "fresh" for every model (the authors' data loader)
    flip: str = "image"        # random flips: each "image", or the whole "batch" with p = 1/2
    results_dir: str = ""      # directory under results/ (default: the name)
    # differentially private training (docs/privacy.md): None, or {"epsilon": ε, "delta": δ,
    # "max_grad_norm": C}; stored complete (DP_DEFAULTS filled in, floats)
    dp: dict | None = None
    # control images (docs/calibration.md): this many images of the data's test split that no
    # model trains on, scored by every model like a training example; their flag rate is the
    # measured false-positive rate. 0: none (the paper's experiments: the authors had none);
    # None: DEFAULT_CONTROLS where the data set has a test split, else none
    controls: int | None = None
    # keyword arguments of a user model's from_settings (docs/models.md), JSON values; only for
    # a model given as 'module:Class'
    model_args: dict | None = None
    # The summary's options (scripts/summarize.py, the same names with '-' for '_';
    # docs/calibration.md): its command line overrides them for one run. They change no result
    # file, only the summary and what is made from it.
    test: str = "moderated-t"  # the per-example test behind the flag: SUMMARY_TESTS
    n_perm: int = 2000         # labellings per example of the permutation null; 0: no calibration
    fdr_q: float = 0.05        # false discovery rate of the flag (Benjamini-Hochberg)
    n_boot: int = 1000         # bootstrap replicates over repeats

    def __post_init__(self):
        problems = setting_problems(self)
        if problems:
            raise SettingsError("\n".join(f"experiment {self.name!r}: {p}" for p in problems))
        if self.dp is not None:
            full = {**DP_DEFAULTS, **self.dp}
            object.__setattr__(self, "dp", {k: float(full[k]) for k in DP_KEYS})

    def __hash__(self):  # the generated hash would fail on the dp dict
        return hash(tuple(json.dumps(v, sort_keys=True) if isinstance(v, dict) else v
                          for v in dataclasses.astuple(self)))

    @property
    def norm(self) -> str:
        """The DCVAEs' normalization layers (memo/models/__init__.py): GroupNorm for private training."""
        return "group" if self.dp else "batch"

    @property
    def directory(self) -> str:
        """The experiment's folder under the results root."""
        return self.results_dir or self.name

    @property
    def method(self) -> dict:
        return {field: getattr(self, field) for field in METHOD_CHOICES}

    def eval_epochs(self) -> list[int]:
        return eval_epochs(self.epochs, self.eval_every)

    def cv_jobs(self, repeat: int) -> list[Job]:
        """The K fold models of one repeat."""
        return [Job(repeat, k) for k in range(self.folds)]

    def jobs(self) -> list[Job]:
        """Every unit of work: one per (repeat, fold), plus the full-data model."""
        return [job for r in range(self.repeats) for job in self.cv_jobs(r)] + [FULL_JOB]


def summary_options(exp: Experiment | None) -> dict:
    """The summary's options (SUMMARY_OPTIONS) an experiment sets; the defaults without one."""
    if exp is not None:
        return {k: getattr(exp, k) for k in SUMMARY_OPTIONS}
    return {f.name: f.default for f in dataclasses.fields(Experiment) if f.name in SUMMARY_OPTIONS}


def refuse_private(exp: Experiment) -> None:
    """Private training (memo/train/private.py) is one model per process; a group refuses it."""
    if exp.dp is not None:
        raise ValueError(f"experiment {exp.name} trains with differential privacy (dp), one "
                         f"model per process, and cannot be trained as a group: use GROUP=1 "
                         f"(one --job per process)")


# The exact-likelihood family beside a VAE experiment (memo/models/made.py, docs/models.md): hidden
# width 128, 20 epochs (sized to run on 2 cores beside the demo, not tuned), log p exact (n_is
# unused); a VAE experiment with these fields replaced keeps its data, K, L and splits
MADE_FIELDS = dict(model="BernoulliMADE", latent_dim=128, epochs=20, eval_every=10, n_is=1)

# The paper's settings (supplement B.3): Adam, batch 64, seed 42, K = L = 10, the
# authors' method and result directories, so their published results are read as they are.
# `fashion_demo` is the offline default, sized to finish in minutes on a 2-core CPU:
# a small training set and many epochs make memorization visible quickly.
_TABLE = [
    Experiment(name="bmnist_lr3", data="bmnist", model="BernoulliMLPVAE", latent_dim=16,
               lr=1e-3, epochs=100, eval_every=5, n_is=256,
               results_dir="binarized_mnist_extra_lr3", controls=0, **AUTHORS_METHOD),
    Experiment(name="bmnist_lr4", data="bmnist", model="BernoulliMLPVAE", latent_dim=16,
               lr=1e-4, epochs=100, eval_every=5, n_is=256,
               results_dir="binarized_mnist_extra_lr4", controls=0, **AUTHORS_METHOD),
    Experiment(name="cifar10", data="cifar10", model="DiagonalGaussianDCVAE", latent_dim=64,
               lr=1e-3, epochs=100, eval_every=50, n_is=128, controls=0, **AUTHORS_METHOD),
    Experiment(name="celeba", data="celeba", model="ConstantGaussianDCVAE", latent_dim=32,
               lr=1e-3, epochs=50, eval_every=25, n_is=128, controls=0, **AUTHORS_METHOD),
    # log p at epochs 20 and 40 only: the final epoch's values are the same as with more
    # evaluations, and the time goes to the 1,000 control images instead (docs/calibration.md)
    _DEMO := Experiment(name="fashion_demo", data="fashion", model="BernoulliMLPVAE",
                        latent_dim=16, lr=1e-3, epochs=40, eval_every=20, n_is=128, folds=5,
                        repeats=2, subset=2000, checkpoint_every=10),
    # the demo's data, K and L with the exact-likelihood model (memo/models/made.py, docs/models.md):
    # which examples an autoregressive model memorizes beside the VAE
    dataclasses.replace(_DEMO, name="fashion_demo_made", **MADE_FIELDS),
    # the planted-memorization benchmark (memo/data/planted.py): the demo's settings on 2000
    # Fashion-MNIST images with singletons and duplicate groups planted, with 4 repeats (21
    # models): the design where the flags find half of the singletons (docs/calibration.md)
    _PLANTED := Experiment(name="fashion_planted", data="planted", model="BernoulliMLPVAE",
                           latent_dim=16, lr=1e-3, epochs=40, eval_every=20, n_is=128, folds=5,
                           repeats=4, checkpoint_every=10),
    # the benchmark's data, K and L with MADE: which planted examples each family finds
    dataclasses.replace(_PLANTED, name="fashion_planted_made", **MADE_FIELDS),
    # the same, every model trained with DP-SGD at a target ε (`make dp`, docs/privacy.md)
    *[dataclasses.replace(_PLANTED, name=f"fashion_planted_dp{eps:g}", dp={"epsilon": eps})
      for eps in (100, 10, 1)],
    # the training-set size sweep (scripts/sweep.py): nested subsets of Fashion-MNIST, each
    # full model trained for about the same number of steps as the demo's (80,000 examples
    # seen), so small sets are trained for more epochs (size and passes go together); the full
    # model keeps its weights at every checkpoint, four snapshots per size
    *[Experiment(name=f"fashion_n{n}", data="fashion", model="BernoulliMLPVAE", latent_dim=16,
                 lr=1e-3, epochs=max(10, 80_000 // n), eval_every=max(10, 80_000 // n),
                 n_is=128, folds=5, repeats=1, subset=n,
                 checkpoint_every=-(-max(10, 80_000 // n) // 4))
      for n in (250, 500, 1000, 2000, 4000, 8000)],
]
EXPERIMENTS: dict[str, Experiment] = {e.name: e for e in _TABLE}
PAPER_EXPERIMENTS = ["bmnist_lr3", "bmnist_lr4", "cifar10", "celeba"]
DEMO_EXPERIMENT = "fashion_demo"  # what `make demo` runs
BENCHMARK_EXPERIMENT = "fashion_planted"  # what `make benchmark` runs
DP_SWEEP = [BENCHMARK_EXPERIMENT] + [name for name in EXPERIMENTS
                                    if name.startswith(BENCHMARK_EXPERIMENT + "_dp")]
SIZE_SWEEP = [name for name in EXPERIMENTS if re.fullmatch(r"fashion_n\d+", name)]


class UnknownExperimentError(ValueError, MemoError):
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
    if not isinstance(table, dict):
        raise UnknownExperimentError(
            f"{path}: expected a JSON object {{name: {{field: value}}}}, got a "
            f"{type(table).__name__}")
    fields = {f.name for f in dataclasses.fields(Experiment)}
    out = {}
    for name, spec in table.items():
        if not isinstance(spec, dict):
            raise UnknownExperimentError(
                f"{path}: experiment {name!r} must be an object {{field: value}}, got {spec!r}")
        unknown = set(spec) - fields
        if unknown:
            raise UnknownExperimentError(
                f"{path}: experiment {name!r} has unknown fields {sorted(unknown)}; "
                f"valid fields: {sorted(fields - {'name'})}")
        try:
            out[name] = Experiment(name=name, **design.fill(spec))
        except TypeError as e:
            raise UnknownExperimentError(f"{path}: experiment {name!r}: {e}") from None
        except SettingsError as e:
            raise SettingsError("\n".join(f"{path}: {line}" for line in str(e).splitlines())) \
                from None
    return out


def all_experiments() -> dict[str, Experiment]:
    user = load_user_experiments()
    taken = sorted(set(user) & set(EXPERIMENTS))
    if taken:
        raise UnknownExperimentError(
            f"{os.environ.get('EXPERIMENTS_FILE')}: {', '.join(map(repr, taken))} "
            "already named built-in experiments; give yours other names")
    return {**EXPERIMENTS, **user}


def get(name: str) -> Experiment:
    table = all_experiments()
    if name not in table:
        raise UnknownExperimentError(
            f"unknown experiment {name!r}; valid choices: {', '.join(sorted(table))} "
            "(add your own in a JSON file named by EXPERIMENTS_FILE)")
    return table[name]

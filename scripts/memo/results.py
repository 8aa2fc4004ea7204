"""Result files in the authors' layout and schema (PAPER.md §7), written atomically.

results/<exp>/results/<Dataset>_<Model>_<desc>_seed<S>_cv_repeat<r>_fold<k>.json.gz
results/<exp>/results/<Dataset>_<Model>_<desc>_seed<S>_full_repeat0.json.gz
results/<exp>/checkpoints/<stem>_epoch<E>.params          (state_dict; full model keeps its last)

Content: {"meta": {...}, "results": {"logpxs": {"<epoch>": {"train": {"<idx>": lp}, "test": ...}},
"losses": {"train": [...], "test": [...]}, "ess": (ours, same shape as logpxs)}}.
"""
from __future__ import annotations

import gzip
import json
import re
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .fileio import atomic_write_bytes

AUTHOR_META_KEYS = ("batch_size", "dataset", "epochs", "fold_idx", "img_dim", "latent_dim",
                    "learning_rate", "mode", "model", "num_feature", "num_iw_samples", "run",
                    "seed", "trainer_params")
_JOB = re.compile(r"^(?:cv_repeat(?P<repeat>\d+)_fold(?P<fold>\d+)|full_repeat(?P<full>\d+))$")
_STEM = re.compile(r"^(?P<prefix>.+)_seed(?P<seed>\d+)_(?P<job>cv_repeat\d+_fold\d+|full_repeat\d+)$")


class ResultFileError(ValueError):
    pass


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
        return f"full_repeat{self.repeat}" if self.full else f"cv_repeat{self.repeat}_fold{self.fold}"

    @classmethod
    def parse(cls, tag: str) -> "Job":
        m = _JOB.match(tag)
        if not m:
            raise ValueError(f"cannot parse job {tag!r}; expected cv_repeat<R>_fold<K> or full_repeat0")
        if m["full"] is not None:
            return cls(int(m["full"]), None)
        return cls(int(m["repeat"]), int(m["fold"]))


def stem(dataset: str, model: str, description: str, seed: int, job: Job) -> str:
    return f"{dataset}_{model}_{description}_seed{seed}_{job.tag}"


def parse_stem(name: str) -> tuple[str, int, Job]:
    """(prefix '<Dataset>_<Model>_<desc>', seed, job) from a result file name or stem."""
    base = Path(name).name.removesuffix(".json.gz")
    m = _STEM.match(base)
    if not m:
        raise ValueError(f"not a result file name: {name}")
    return m["prefix"], int(m["seed"]), Job.parse(m["job"])


def result_path(results_root: str | Path, experiment: str, file_stem: str) -> Path:
    return Path(results_root) / experiment / "results" / f"{file_stem}.json.gz"


def checkpoint_path(results_root: str | Path, experiment: str, file_stem: str, epoch: int) -> Path:
    return Path(results_root) / experiment / "checkpoints" / f"{file_stem}_epoch{epoch}.params"


def resume_path(results_root: str | Path, experiment: str, file_stem: str) -> Path:
    return Path(results_root) / experiment / "checkpoints" / f"{file_stem}_resume.pt"


def write_result(path: str | Path, meta: dict, results: dict) -> None:
    blob = json.dumps({"meta": meta, "results": results}, sort_keys=True).encode()
    # mtime=0 keeps the gzip bytes a function of the content alone
    atomic_write_bytes(path, gzip.compress(blob, mtime=0))


def read_result(path: str | Path) -> dict:
    """Load and check one result file; any defect raises ResultFileError naming the file."""
    path = Path(path)
    try:
        with gzip.open(path, "rt") as f:
            content = json.load(f)
    except FileNotFoundError:
        raise ResultFileError(f"{path}: result file does not exist") from None
    except (OSError, EOFError, zlib.error, json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ResultFileError(f"{path}: truncated or corrupt result file ({e}); "
                              "delete it and re-run make to rebuild it") from None
    try:
        meta, res = content["meta"], content["results"]
        missing = [k for k in ("dataset", "model", "seed", "mode", "run") if k not in meta]
        if missing:
            raise KeyError(f"meta lacks {missing}")
        logpxs, losses = res["logpxs"], res["losses"]
        for epoch, parts in logpxs.items():  # structure here; values in `as_arrays`
            int(epoch)
            if not (isinstance(parts["train"], dict) and isinstance(parts["test"], dict)):
                raise TypeError(f"epoch {epoch}: train/test are not objects")
        losses["train"], losses["test"]
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        raise ResultFileError(f"{path}: not a result file in the expected schema ({e})") from None
    return content


def as_arrays(values: dict, path: str | Path = "") -> tuple[np.ndarray, np.ndarray]:
    """{"<idx>": value} of a result file -> (int64 indices, float64 values), checked."""
    try:
        idx = np.fromiter(map(int, values.keys()), dtype=np.int64, count=len(values))
        val = np.fromiter(values.values(), dtype=np.float64, count=len(values))
    except (TypeError, ValueError) as e:
        raise ResultFileError(f"{path}: not a result file in the expected schema ({e})") from None
    return idx, val

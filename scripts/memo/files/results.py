"""Result files in the authors' layout and schema (PAPER.md §7), written atomically.

results/<exp>/results/<Dataset>_<Model>_<desc>_seed<S>_cv_repeat<r>_fold<k>.json.gz
results/<exp>/results/<Dataset>_<Model>_<desc>_seed<S>_full_repeat0.json.gz
results/<exp>/checkpoints/<stem>_epoch<E>.params          (state_dict; full model keeps its last)
results/<exp>/checkpoints/<stem>_resume.pt                (resume state while a job runs)
results/<exp>/checkpoints/<stem>_cost.json                (ours: CPU and wall seconds of training)

The full model also keeps its weights at every evaluation epoch (<stem>_epoch<E>.params): the
one-model memorization measures (memo/measures/measures.py) average over them.

Content: {"meta": {...}, "results": {"logpxs": {"<epoch>": {"train": {"<idx>": lp}, "test": ...}},
"losses": {"train": [...], "test": [...]}, "ess": (ours, same shape as logpxs),
"controls": (ours, experiments with control images) {"logpxs": {"<epoch>": {"<test idx>": lp}},
"ess": {...}}}}: the control images are keyed by their position in the test split.
"""
from __future__ import annotations

import gzip
import json
import zlib
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from memo.config import naming
from memo.config.experiments import AUTHORS_METHOD, METHOD_CHOICES, Experiment, Job
from memo.fileio import atomic_write_bytes
from memo.errors import MemoError

AUTHOR_META_KEYS = ("batch_size", "dataset", "epochs", "fold_idx", "img_dim", "latent_dim",
                    "learning_rate", "mode", "model", "num_feature", "num_iw_samples", "run",
                    "seed", "trainer_params")


CONTROLS = "controls"  # our key of the control images' log p and ESS in "results"


class ResultFileError(ValueError, MemoError):
    pass


@dataclass(frozen=True)
class JobFiles:
    """Every file one job writes."""
    result: Path       # <root>/<exp>/results/<stem>.json.gz
    resume: Path       # <root>/<exp>/checkpoints/<stem>_resume.pt, while the job runs
    resume_previous: Path  # the resume file before the last one (<stem>_resume.prev.pt)
    checkpoint: Path   # <root>/<exp>/checkpoints/<stem>_epoch<E>.params, full model only
    cost: Path         # <root>/<exp>/checkpoints/<stem>_cost.json: seconds spent training

    def weights_at(self, epoch: int) -> Path:
        """The full model's weights after `epoch` (kept for every evaluation epoch)."""
        stem = self.checkpoint.name.rsplit("_epoch", 1)[0]
        return self.checkpoint.with_name(f"{stem}_epoch{epoch}.params")


def job_files(exp: Experiment, job: Job, root: str | Path = "results") -> JobFiles:
    """The one place that names a job's files."""
    stem = naming.file_stem(exp, job)
    base = Path(root) / exp.directory
    return JobFiles(result=base / "results" / f"{stem}.json.gz",
                    resume=base / "checkpoints" / f"{stem}_resume.pt",
                    resume_previous=base / "checkpoints" / f"{stem}_resume.prev.pt",
                    checkpoint=base / "checkpoints" / f"{stem}_epoch{exp.epochs}.params",
                    cost=base / "checkpoints" / f"{stem}_cost.json")


def meta_for(exp: Experiment, job: Job, images_shape: tuple, dataset: str, hflip: bool,
             speed: dict | None = None, n_controls: int = 0) -> dict:
    """A result file's meta: the authors' keys with their values' conventions (PAPER.md §7),
    then ours (experiment, folds, repeats, data spec, method, every setting).
    images_shape: (n, C, H, W) of the training set D."""
    n, channels, size = int(images_shape[0]), int(images_shape[1]), int(images_shape[-1])
    desc = naming.description(exp)
    settings = asdict(exp)
    settings["controls"] = n_controls  # the number scored (the default resolved)
    for key, default in UNRECORDED.items():  # files stay as they were before these existed
        if settings[key] == default:
            del settings[key]
    return {
        "batch_size": exp.batch_size, "dataset": dataset, "epochs": exp.epochs,
        "fold_idx": job.fold, "img_dim": size, "latent_dim": exp.latent_dim,
        "learning_rate": exp.lr, "mode": job.mode, "model": f"{exp.model}_{desc}",
        "num_feature": naming.num_feature(exp.model), "num_iw_samples": exp.n_is,
        "run": job.repeat, "seed": exp.seed,
        "trainer_params": {"hflip": True} if hflip else {},
        # ours
        "experiment": exp.name, "num_folds": exp.folds, "repeats": exp.repeats,
        "data_spec": exp.data, "subset": exp.subset, "n": n, "in_channels": channels,
        "method": exp.method, "settings": settings, "speed": speed,
    }


# Settings a result depends on: the Experiment field and the meta key the authors' files record
# it under. Our files also keep every field under meta["settings"].
AUTHOR_SETTING_KEYS = {"lr": "learning_rate", "epochs": "epochs", "n_is": "num_iw_samples",
                       "batch_size": "batch_size", "latent_dim": "latent_dim", "seed": "seed"}
OUR_METHOD = {field: choices[0] for field, choices in METHOD_CHOICES.items()}
RESULT_SETTINGS = ("data", "model", "latent_dim", "lr", "epochs", "eval_every", "n_is",
                   "batch_size", "seed", "folds", "repeats", "subset", "hflip", "splits",
                   "eval_noise", "flip", "dp", "controls", "model_args")
# what a file records of a setting it leaves out: files of non-private runs and of runs without
# control images stay as they were before those settings existed
UNRECORDED = {"dp": None, "controls": 0, "model_args": None}


def recorded_method(meta: dict) -> dict:
    """The method (splits, eval_noise, flip) a result file was made with: recorded in ours
    (files from before it was recorded used our method); the authors' code has its own."""
    ours = meta.get("settings")
    if not isinstance(ours, dict):
        return dict(AUTHORS_METHOD)
    return {f: ours.get(f, default) for f, default in OUR_METHOD.items()}


def settings_mismatches(meta: dict, exp: Experiment) -> list[tuple[str, object, object]]:
    """(field, value recorded in a result file's meta, the experiment's value now) for every
    setting the file records differently. Files of the authors' code record fewer settings;
    those are compared."""
    ours = meta.get("settings")
    if isinstance(ours, dict):
        recorded = {**recorded_method(meta), **{f: ours[f] for f in RESULT_SETTINGS if f in ours}}
    else:  # the authors' code
        recorded = {**recorded_method(meta),
                    **{f: meta[k] for f, k in AUTHOR_SETTING_KEYS.items() if k in meta}}
        if "dataset" in meta and meta["dataset"] != naming.dataset_name(exp.data):
            return [("dataset", meta["dataset"], naming.dataset_name(exp.data))]
    return differences(recorded, exp)


def differences(recorded: dict, exp: Experiment) -> list[tuple[str, object, object]]:
    """(field, recorded value, the experiment's value now) for every setting in `recorded`
    (a file's record of RESULT_SETTINGS, or a part of it) that the experiment has differently;
    settings a file leaves out count as UNRECORDED's values."""
    recorded = {**UNRECORDED, **recorded}
    now = {f: getattr(exp, f) for f in recorded}
    if "controls" in recorded:  # the default resolved on both sides (a resume file keeps None)
        expected = naming.controls_count(exp)
        if recorded["controls"] is None:
            recorded["controls"] = expected
        if expected is None:     # npz data: known once the file is read; not compared
            recorded.pop("controls")
        else:
            now["controls"] = expected
    return [(f, v, now[f]) for f, v in recorded.items() if v != now[f]]


def mismatch_message(what: str, exp: Experiment, field: str, recorded, now, fix: str) -> str:
    """The one wording of a refusal to continue or mix work made under other settings."""
    return (f"{what} was made with {field}={recorded!r} but experiment {exp.name} now has "
            f"{field}={now!r}: {fix}, or restore {field}={recorded!r}")


def check_siblings(exp: Experiment, root: str | Path = "results") -> None:
    """Refuse to train a job of an experiment whose existing result files were made under other
    settings: the new file could never be summarized with them. Reads one of them."""
    folder = Path(root) / exp.directory / "results"
    existing = sorted(folder.glob("*.json.gz")) if folder.is_dir() else []
    if not existing:
        return
    for field, recorded, now in settings_mismatches(read_result(existing[0])["meta"], exp):
        raise ResultFileError(mismatch_message(
            str(existing[0]), exp, field, recorded, now,
            f"training more of it would mix the two; delete {folder}/ to retrain the experiment"))


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

"""Result files in the authors' layout and schema (the authors' code), written atomically.

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
import re
import zlib
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from memo.config import naming
from memo.config.experiments import (AUTHORS_METHOD, METHOD_CHOICES, SUMMARY_OPTIONS,
                                     Experiment, Job)
from memo.fileio import atomic_write_bytes, inside, one_line
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
    """A result file's meta: the authors' keys with their values' conventions (the authors' code),
    then ours (experiment, folds, repeats, data spec, method, every setting).
    images_shape: (n, C, H, W) of the training set D."""
    n, channels, size = int(images_shape[0]), int(images_shape[1]), int(images_shape[-1])
    desc = naming.description(exp)
    settings = {k: v for k, v in asdict(exp).items() if k not in SUMMARY_OPTIONS}
    # (the summary's options change no result)
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
# `repeats` is not among them: a repeat's split and seeds depend on (seed, repeat) alone
# (memo.config.splits), so repeats can be added, or extra ones ignored, without retraining the rest
RESULT_SETTINGS = ("data", "model", "latent_dim", "lr", "epochs", "eval_every", "n_is",
                   "batch_size", "seed", "folds", "subset", "hflip", "splits",
                   "eval_noise", "flip", "dp", "controls", "model_args")
# Settings a summary depends on (the settings stamp, scripts/plan.py): those of its result
# files, the number of repeats it reads (more or fewer repeats re-summarize without retraining)
# and the summary's own options
STAMP_SETTINGS = (*RESULT_SETTINGS, "repeats", *SUMMARY_OPTIONS)
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
    why = (" (folds cannot grow like repeats: K changes every split)" if field == "folds"
           else "")
    return (f"{what} was made with {field}={recorded!r} but experiment {exp.name} now has "
            f"{field}={now!r}{why}: {fix}, or restore {field}={recorded!r}")


def check_folders(exp: Experiment, root: str | Path = "results") -> None:
    """Refuse to write through a results/ or checkpoints/ folder of the experiment that
    resolves outside the experiment's own folder (a symbolic link in an unpacked archive
    would have training write anywhere)."""
    base = Path(root) / exp.directory
    for sub in ("results", "checkpoints"):
        inside(base / sub, base)


def check_siblings(exp: Experiment, root: str | Path = "results") -> None:
    """Refuse to train a job of an experiment whose existing result files were made under other
    settings: the new file could never be summarized with them. Reads one of them."""
    folder = Path(root) / exp.directory / "results"
    existing = sorted(folder.glob("*.json.gz")) if folder.is_dir() else []
    if not existing:
        return
    for field, recorded, now in settings_mismatches(read_result(existing[0], exp)["meta"], exp):
        raise ResultFileError(mismatch_message(
            str(existing[0]), exp, field, recorded, now,
            f"training more of it would mix the two; delete {folder}/ to retrain the experiment"))


def write_result(path: str | Path, meta: dict, results: dict) -> None:
    blob = json.dumps({"meta": meta, "results": results}, sort_keys=True).encode()
    # mtime=0 keeps the gzip bytes a function of the content alone
    atomic_write_bytes(path, gzip.compress(blob, mtime=0))


# A result file holds a few numbers per example and evaluation epoch (log p, ESS; ~35 bytes
# each as JSON): what one may inflate to is bounded by the experiment it belongs to
BYTES_PER_NUMBER = 64
MAX_RESULT_BYTES = 256 << 20   # without an experiment: well above the paper's files (~20 MB)
MAX_DEPTH = 64                 # result files nest 6 deep


def max_result_bytes(exp: Experiment | None) -> int:
    """The most a result file of `exp` may inflate to: every example (at most the data set's
    size, or the subset) and control image scored twice per evaluation epoch, the losses of
    every epoch, and 1 MiB for the rest."""
    if exp is None:
        return MAX_RESULT_BYTES
    n = naming.max_examples(exp)
    if n is None:
        return MAX_RESULT_BYTES
    numbers = 2 * (n + (naming.controls_count(exp) or 0)) * len(exp.eval_epochs()) + 2 * exp.epochs
    return (1 << 20) + BYTES_PER_NUMBER * numbers


def _unique_keys(pairs: list) -> dict:
    """A JSON object; the same key twice is an error (json keeps the last, silently)."""
    out = dict(pairs)
    if len(out) != len(pairs):
        seen = set()
        twice = next(k for k, _ in pairs if k in seen or seen.add(k))
        raise ValueError(f"the key {twice!r} appears twice in one object")
    return out


def _inflate(path: Path, limit: int) -> bytes:
    """The gzip file's content, refused once it passes `limit` bytes (nothing more is read)."""
    with gzip.open(path, "rb") as f:
        blob = f.read(limit + 1)
    if len(blob) > limit:
        raise ResultFileError(
            f"{path}: inflates to more than {limit / 2**20:.0f} MiB, more than a result file "
            "of this experiment holds; it is not one of its result files (delete it, or fetch "
            "the archive again)")
    return blob


def _depth_ok(blob: bytes) -> bool:
    """Whether no bracket nests deeper than MAX_DEPTH (brackets inside strings counted too:
    result files have none)."""
    depth = 0
    for m in _BRACKETS.finditer(blob):
        depth += 1 if m.group() in (b"{", b"[") else -1
        if depth > MAX_DEPTH:
            return False
    return True


_BRACKETS = re.compile(rb"[\[\]{}]")


def _is_index(key) -> bool:
    """'0', '17': a decimal without sign or leading zero ('05' would be a second name of 5)."""
    return isinstance(key, str) and key.isascii() and key.isdigit() and (key == "0" or key[0] != "0")


def _count(meta: dict, key: str, low: int, path: Path) -> None:
    """meta[key], when present, is an integer >= low (JSON, not a string or a boolean)."""
    v = meta.get(key)
    if v is not None and not (type(v) is int and v >= low):
        raise ResultFileError(f"{path}: meta.{key} = {v!r:.40} is not an integer >= {low}; "
                              "the file is damaged or not a result file")


def read_result(path: str | Path, exp: Experiment | None = None) -> dict:
    """Load and check one result file; any defect raises ResultFileError naming the file.
    exp: the experiment the file belongs to, which bounds its size (max_result_bytes)."""
    path = Path(path)
    try:
        blob = _inflate(path, max_result_bytes(exp))
        if not _depth_ok(blob):
            raise ValueError(f"objects nested deeper than {MAX_DEPTH}")
        content = json.loads(blob, object_pairs_hook=_unique_keys)
    except FileNotFoundError:
        raise ResultFileError(f"{path}: result file does not exist") from None
    except (OSError, EOFError, zlib.error, ValueError, UnicodeDecodeError, RecursionError) as e:
        if isinstance(e, ResultFileError):
            raise
        raise ResultFileError(f"{path}: truncated or corrupt result file ({one_line(e, 100)}); "
                              "delete it and re-run make to rebuild it") from None
    try:
        meta, res = content["meta"], content["results"]
        missing = [k for k in ("dataset", "model", "seed", "mode", "run") if k not in meta]
        if missing:
            raise KeyError(f"meta lacks {missing}")
        logpxs, losses = res["logpxs"], res["losses"]
        for epoch, parts in logpxs.items():  # structure here; values in `as_arrays`
            if not _is_index(epoch) or epoch == "0":
                raise ValueError(f"epoch key {epoch!r:.20} is not an epoch number (1, 2, ...)")
            if not (isinstance(parts["train"], dict) and isinstance(parts["test"], dict)):
                raise TypeError(f"epoch {epoch}: train/test are not objects")
        for part in ("train", "test"):
            if not (isinstance(losses[part], list)
                    and all(type(v) in (int, float) for v in losses[part])):
                raise TypeError(f"losses.{part} is not a list of numbers")
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        raise ResultFileError(f"{path}: not a result file in the expected schema "
                              f"({one_line(e, 100)})") from None
    if meta["mode"] not in ("split-cv", "full"):
        raise ResultFileError(f"{path}: meta.mode = {meta['mode']!r:.40} is neither 'split-cv' "
                              "nor 'full'; the file is damaged or not a result file")
    for key, low in (("run", 0), ("fold_idx", 0), ("n", 1), ("num_folds", 2), ("repeats", 1),
                     ("seed", 0), ("epochs", 1)):
        _count(meta, key, low, path)
    if meta["mode"] == "split-cv" and meta.get("fold_idx") is None:
        raise ResultFileError(f"{path}: a fold model's file without meta.fold_idx")
    # one training loss per epoch: the experiment's epochs, else those the file states
    epochs = exp.epochs if exp is not None else meta.get("epochs")
    if epochs is not None and len(losses["train"]) > epochs:
        raise ResultFileError(f"{path}: {len(losses['train'])} training losses for "
                              f"epochs = {epochs}; " + (f"it is not a result file of {exp.name}"
                              if exp is not None else "the file is damaged or not a result file"))
    ours = meta.get("settings")
    if isinstance(ours, dict):  # the authors' keys and ours must tell one story
        for field, key in AUTHOR_SETTING_KEYS.items():
            if key in meta and field in ours and meta[key] != ours[field]:
                raise ResultFileError(
                    f"{path}: meta.{key} = {meta[key]!r:.40} but meta.settings.{field} = "
                    f"{ours[field]!r:.40}; the file contradicts itself: delete it and re-run "
                    "make to rebuild it")
    return content


def as_arrays(values: dict, path: str | Path = "", upper: float | None = None
              ) -> tuple[np.ndarray, np.ndarray]:
    """{"<idx>": value} of a result file -> (int64 indices, float64 values), checked: indices
    written plainly (no sign, no leading zero, so none has two names), values JSON numbers
    (no strings, no booleans), finite and at most `upper` when given (log p: 0)."""
    bad_key = next((k for k in values if not _is_index(k)), None)
    if bad_key is not None:
        raise ResultFileError(f"{path}: example index {bad_key!r:.20} is not a plain decimal "
                              "(0, 1, 17, ...); the file is damaged or was edited")
    bad = next((v for v in values.values() if type(v) not in (int, float)), None)
    if bad is not None:
        raise ResultFileError(f"{path}: a value {bad!r:.30} where a number belongs; the file "
                              "is damaged or was edited")
    idx = np.fromiter(map(int, values.keys()), dtype=np.int64, count=len(values))
    val = np.fromiter(values.values(), dtype=np.float64, count=len(values))
    if upper is not None and not (val <= upper).all():  # also false for nan
        worst = float(val[~(val <= upper)][0])
        raise ResultFileError(f"{path}: log p(x) = {worst!r} (a log-probability is finite and "
                              f"at most {upper}); the file is damaged or was edited")
    return idx, val

"""The measures file analysis/<exp>_measures.npz: every memorization measure of one experiment
per example (memo/measures/measures.py computes them, scripts/measures.py writes the file and
its CSV), read by the figures and the report.

Arrays: value_<measure> (float64, NaN where not available), index (positions in D), role and
group of a planted layout when there is one, and meta (a JSON string: the experiment, CPU
seconds, models, training seconds, the copying record, the full model's epochs used, the
settings measures were computed with, the Spearman correlation between two independent
evaluations of a noisy measure, and the summary they were computed from: its file name and a
fingerprint of its content, so that measures of an earlier summary are never read as those of
the summary beside them). Written
whole and compressed (fileio.atomic_write_npz); read without pickles.
"""
from __future__ import annotations

import hashlib
import json
import os
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from memo.errors import FileFormatError
from memo.fileio import atomic_write_npz


@dataclass
class MeasureSet:
    experiment: str
    index: np.ndarray                      # (n,) positions in D
    values: dict[str, np.ndarray]          # measure -> (n,) float64 (nan: not available)
    seconds: dict[str, float]              # CPU seconds spent computing each measure here
    models: dict[str, int]                 # models each measure needs trained
    train_seconds: dict[str, float]        # CPU seconds of training them (nan: not recorded)
    copying: dict = field(default_factory=dict)   # ratio and interval; the control's
    epochs: list[int] = field(default_factory=list)   # the full model's epochs used
    role: np.ndarray | None = None         # planted layout (memo/data/planted.py), or None
    group: np.ndarray | None = None
    settings: dict = field(default_factory=dict)  # how measures were computed (draws, h, ...)
    reliability: dict = field(default_factory=dict)   # measure -> Spearman of two evaluations
    summary: dict = field(default_factory=dict)   # the summary used: file name, fingerprint

    @property
    def n(self) -> int:
        return len(self.index)


def path_for(summary_path: str | os.PathLike) -> Path:
    """analysis/<exp>_measures.npz beside the summary analysis/<exp>.npz."""
    p = Path(summary_path)
    return p.with_name(p.stem + "_measures.npz")


def save(ms: MeasureSet, path: str | os.PathLike) -> None:
    meta = {"experiment": ms.experiment, "seconds": ms.seconds, "models": ms.models,
            "train_seconds": ms.train_seconds, "copying": ms.copying, "epochs": ms.epochs,
            "settings": ms.settings, "reliability": ms.reliability, "summary": ms.summary}
    arrays = {f"value_{k}": v for k, v in ms.values.items()}
    arrays["index"] = ms.index
    if ms.role is not None:
        arrays["role"], arrays["group"] = ms.role, ms.group
    arrays["meta"] = np.array(json.dumps(meta))
    atomic_write_npz(path, arrays)


def load(path: str | os.PathLike) -> MeasureSet:
    """The measures; FileFormatError (one line naming the file) for a missing or unreadable
    file."""
    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as z:
            meta = json.loads(str(z["meta"]))
            values = {k.removeprefix("value_"): z[k].astype(float) for k in z.files
                      if k.startswith("value_")}
            index = z["index"].astype(np.int64)
            role = z["role"].astype(np.int64) if "role" in z.files else None
            group = z["group"].astype(np.int64) if "group" in z.files else None
        ms = MeasureSet(meta["experiment"], index, values, meta["seconds"], meta["models"],
                        meta["train_seconds"], meta.get("copying", {}), meta.get("epochs", []),
                        role, group, settings=meta.get("settings", {}),
                        reliability=meta.get("reliability", {}),
                        summary=meta.get("summary") or {})
    except (OSError, ValueError, KeyError, TypeError, EOFError, zipfile.BadZipFile) as e:
        raise FileFormatError(f"cannot read measures file {path} ({e}); delete it and run make "
                              "again") from None
    check_current(ms, path)
    return ms


def fingerprint(summary_path: str | os.PathLike) -> str:
    """A summary file's content, in short: the sha256 of its members' names, sizes and CRC-32s
    (read from the zip directory, not the data, and blind to the zip's timestamps)."""
    with zipfile.ZipFile(summary_path) as z:
        parts = sorted(f"{i.filename}:{i.file_size}:{i.CRC:08x}" for i in z.infolist())
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()


def summary_record(summary_path: str | os.PathLike) -> dict:
    """What a measures file records of the summary it was computed from."""
    return {"file": Path(summary_path).name, "fingerprint": fingerprint(summary_path)}


def check_current(ms: MeasureSet, path: Path) -> None:
    """Refuse, in one line, measures computed from another version of the summary that lies
    beside them now (the experiment was summarized again since). Files from before the record
    existed, and measures of a summary kept elsewhere, are not checked."""
    name = ms.summary.get("file")
    beside = path.with_name(name) if name else None
    if beside is None or not beside.is_file():
        return
    try:
        now = fingerprint(beside)
    except (OSError, zipfile.BadZipFile):
        return   # not a summary: its own reader says so
    if now != ms.summary.get("fingerprint"):
        raise FileFormatError(
            f"{path} was computed from an earlier {beside} (it was summarized again since): "
            f"make measures-{ms.experiment} computes them again")


def load_optional(path: str | os.PathLike) -> MeasureSet | None:
    """`load`, or None when the file does not exist (a figure or report part left out)."""
    return load(path) if Path(path).is_file() else None

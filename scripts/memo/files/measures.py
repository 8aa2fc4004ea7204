"""The measures file analysis/<exp>_measures.npz: every memorization measure of one experiment
per example (memo/measures/measures.py computes them, scripts/measures.py writes the file and
its CSV), read by the figures and the report.

Arrays: value_<measure> (float64, NaN where not available), index (positions in D), role and
group of a planted layout when there is one, and meta (a JSON string: the experiment, CPU
seconds, models, training seconds, the copying record, the full model's epochs used, the
settings measures were computed with, and the Spearman correlation between two independent
evaluations of a noisy measure). Written
whole and compressed (fileio.atomic_write_npz); read without pickles.
"""
from __future__ import annotations

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
            "settings": ms.settings, "reliability": ms.reliability}
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
                        reliability=meta.get("reliability", {}))
    except (OSError, ValueError, KeyError, TypeError, EOFError, zipfile.BadZipFile) as e:
        raise FileFormatError(f"cannot read measures file {path} ({e}); delete it and run make "
                              "again") from None
    return ms


def load_optional(path: str | os.PathLike) -> MeasureSet | None:
    """`load`, or None when the file does not exist (a figure or report part left out)."""
    return load(path) if Path(path).is_file() else None

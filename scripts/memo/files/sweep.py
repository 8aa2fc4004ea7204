"""The size-sweep file analysis/fashion_sizes_sweep.npz: written by scripts/sweep.py (numbers
from memo/measures/sweep.py), read by its figure (memo/figures/sweep.py) and the report.

One float64 array per field (FIELDS), one entry per training-set size in increasing order, and
meta (a JSON string: the experiments, the number of samples, the data set, top_k: how many of
the largest values M_top and Mc_top average). ratio is the copy rate at the final weights,
ratio_max the highest over the kept snapshots (at epoch ratio_max_epoch). Written whole and
compressed (fileio.atomic_write_npz); read without pickles.
"""
from __future__ import annotations

import json
import os
import zipfile
from pathlib import Path

import numpy as np

from memo.errors import FileFormatError
from memo.fileio import atomic_write_npz

FIELDS = ("n", "epochs", "ratio", "low", "high", "snapshots", "ratio_max", "ratio_max_epoch",
          "control_ratio", "control_low", "control_high",
          "median_ratio", "low_ratio", "control_median_ratio", "control_low_ratio",
          "train_loss", "test_loss", "cpu_seconds",
          "M_median", "M_q95", "M_top", "Mc_median", "Mc_q95", "Mc_top")


def write(path: str | os.PathLike, rows: list[dict], meta: dict) -> None:
    """rows: one dict per size with every field of FIELDS."""
    arrays = {k: np.array([r[k] for r in rows], dtype=float) for k in FIELDS}
    arrays["meta"] = np.array(json.dumps(meta))
    atomic_write_npz(path, arrays)


def load(path: str | os.PathLike) -> dict:
    """The sweep file's arrays (by field), its meta and its path; FileFormatError (one line)
    when it is not one."""
    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as z:
            out = {k: np.asarray(z[k], dtype=float) for k in FIELDS}
            out["meta"] = json.loads(str(z["meta"]))
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as e:
        raise FileFormatError(f"{path} is not a size-sweep file ({e}); run `make sweep`") from None
    out["path"] = path
    return out

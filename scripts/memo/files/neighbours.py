"""The nearest-neighbour file analysis/<exp>_nn.npz: written by
scripts/nearest_neighbours.py, read by the figures and the report.

Arrays: rho, d_valid, d_model (float64), nn_valid, nn_model (int64 indices of the neighbours),
special_code (int8, per example, memo/measures/neighbours.py), special (int64 counts, in the
order of special_names), samples (uint8 (S, C, H, W): the full model's samples that nn_model
indexes, rounded to 8 bits; from format 2 on) and meta (a JSON string, with "format"). Written
whole and uncompressed (fileio.atomic_write_npz); read without pickles. Files of format 1 (no
"format" in meta) have no samples and load with samples None.
"""
from __future__ import annotations

import json
import os
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from memo.errors import FileFormatError
from memo.fileio import atomic_write_npz


@dataclass
class Neighbours:
    """What the figures read of a nearest-neighbour file."""
    path: Path
    rho: np.ndarray             # (n,) d(x, nearest valid/test image) / d(x, nearest model sample)
    d_valid: np.ndarray
    d_model: np.ndarray
    nn_model: np.ndarray | None = None   # (n,) the nearest sample of each training example
    samples: np.ndarray | None = None    # (S, C, H, W) uint8 model samples (format 2 on)


FORMAT = 2   # 2: the samples are kept (the gallery shows them); 1: without them


def path_for(summary_path: str | os.PathLike) -> Path:
    """analysis/<exp>_nn.npz beside the summary analysis/<exp>.npz."""
    p = Path(summary_path)
    return p.with_name(p.stem + "_nn.npz")


def write(path: str | os.PathLike, *, rho, d_valid, d_model, nn_valid, nn_model, special_code,
          counts: dict[str, int], meta: dict, samples) -> None:
    """samples: uint8 (S, C, H, W), the model samples nn_model indexes."""
    atomic_write_npz(path, {
        "rho": rho, "d_valid": d_valid, "d_model": d_model, "nn_valid": nn_valid,
        "nn_model": nn_model, "special_code": special_code,
        "special": np.array(list(counts.values()), dtype=np.int64),
        "special_names": np.array(list(counts)),
        "samples": np.asarray(samples, dtype=np.uint8),
        "meta": np.array(json.dumps({**meta, "format": FORMAT}, sort_keys=True))},
        compress=False)


def load(path: str | os.PathLike, n: int | None = None) -> Neighbours:
    """The arrays the figures use; n: the summary's number of examples, which rho must have.
    FileFormatError (one line naming the file) for a missing or unreadable file."""
    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as z:
            if "rho" not in z.files:
                raise FileFormatError(f"{path} lacks rho: not a nearest-neighbour file")
            rho = np.asarray(z["rho"], dtype=float)
            get = lambda k: (np.asarray(z[k], dtype=float) if k in z.files
                             else np.full_like(rho, np.nan))
            nn = Neighbours(path, rho, get("d_valid"), get("d_model"))
            if "samples" in z.files and "nn_model" in z.files:   # format 2 on
                nn.samples = np.asarray(z["samples"])
                nn.nn_model = np.asarray(z["nn_model"], dtype=np.int64)
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as e:
        if isinstance(e, FileFormatError):
            raise
        raise FileFormatError(f"cannot read nearest-neighbour file {path} ({e}); delete it and "
                              "run make again") from None
    if n is not None and rho.shape != (n,):
        raise FileFormatError(f"{path}: rho has shape {rho.shape} but the summary has n = {n}")
    if nn.samples is not None:
        s, idx = nn.samples, nn.nn_model
        if (s.dtype != np.uint8 or s.ndim != 4 or idx.shape != rho.shape
                or (idx.size and (idx.min() < 0 or idx.max() >= len(s)))):
            raise FileFormatError(f"{path}: samples {s.dtype} {s.shape} and nn_model "
                                  f"{idx.shape} do not fit together; delete it and run make "
                                  "again")
    return nn


def load_optional(path: str | os.PathLike, n: int | None = None) -> Neighbours | None:
    """`load`, or None when the file does not exist (a figure or report part left out)."""
    return load(path, n) if Path(path).exists() else None

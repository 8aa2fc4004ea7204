"""The nearest-neighbour file analysis/<exp>_nn.npz: written by
scripts/nearest_neighbours.py, read by the figures and the report.

Arrays: rho, d_valid, d_model (float64), nn_valid, nn_model (int64 indices of the neighbours),
special_code (int8, per example, memo/measures/neighbours.py), special (int64 counts, in the
order of special_names) and meta (a JSON string). Written whole and uncompressed
(fileio.atomic_write_npz); read without pickles.
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


def path_for(summary_path: str | os.PathLike) -> Path:
    """analysis/<exp>_nn.npz beside the summary analysis/<exp>.npz."""
    p = Path(summary_path)
    return p.with_name(p.stem + "_nn.npz")


def write(path: str | os.PathLike, *, rho, d_valid, d_model, nn_valid, nn_model, special_code,
          counts: dict[str, int], meta: dict) -> None:
    atomic_write_npz(path, {
        "rho": rho, "d_valid": d_valid, "d_model": d_model, "nn_valid": nn_valid,
        "nn_model": nn_model, "special_code": special_code,
        "special": np.array(list(counts.values()), dtype=np.int64),
        "special_names": np.array(list(counts)),
        "meta": np.array(json.dumps(meta, sort_keys=True))}, compress=False)


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
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as e:
        if isinstance(e, FileFormatError):
            raise
        raise FileFormatError(f"cannot read nearest-neighbour file {path} ({e}); delete it and "
                              "run make again") from None
    if n is not None and rho.shape != (n,):
        raise FileFormatError(f"{path}: rho has shape {rho.shape} but the summary has n = {n}")
    return nn


def load_optional(path: str | os.PathLike, n: int | None = None) -> Neighbours | None:
    """`load`, or None when the file does not exist (a figure or report part left out)."""
    return load(path, n) if Path(path).exists() else None

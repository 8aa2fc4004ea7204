"""The summary file analysis/<exp>.npz: the Summary it holds, its one writer and its one reader.

A Summary holds, per example and evaluation epoch, the memorization scores U, V, M (the paper
§1), the per-repeat partial sums and every fold model's value of every example at the final
epoch (for uncertainty and calibration), the calibration's results, and the control images'
scores (docs/calibration.md). memo/score/summary.py makes one from result files; figures, the
report and the measures read it through `load`. No torch, no scipy: reading a summary is cheap.
"""
from __future__ import annotations

import json
import os
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from memo import fileio
from memo.errors import MemoError


class SummaryError(ValueError, MemoError):
    """Result files that do not make one summary, or a file that is not a readable summary."""


@dataclass
class Summary:
    meta: dict
    epochs: np.ndarray              # (E,) evaluation epochs
    U: np.ndarray                   # (E, n) log P(x_i | D), nats
    V: np.ndarray                   # (E, n) log P(x_i | D \ x_i)
    in_lse: np.ndarray              # (R, n) per-repeat logsumexp of in-values, final epoch
    in_count: np.ndarray            # (R, n) their number
    out_lse: np.ndarray
    out_count: np.ndarray
    ess_in: np.ndarray              # (n,) mean IS effective sample size, final epoch (nan: unknown)
    ess_out: np.ndarray
    full_losses_train: np.ndarray   # (epochs,) full model's mean negative ELBO per example
    full_losses_test: np.ndarray
    index: np.ndarray               # (n,) positions in the training set
    labels: np.ndarray              # (n,) -1: unknown
    M_se: np.ndarray                # (n,) bootstrap SE of final-epoch M (nan when R < 2)
    M_ci_low: np.ndarray            # (n,) bootstrap 95 % percentile interval of final-epoch M
    M_ci_high: np.ndarray
    split_half: float               # Spearman of final-epoch M between halves of the repeats
    low_ess: np.ndarray             # (n,) bool: in- or out-ESS under the flagging rule
    # calibration (memo.calibration); absent from older files: empty values, nan, False
    values: np.ndarray = None       # (R, K, n) float32 log p of example i under fold model k
    held_out: np.ndarray = None     # (R, n) int16: the fold that held example i out in repeat r
    null_mean: np.ndarray = None    # (n,) mean of M over held-out relabellings: the bias
    p_value: np.ndarray = None      # (n,) the flagging test's p-value (meta's calibration.test)
    memorized: np.ndarray = None    # (n,) bool: flagged by Benjamini–Hochberg at meta's fdr_q
    M_corrected_ci_low: np.ndarray = None   # (n,) bootstrap 95 % interval of M_corrected
    M_corrected_ci_high: np.ndarray = None
    split_half_corrected: float = np.nan    # as split_half, for M_corrected
    # control images (docs/calibration.md): never trained on, scored like training examples at
    # the final epoch; absent (C = 0) without them
    control_index: np.ndarray = None        # (C,) positions in the test split
    control_values: np.ndarray = None       # (R, K, C) float32 log p under fold model k
    control_held_out: np.ndarray = None     # (R, C) int16: the pseudo-fold of repeat r
    control_M: np.ndarray = None            # (C,) U − V as for a training example
    control_M_corrected: np.ndarray = None  # (C,) control_M − its permutation-null mean
    control_p_value: np.ndarray = None      # (C,) the flagging test's p-value
    path: Path | None = field(default=None, compare=False)   # the file it was read from
    timings: dict = field(default_factory=dict, compare=False)   # seconds per step (not saved)

    def __post_init__(self):
        n = self.U.shape[1]
        defaults = {"values": np.zeros((0, 0, n), np.float32),
                    "held_out": np.zeros((0, n), np.int16), "null_mean": np.full(n, np.nan),
                    "p_value": np.full(n, np.nan),
                    "memorized": np.zeros(n, bool), "M_corrected_ci_low": np.full(n, np.nan),
                    "M_corrected_ci_high": np.full(n, np.nan),
                    "control_index": np.zeros(0, np.int64),
                    "control_values": np.zeros((0, 0, 0), np.float32),
                    "control_held_out": np.zeros((0, 0), np.int16),
                    "control_M": np.zeros(0), "control_M_corrected": np.zeros(0),
                    "control_p_value": np.zeros(0)}
        for key, default in defaults.items():
            if getattr(self, key) is None:
                setattr(self, key, default)

    # what the file does not store, because it follows from what it does
    @property
    def M(self) -> np.ndarray:
        """(E, n) U − V."""
        return self.U - self.V

    @property
    def n_in(self) -> np.ndarray:
        """(n,) the number of in-values at the final epoch."""
        return self.in_count.sum(0) if self.in_count.size else np.zeros(self.n, np.int64)

    @property
    def n_out(self) -> np.ndarray:
        return self.out_count.sum(0) if self.out_count.size else np.zeros(self.n, np.int64)

    @property
    def M_corrected(self) -> np.ndarray:
        """(n,) M − null_mean at the final epoch (nan without calibration)."""
        return self.M[-1] - self.null_mean

    @property
    def reliability(self) -> float:
        """Spearman–Brown projection of split_half to all R repeats."""
        return spearman_brown(self.split_half)

    @property
    def reliability_corrected(self) -> float:
        return spearman_brown(self.split_half_corrected)

    @property
    def calibrated(self) -> bool:
        """Whether the summary holds the permutation calibration (p-values)."""
        return bool(np.isfinite(self.p_value).any())

    @property
    def calibration(self) -> dict:
        """meta's calibration record ({} when not calibrated)."""
        return self.meta.get("calibration") or {}

    @property
    def n_controls(self) -> int:
        return int(self.control_index.size)

    @property
    def control_flagged(self) -> np.ndarray:
        """(C,) bool: controls whose p-value reaches the threshold the examples were flagged at."""
        at = self.calibration.get("threshold")
        if at is None or not self.n_controls:
            return np.zeros(self.n_controls, bool)
        return self.control_p_value <= at

    @property
    def name(self) -> str:
        return self.meta.get("experiment") or (self.path.stem if self.path else "summary")

    @property
    def n(self) -> int:
        return self.U.shape[1]

    @property
    def M_final(self) -> np.ndarray:
        return self.M[-1]

    @property
    def U_final(self) -> np.ndarray:
        return self.U[-1]

    @property
    def dataset(self) -> str:
        return self.meta.get("dataset") or self.meta.get("data") or "data"

    @property
    def repeats(self) -> int:
        """L: the repeats of the per-repeat terms, else meta's count (0: unknown)."""
        return int(self.in_lse.shape[0]) or int(self.meta.get("repeats") or 0)


# The npz's arrays in the order they are written; the order is part of the file's bytes.
ARRAYS = ("epochs", "U", "V", "in_lse", "in_count", "out_lse", "out_count", "ess_in", "ess_out",
          "full_losses_train", "full_losses_test", "index", "labels", "M_se", "M_ci_low",
          "M_ci_high", "split_half", "low_ess",
          # calibration: after the earlier arrays, so those keep their place in the file
          "values", "held_out", "null_mean", "p_value", "memorized", "M_corrected_ci_low",
          "M_corrected_ci_high", "split_half_corrected",
          # control images: after the calibration's arrays
          "control_index", "control_values", "control_held_out", "control_M",
          "control_M_corrected", "control_p_value")
# Files written before the summary stopped storing what it derives also hold M, n_in, n_out,
# M_corrected, reliability and reliability_corrected; `load` reads them through the properties.
REQUIRED = ("meta", "epochs", "U", "V")


# ----------------------------------------------------------------------------------------------
# the file


def save(summary: Summary, path: str | os.PathLike) -> None:
    """Write the summary as an npz (compressed) atomically."""
    arrays = {k: np.asarray(getattr(summary, k)) for k in ARRAYS}
    arrays["meta"] = np.array(json.dumps(summary.meta))
    fileio.atomic_write_npz(path, arrays)


def load(path: str | os.PathLike) -> Summary:
    """Read a summary file. Arrays it lacks (partial or older files) get neutral values: nan,
    labels -1, no per-repeat terms. Raises SummaryError, naming the file, when it is no summary."""
    path = Path(path)
    if not path.is_file() or not zipfile.is_zipfile(path):
        raise SummaryError(f"{path} is not a summary (.npz) file"
                           + ("" if path.exists() else ": it does not exist"))
    try:
        with np.load(path) as z:
            missing = [k for k in REQUIRED if k not in z.files]
            if missing:
                raise SummaryError(f"{path} lacks {', '.join(missing)}: not a summary file "
                                   "(expected the output of the summarize step)")
            a = {k: z[k] for k in z.files}
        meta = json.loads(str(a["meta"]))
    except SummaryError:
        raise
    except (OSError, ValueError, zipfile.BadZipFile) as e:
        raise SummaryError(f"cannot read summary {path}: {e}") from None
    if not isinstance(meta, dict):
        raise SummaryError(f"{path}: meta is not a JSON object")

    U = np.atleast_2d(np.asarray(a["U"], dtype=float))
    if U.ndim != 2:
        raise SummaryError(f"{path}: U has shape {U.shape}, expected (epochs, n)")
    E, n = U.shape
    epochs = np.asarray(a["epochs"], dtype=np.int64)
    if epochs.size != E:
        raise SummaryError(f"{path}: {epochs.size} epochs but U has {E} rows")
    R = a["in_lse"].shape[0] if "in_lse" in a and a["in_lse"].ndim == 2 else 0
    V = np.atleast_2d(np.asarray(a["V"], dtype=float))
    if V.shape != (E, n):
        raise SummaryError(f"{path}: V has shape {V.shape}, expected {(E, n)}")

    def get(key, shape, default, dtype=float):
        v = np.asarray(a[key] if key in a else default, dtype=dtype)
        if v.shape != shape:
            raise SummaryError(f"{path}: {key} has shape {v.shape}, expected {shape}")
        return v

    def vec(key, default, dtype=float):
        return get(key, (n,), np.full(n, default), dtype)

    def scalar(key):
        if key not in a:
            return float("nan")
        if np.asarray(a[key]).size != 1:
            raise SummaryError(f"{path}: {key} has shape {np.shape(a[key])}, expected a number")
        try:
            return float(np.asarray(a[key]).ravel()[0])
        except (TypeError, ValueError):
            raise SummaryError(f"{path}: {key} is not a number") from None

    values = np.asarray(a.get("values", np.zeros((0, 0, n))), dtype=np.float32)
    if values.ndim != 3 or values.shape[2] != n:
        raise SummaryError(f"{path}: values has shape {values.shape}, expected (R, K, {n})")
    held_out = get("held_out", (values.shape[0], n), np.zeros((values.shape[0], n)), np.int16)
    in_count = get("in_count", (R, n), np.zeros((R, n)), np.int64)
    out_count = get("out_count", (R, n), np.zeros((R, n)), np.int64)
    return Summary(
        meta=meta, epochs=epochs.reshape(E),
        U=U, V=V,
        in_lse=get("in_lse", (R, n), np.full((R, n), -np.inf)), in_count=in_count,
        out_lse=get("out_lse", (R, n), np.full((R, n), -np.inf)), out_count=out_count,
        ess_in=vec("ess_in", np.nan), ess_out=vec("ess_out", np.nan),
        full_losses_train=np.asarray(a.get("full_losses_train", []), dtype=float).ravel(),
        full_losses_test=np.asarray(a.get("full_losses_test", []), dtype=float).ravel(),
        index=get("index", (n,), np.arange(n), np.int64), labels=vec("labels", -1, np.int64),
        M_se=vec("M_se", np.nan), M_ci_low=vec("M_ci_low", np.nan),
        M_ci_high=vec("M_ci_high", np.nan),
        split_half=float(a.get("split_half", np.nan)), low_ess=vec("low_ess", False, bool),
        values=values, held_out=held_out,
        null_mean=vec("null_mean", np.nan),
        p_value=vec("p_value", np.nan), memorized=vec("memorized", False, bool),
        M_corrected_ci_low=vec("M_corrected_ci_low", np.nan),
        M_corrected_ci_high=vec("M_corrected_ci_high", np.nan),
        split_half_corrected=scalar("split_half_corrected"),
        **_load_controls(a, path),
        path=path)


def _load_controls(a: dict, path: Path) -> dict:
    """The control images' arrays of a summary file, checked against one another (none in
    files without controls or from before they existed)."""
    index = np.asarray(a.get("control_index", np.zeros(0)), dtype=np.int64)
    C = index.size
    if index.ndim != 1:
        raise SummaryError(f"{path}: control_index has shape {index.shape}, expected (C,)")
    values = np.asarray(a.get("control_values", np.zeros((0, 0, C))), dtype=np.float32)
    if C and (values.ndim != 3 or values.shape[2] != C):
        raise SummaryError(f"{path}: control_values has shape {values.shape}, expected "
                           f"(R, K, {C})")
    held = np.asarray(a.get("control_held_out", np.zeros((0, C))), dtype=np.int16)
    if C and held.shape != (values.shape[0], C):
        raise SummaryError(f"{path}: control_held_out has shape {held.shape}, expected "
                           f"{(values.shape[0], C)}")
    out = {"control_index": index, "control_values": values, "control_held_out": held}
    for key in ("control_M", "control_M_corrected", "control_p_value"):
        v = np.asarray(a.get(key, np.full(C, np.nan)), dtype=float)
        if v.shape != (C,):
            raise SummaryError(f"{path}: {key} has shape {v.shape}, expected ({C},)")
        out[key] = v
    return out


def spearman_brown(r_half: float, factor: float = 2.0) -> float:
    """Reliability of a score from `factor` times as many repeats as each half had, from the
    correlation r between two halves: f·r / (1 + (f − 1)·r); 2r / (1 + r) for the full score.

    Assumes exchangeable repeats (each adds an independent, equally noisy copy of the same
    signal). With an odd number of repeats the halves differ by one repeat and the factor 2 is
    an approximation. nan for nan or r <= −1 (no such reliability).
    """
    r = float(r_half)
    if not np.isfinite(r) or r <= -1:
        return float("nan")
    return factor * r / (1 + (factor - 1) * r)

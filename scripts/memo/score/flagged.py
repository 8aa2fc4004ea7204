"""The answer as a list: analysis/<exp>_flagged.csv, the examples a summary flags as memorized,
strongest evidence first (docs/flagged.md describes its columns).

Evidence is what the flag itself rests on: the flagging test's p-value, smallest first (its
Benjamini–Hochberg q-value orders the same way); ties go to the larger M_corrected, then the
smaller index. The gallery figure and the "highest" grid of the qualitative figure use this
order, so the three agree. scripts/summarize.py writes the file beside analysis/<exp>.csv;
scripts/plan.py names it as that command's output.
"""
from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np

from memo import fileio
from memo.score.calibration import q_values

SUFFIX = "_flagged.csv"   # analysis/<exp>_flagged.csv (the suffix is reserved for experiment names)
COLUMNS = ("rank", "index", "label", "M", "M_corrected", "M_corrected_ci_low",
           "M_corrected_ci_high", "p_value", "q_value", "low_ess", "ess_in", "ess_out")


def path_for(summary_path: str | os.PathLike) -> Path:
    """analysis/<exp>_flagged.csv beside the summary analysis/<exp>.npz."""
    p = Path(summary_path)
    return p.with_name(p.stem + SUFFIX)


def by_evidence(s) -> np.ndarray:
    """Positions of every example with a p-value, strongest evidence first (the module's
    order); empty for a summary without calibration."""
    p = np.asarray(s.p_value, float)
    ok = np.flatnonzero(np.isfinite(p))
    mc = np.nan_to_num(np.asarray(s.M_corrected, float)[ok], nan=-np.inf)
    return ok[np.lexsort((np.asarray(s.index)[ok], -mc, p[ok]))]   # last key first


def flagged_order(s) -> np.ndarray:
    """Positions of the flagged examples, strongest evidence first."""
    order = by_evidence(s)
    return order[np.asarray(s.memorized, bool)[order]]


def table(s):
    """The flagged examples as a pandas DataFrame with COLUMNS, in evidence order."""
    import pandas as pd
    rows = flagged_order(s)
    q = q_values(s.p_value)
    return pd.DataFrame({
        "rank": np.arange(1, rows.size + 1), "index": np.asarray(s.index)[rows],
        "label": np.asarray(s.labels)[rows], "M": s.M_final[rows],
        "M_corrected": s.M_corrected[rows],
        "M_corrected_ci_low": s.M_corrected_ci_low[rows],
        "M_corrected_ci_high": s.M_corrected_ci_high[rows],
        "p_value": s.p_value[rows], "q_value": q[rows],
        "low_ess": np.asarray(s.low_ess, bool)[rows],
        "ess_in": s.ess_in[rows], "ess_out": s.ess_out[rows]}, columns=list(COLUMNS))


def write(s, path: str | os.PathLike) -> int:
    """Write the flagged list (a header only when nothing is flagged) to a temporary name,
    then rename; returns the number of rows."""
    t = table(s)
    buf = io.StringIO()
    t.to_csv(buf, index=False, float_format="%.6g")
    fileio.atomic_write_bytes(path, buf.getvalue().encode())
    return len(t)

"""The family comparison file analysis/families.json: written by scripts/compare_families.py
(numbers from memo/score/families.py), read by its figure (memo/figures/families.py).

{"top": 0.05, "pairs": [PAIR, ...]}, one PAIR per two experiments on the same training set:

  data, n                 the data set both trained on (memo.data.load's name) and its size
  families                two rows (family a, family b): experiment, model, heldout_log_p,
                          M_median, M_95, M_99.9, flags, controls, controls_flagged,
                          planted AUROC (auroc_rare, auroc_oneoff with _low/_high), flagged_rare,
                          flagged_oneoff, cpu_minutes; null where not measured
  spearman, top_overlap   between the families over the examples
  flags_a, flags_b, flags_both
  index                   (n,) each example's position in the data set
  M_a, M_b                (n,) final-epoch M per example (null: not finite)
  flagged_a, flagged_b    (n,) 0/1 flags, or null without calibration
  top_a, top_b            positions (into the n examples) of each family's top fraction by M
  only_a, only_b          positions in one family's top fraction and below the other's median M
  role                    (n,) planted role (memo/data/planted.py), or null off the benchmark

Written whole (temporary name, then rename); read with json alone.
"""
from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np

from memo.errors import FileFormatError
from memo.fileio import atomic_write_bytes

PAIR_FIELDS = ("data", "n", "families", "spearman", "top_overlap", "index", "M_a", "M_b",
               "top_a", "top_b", "only_a", "only_b")
ARRAYS = ("index", "M_a", "M_b", "flagged_a", "flagged_b", "top_a", "top_b", "only_a", "only_b",
          "role")
ROW_FIELDS = ("experiment", "model", "heldout_log_p", "M_median", "M_95", "M_99.9", "flags",
              "controls", "controls_flagged", "auroc_rare", "auroc_rare_low", "auroc_rare_high",
              "auroc_oneoff", "auroc_oneoff_low", "auroc_oneoff_high", "flagged_rare",
              "flagged_oneoff", "cpu_minutes")


def _plain(v):
    """JSON-ready: arrays to lists, numpy scalars to Python ones, non-finite floats to null."""
    if isinstance(v, dict):
        return {k: _plain(x) for k, x in v.items()}
    if isinstance(v, (list, tuple, np.ndarray)):
        return [_plain(x) for x in (v.tolist() if isinstance(v, np.ndarray) else v)]
    if isinstance(v, (np.integer, np.bool_)):
        return int(v)
    if isinstance(v, (float, np.floating)):
        return float(v) if math.isfinite(v) else None
    return v


def write(path: str | os.PathLike, top: float, pairs: list[dict]) -> None:
    """pairs: one dict per compared pair with the fields of the module docstring."""
    for p in pairs:
        missing = [k for k in PAIR_FIELDS if k not in p]
        if missing:
            raise ValueError(f"a family pair lacks {missing}")
    blob = json.dumps(_plain({"top": top, "pairs": pairs}), indent=1, allow_nan=False)
    atomic_write_bytes(path, (blob + "\n").encode())


def _array(v, key: str) -> np.ndarray | None:
    if v is None:
        return None
    dtype = float if key.startswith("M_") else np.int64
    return np.array([np.nan if x is None else x for x in v], dtype=dtype)


def load(path: str | os.PathLike) -> dict:
    """The comparison, with each pair's per-example fields as numpy arrays (M: float with nan
    for null; the rest int); FileFormatError (one line) when the file is not one."""
    path = Path(path)
    fix = "run `make families` (or scripts/compare_families.py -o)"
    try:
        doc = json.loads(path.read_text())
        pairs = doc["pairs"]
        top = float(doc["top"])
        for p in pairs:
            missing = [k for k in PAIR_FIELDS if k not in p]
            if missing:
                raise KeyError(", ".join(missing))
            if len(p["families"]) != 2 or any(set(ROW_FIELDS) - set(r) for r in p["families"]):
                raise ValueError("each pair needs two family rows with every field")
            for key in ARRAYS:
                p[key] = _array(p.get(key), key)
            if any(p[k] is not None and len(p[k]) != p["n"]
                   for k in ("index", "M_a", "M_b", "flagged_a", "flagged_b", "role")):
                raise ValueError(f"per-example fields are not of length n = {p['n']}")
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise FileFormatError(f"{path} is not a family comparison ({type(e).__name__}: {e}); "
                              f"{fix}") from None
    return {"top": top, "pairs": pairs, "path": path}

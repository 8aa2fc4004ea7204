"""Which examples each model family memorizes: two experiments on the same training set D
(the same data, subset and splits; docs/models.md) set side by side, example by example.

  spearman       rank correlation of their final-epoch M over the examples of D
  top_overlap    |top_a ∩ top_b| / |top_a|: the share of one family's top `top` fraction (by M)
                 that is also the other's (chance: `top`)
  flags          examples flagged (Benjamini–Hochberg) by a, by b, by both
  only_a, only_b examples in one family's top fraction and below the other's median M, most
                 extreme first: memorized by one family and not the other
"""
from __future__ import annotations

import numpy as np

from memo.score import rankstats


def top_set(m: np.ndarray, fraction: float) -> np.ndarray:
    """Indices of the ceil(fraction·n) largest finite values of m (ties broken by index)."""
    finite = np.flatnonzero(np.isfinite(m))
    k = int(np.ceil(fraction * len(finite)))
    order = finite[np.argsort(-m[finite], kind="stable")]
    return np.sort(order[:k])


def compare(m_a, m_b, flags_a=None, flags_b=None, top: float = 0.05, shown: int = 8) -> dict:
    """The comparison of two families' final-epoch M over the same examples (module
    docstring); flags: bool per example, or None where a summary has none."""
    m_a, m_b = np.asarray(m_a, dtype=np.float64), np.asarray(m_b, dtype=np.float64)
    if m_a.shape != m_b.shape:
        raise ValueError(f"the two experiments score different training sets ({len(m_a)} and "
                         f"{len(m_b)} examples): compare experiments on the same data and subset")
    ta, tb = top_set(m_a, top), top_set(m_b, top)
    both = np.intersect1d(ta, tb)
    out = {"n": int(len(m_a)), "spearman": rankstats.spearman(m_a, m_b), "top": top,
           "top_overlap": len(both) / max(len(ta), 1), "top_both": both}
    for name, m, mine, other, m_other in (("a", m_a, ta, tb, m_b), ("b", m_b, tb, ta, m_a)):
        out[f"quantiles_{name}"] = np.nanquantile(m, [0.5, 0.95, 0.999])
        low = mine[m_other[mine] < np.nanmedian(m_other)]
        out[f"only_{name}"] = low[np.argsort(-(m[low] - m_other[low]), kind="stable")][:shown]
    if flags_a is not None and flags_b is not None:
        fa, fb = np.asarray(flags_a, bool), np.asarray(flags_b, bool)
        out.update(flags_a=int(fa.sum()), flags_b=int(fb.sum()), flags_both=int((fa & fb).sum()))
    return out

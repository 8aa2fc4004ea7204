"""The paper's figures, one module per figure, each drawn from the summary arrays.

Every module has `make(summaries, *, nn, images, seed) -> common.Result`; `build` draws one
and writes `<out>/<name>.{pgf,tex,pdf,png,json}`. Importing this package is cheap (the
Makefile and the CLIs list figures without loading matplotlib).
"""
from __future__ import annotations

import importlib
from pathlib import Path

# in report order: the calibrated scores lead
FIGURES = ("calibration", "gallery", "measures", "qualitative", "losses", "quantiles",
           "distribution", "logprob", "neighbours", "uncertainty", "privacy", "sweep", "families")
GROUP_ONLY = ("privacy",)         # compares several experiments (analysis.mk's groups)
STANDALONE = ("sweep", "families")  # drawn from their own files (scripts/sweep.py,
#                                     scripts/compare_families.py), not from summaries
PER_EXPERIMENT = tuple(f for f in FIGURES if f not in GROUP_ONLY + STANDALONE)  # `all`
SERIES = ("losses", "quantiles", "distribution")   # take one summary or several to compare

NEEDS_IMAGES = ("qualitative", "logprob", "gallery")
NEEDS_NN = ("neighbours",)
USES_NN = ("gallery",)          # shows the samples of the nn file when there is one
NEEDS_MEASURES = ("measures",)   # analysis/<exp>_measures.npz (memo/files/measures.py)
# drawn for every experiment from its summary alone (analysis.mk's AN_SINGLE, through plan.py)
ONE_EXPERIMENT = tuple(f for f in PER_EXPERIMENT if f not in SERIES + NEEDS_NN + NEEDS_MEASURES)
DEFAULT_SEED = 42  # example images of the logprob figure


def module(name: str):
    if name not in FIGURES:
        raise ValueError(f"unknown figure {name!r}; valid choices: {', '.join(FIGURES)}")
    return importlib.import_module(f"{__name__}.{name}")


def build(name: str, summaries: list, out_dir, *, nn=None, images=None, measures_set=None,
          sweep=None, families=None, seed: int = DEFAULT_SEED,
          engine: str | None = "auto") -> list[Path]:
    """Draw figure `name` from loaded summaries and write its files into out_dir."""
    from . import common
    mod = module(name)
    several = SERIES + GROUP_ONLY
    if name not in STANDALONE and (not summaries or (name not in several and len(summaries) != 1)):
        takes = "one or more summaries" if name in several else "one summary"
        raise ValueError(f"figure {name} takes {takes}, got {len(summaries)}")
    if engine == "auto":
        engine = common.latex_engine()
    with common.style(engine):
        result = mod.make(summaries, nn=nn, images=images, measures_set=measures_set,
                          sweep=sweep, families=families, seed=seed)
    meta = {"figure": name, "group": Path(out_dir).name,
            "experiments": [s.name for s in summaries] or (sweep or {}).get("meta", {}).get(
                "experiments", []) or [r["experiment"] for p in (families or {}).get("pairs", [])
                                       for r in p["families"]]}
    try:
        return common.save(result, out_dir, name, meta, engine)
    finally:
        result.fig.clear()

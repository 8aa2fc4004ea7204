"""From result files to memorization scores U, V, M per example and evaluation epoch (PAPER.md §1).

    U_i = logmeanexp(in-values),  V_i = logmeanexp(out-values),  M_i = U_i − V_i

Averages are taken in probability space. Per-repeat partial sums at the final epoch are kept
so that uncertainty over repeats (bootstrap, split-half reliability) can be computed.
"""
from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from . import fileio, results

# meta keys that must agree between all files of one summary
IDENTITY_KEYS = ("dataset", "model", "seed", "latent_dim", "learning_rate", "epochs",
                 "num_iw_samples", "batch_size", "experiment", "data_spec", "subset")


class SummaryError(ValueError):
    pass


@dataclass
class Summary:
    meta: dict
    epochs: np.ndarray        # (E,)
    U: np.ndarray             # (E, n)
    V: np.ndarray
    M: np.ndarray
    n_in: np.ndarray          # (n,) at the final epoch
    n_out: np.ndarray
    in_lse: np.ndarray        # (R, n) per-repeat logsumexp of in-values, final epoch
    in_count: np.ndarray
    out_lse: np.ndarray
    out_count: np.ndarray
    ess_in: np.ndarray        # (n,) mean IS effective sample size, final epoch (nan: unknown)
    ess_out: np.ndarray
    full_losses_train: np.ndarray
    full_losses_test: np.ndarray


def _check_identity(contents: dict[Path, dict]) -> dict:
    ref_path, ref = next(iter(contents.items()))
    ref_meta = ref["meta"]
    for path, c in contents.items():
        for key in IDENTITY_KEYS:
            a, b = ref_meta.get(key), c["meta"].get(key)
            if a != b:
                raise SummaryError(
                    f"mixed result files: {path.name} has {key}={b!r} but {ref_path.name} has "
                    f"{key}={a!r}; summarize one experiment at a time")
    return ref_meta


def summarize(paths: list[str | Path], progress: bool = True) -> Summary:
    paths = [Path(p) for p in paths]
    if not paths:
        raise SummaryError("no result files given")
    contents = {}
    for p in tqdm(paths, desc="reading result files", disable=None if progress else True, leave=False):
        contents[p] = results.read_result(p)
    meta = _check_identity(contents)

    cv = {p: c for p, c in contents.items() if c["meta"]["mode"] != "full"}
    full = [c for c in contents.values() if c["meta"]["mode"] == "full"]
    if not cv:
        raise SummaryError("no cross-validation result files among the inputs")
    seen = {}
    for p, c in cv.items():
        key = (int(c["meta"]["run"]), int(c["meta"]["fold_idx"]))
        if key in seen:
            raise SummaryError(f"{p.name} and {seen[key].name} are both repeat {key[0]} fold {key[1]}")
        seen[key] = p
    n_folds = int(meta.get("num_folds") or max(k for _, k in seen) + 1)
    n_repeats = int(meta.get("repeats") or max(r for r, _ in seen) + 1)
    missing = [(r, k) for r in range(n_repeats) for k in range(n_folds) if (r, k) not in seen]
    if missing:
        listed = ", ".join(f"repeat {r} fold {k}" for r, k in missing)
        raise SummaryError(f"missing {len(missing)} of {n_repeats * n_folds} fold result files: "
                           f"{listed}")

    epoch_sets = {p: sorted(map(int, c["results"]["logpxs"])) for p, c in cv.items()}
    epochs = sorted(set.intersection(*map(set, epoch_sets.values())))
    for p, e in epoch_sets.items():
        if e != epochs:
            raise SummaryError(f"{p.name} has evaluation epochs {e}, others have {epochs}; "
                               "it may come from another run")
    if not epochs:
        raise SummaryError("the result files share no evaluation epoch")

    n = meta.get("n")
    if n is None:  # the authors' files: every model saw all of D as train ∪ test
        c = next(iter(cv.values()))["results"]["logpxs"][str(epochs[-1])]
        n = len(c["train"]) + len(c["test"])
    n, E, R = int(n), len(epochs), n_repeats

    in_lse = np.full((E, R, n), -np.inf)
    out_lse = np.full((E, R, n), -np.inf)
    in_count = np.zeros((E, R, n), dtype=np.int64)
    out_count = np.zeros((E, R, n), dtype=np.int64)
    ess_sum = {"train": np.zeros(n), "test": np.zeros(n)}
    ess_cnt = {"train": np.zeros(n, dtype=np.int64), "test": np.zeros(n, dtype=np.int64)}
    covered = defaultdict(lambda: np.zeros(n, dtype=bool))
    for p, c in cv.items():
        r = int(c["meta"]["run"])
        for ei, epoch in enumerate(epochs):
            parts = c["results"]["logpxs"][str(epoch)]
            for part, lse, cnt in (("train", in_lse, in_count), ("test", out_lse, out_count)):
                idx, val = results.as_arrays(parts[part], p)
                if len(idx) and (idx.min() < 0 or idx.max() >= n):
                    raise SummaryError(f"{p.name}: example index outside 0..{n - 1}")
                if not np.isfinite(val).all():
                    raise SummaryError(f"{p.name}: non-finite log p(x) at epoch {epoch}")
                lse[ei, r, idx] = np.logaddexp(lse[ei, r, idx], val)
                cnt[ei, r, idx] += 1
                if part == "test" and ei == E - 1:
                    covered[r][idx] = True
        ess = c["results"].get("ess", {}).get(str(epochs[-1]))
        if ess:
            for part in ("train", "test"):
                idx, val = results.as_arrays(ess[part], p)
                ess_sum[part][idx] += val
                ess_cnt[part][idx] += 1
    for r, cov in covered.items():
        if not cov.all():
            raise SummaryError(f"repeat {r}: {int((~cov).sum())} examples are never held out; "
                               "a fold result file is missing or from another split")

    def logmeanexp(lse, cnt):  # over repeats: (E, R, n) -> (E, n)
        with np.errstate(divide="ignore", invalid="ignore"):
            total = cnt.sum(1)
            out = np.logaddexp.reduce(lse, axis=1) - np.log(total)
        return np.where(total > 0, out, np.nan)

    U, V = logmeanexp(in_lse, in_count), logmeanexp(out_lse, out_count)
    with np.errstate(invalid="ignore", divide="ignore"):
        ess_in = np.where(ess_cnt["train"] > 0, ess_sum["train"] / ess_cnt["train"], np.nan)
        ess_out = np.where(ess_cnt["test"] > 0, ess_sum["test"] / ess_cnt["test"], np.nan)
    losses = full[0]["results"]["losses"] if full else {"train": [], "test": []}
    out_meta = {
        "experiment": meta.get("experiment") or Path(paths[0]).parent.parent.name,
        "data": meta.get("data_spec") or _spec_from_dataset(meta["dataset"]),
        "dataset": meta["dataset"], "model": meta["model"], "latent_dim": meta.get("latent_dim"),
        "lr": meta.get("learning_rate"), "epochs": meta.get("epochs"),
        "n_is": meta.get("num_iw_samples"), "folds": n_folds, "repeats": n_repeats,
        "seed": meta.get("seed"), "n": n, "eval_epochs": epochs, "subset": meta.get("subset", 0),
        "has_full_model": bool(full),
    }
    return Summary(out_meta, np.array(epochs), U, V, U - V, in_count[-1].sum(0),
                   out_count[-1].sum(0), in_lse[-1], in_count[-1], out_lse[-1], out_count[-1],
                   ess_in, ess_out, np.asarray(losses["train"], dtype=float),
                   np.asarray(losses["test"], dtype=float))


def _spec_from_dataset(dataset: str) -> str:
    from .data import DATASET_NAMES
    return {name: spec for spec, name in DATASET_NAMES.items()}.get(dataset, dataset)


def save(summary: Summary, path: str | Path, extra: dict | None = None) -> None:
    """Write the summary npz atomically; `extra` adds arrays (uncertainty, labels)."""
    import io
    arrays = {k: v for k, v in vars(summary).items() if k != "meta"}
    arrays.update(extra or {})
    arrays["meta"] = np.array(json.dumps(summary.meta))
    arrays.setdefault("index", np.arange(summary.meta["n"]))
    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)
    fileio.atomic_write_bytes(path, buf.getvalue())


def load(path: str | Path) -> dict:
    """The summary as a dict of arrays, with meta decoded."""
    with np.load(path) as f:
        out = {k: f[k] for k in f.files}
    out["meta"] = json.loads(str(out["meta"]))
    return out

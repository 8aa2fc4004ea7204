"""Summarizing one experiment: memorization scores U, V, M per example and evaluation epoch
(the paper) from its result files, their uncertainty over repeats, the calibration and the
flags (docs/calibration.md); the file analysis/<exp>.npz that holds them is memo/files/summary.py.

    U_i = logmeanexp(in-values),  V_i = logmeanexp(out-values),  M_i = U_i − V_i

Averages are taken in probability space. Per-repeat partial sums at the final epoch are kept
so that uncertainty over repeats (bootstrap, split-half reliability) can be computed, and every
fold model's value of every example at the final epoch (`values`, with the held-out fold of
each example per repeat) so that the score can be calibrated against its permutation null
(memo.calibration: bias, M_corrected, p-values, Benjamini–Hochberg flags).
`summarize` makes a Summary from result files; `save` and `load` (memo.files.summary) write
and read it.
"""
from __future__ import annotations

import itertools
import time
from pathlib import Path

import numpy as np
from tqdm import tqdm

from memo.config import splits
from memo.config.naming import DATASET_NAMES
from memo.files import results
from memo.files.summary import ARRAYS, Summary, SummaryError, load, save  # the summary's file
from memo.score import calibration, flagging, uncertainty

# meta keys that must agree between all files of one summary
IDENTITY_KEYS = ("dataset", "model", "seed", "latent_dim", "learning_rate", "epochs",
                 "num_iw_samples", "batch_size", "experiment", "data_spec", "subset")


# ----------------------------------------------------------------------------------------------
# from result files


def _check_identity(contents: dict[Path, dict]) -> dict:
    ref_path, ref = next(iter(contents.items()))
    ref_meta = ref["meta"]
    ref_method = results.recorded_method(ref_meta)
    ref_dp = (ref_meta.get("settings") or {}).get("dp")
    for path, c in contents.items():
        dp = (c["meta"].get("settings") or {}).get("dp")
        if dp != ref_dp:
            raise SummaryError(
                f"mixed privacy: {path.name} was trained with dp={dp!r} but {ref_path.name} "
                f"with dp={ref_dp!r}; summarize private and non-private result files (and "
                f"other privacy settings) separately (docs/privacy.md)")
        method = results.recorded_method(c["meta"])
        if method != ref_method:
            raise SummaryError(
                f"mixed methods: {path.name} was made with {method} but {ref_path.name} with "
                f"{ref_method}; summarize files of one method at a time (docs/fidelity.md)")
        for key in IDENTITY_KEYS:
            a, b = ref_meta.get(key), c["meta"].get(key)
            if a != b:
                raise SummaryError(
                    f"mixed result files: {path.name} has {key}={b!r} but {ref_path.name} has "
                    f"{key}={a!r}; summarize one experiment at a time")
    return ref_meta


def _check_settings(contents: dict[Path, dict], exp) -> None:
    """Refuse result files made under other settings than the experiment has now."""
    for path, c in contents.items():
        for field, recorded, now in results.settings_mismatches(c["meta"], exp):
            raise SummaryError(results.mismatch_message(
                str(path), exp, field, recorded, now,
                f"to retrain, delete {path.parent}/ and run `make memorization-{exp.name}`"))


def _compact(content: dict, path: Path) -> dict:
    """A result file with its {"<idx>": value} objects as (int32 index, float64 value) arrays:
    a tenth of the memory of the parsed JSON (a paper-sized MNIST file: ~90 MB parsed). The
    full model's log p is not summarized and is dropped."""
    def arrays(values: dict, upper: float | None = 0.0):
        idx, val = results.as_arrays(values, path, upper)
        return idx.astype(np.int32), val

    res = content["results"]
    full = content["meta"].get("mode") == "full"
    logpxs = {} if full else {e: {part: arrays(v[part]) for part in ("train", "test")}
                              for e, v in res["logpxs"].items()}
    ess = {} if full else {e: {part: arrays(v[part], None) for part in ("train", "test")}
                           for e, v in (res.get("ess") or {}).items()}
    controls = res.get(results.CONTROLS)
    if full or not isinstance(controls, dict):
        controls = None
    else:
        try:
            controls = {e: arrays(v) for e, v in controls["logpxs"].items()}
        except (KeyError, TypeError, AttributeError) as e:
            raise SummaryError(f"{path}: its control images' log p is not in the expected "
                               f"schema ({e})") from None
    return {"meta": content["meta"],
            "results": {"logpxs": logpxs, "losses": res["losses"], "ess": ess,
                        "controls": controls}}


def _control_values(cv: dict[Path, dict], epoch: int, R: int, K: int, seed: int):
    """(index (C,), values (R, K, C), pseudo-folds (R, C)) of the control images at `epoch`,
    or None when the result files have none; every fold model must score the same ones."""
    have = {p: c["results"]["controls"] for p, c in cv.items()}
    some = [p for p, v in have.items() if v is not None]
    if not some:
        return None
    ref = some[0]
    if len(some) != len(have):
        lacking = next(p for p, v in have.items() if v is None)
        raise SummaryError(f"{lacking.name} has no control images but {ref.name} has: the "
                           "files come from different settings; retrain the experiment")
    ref_idx, values = None, None
    for p, c in cv.items():
        entry = have[p].get(str(epoch))
        if entry is None:
            raise SummaryError(f"{p.name}: no log p of the control images at epoch {epoch}")
        idx, val = entry
        order = np.argsort(idx, kind="stable")
        idx, val = idx[order], val[order]
        if ref_idx is None:
            ref_idx = idx
            values = np.full((R, K, len(idx)), np.nan, dtype=np.float32)
        elif not np.array_equal(idx, ref_idx):
            raise SummaryError(f"{p.name} scores other control images than {ref.name}; the "
                               "files come from different settings; retrain the experiment")
        if not np.isfinite(val).all():
            raise SummaryError(f"{p.name}: non-finite log p of a control image at epoch {epoch}")
        values[int(c["meta"]["run"]), int(c["meta"]["fold_idx"])] = val
    held = np.stack([splits.control_held_out(len(ref_idx), K, seed, r) for r in range(R)])
    return ref_idx.astype(np.int64), values, held


def summarize(paths: list[str | Path], progress: bool = True, n_boot: int = 1000,
              experiment=None, n_perm: int | None = None, fdr_q: float | None = None,
              test: str | None = None) -> Summary:
    """The summary of one experiment's result files, with bootstrap uncertainty over repeats
    (`n_boot` replicates), split-half reliability and the permutation calibration (`n_perm`
    labellings per example, Benjamini–Hochberg at `fdr_q` over the p-values of `test`,
    memo.score.flagging; n_perm=0: no calibration); labels
    are left at -1 (unknown).
    experiment (experiments.Experiment): the files must have been made under its settings."""
    paths = [Path(p) for p in paths]
    if not paths:
        raise SummaryError("no result files given")
    contents = {}
    for p in tqdm(paths, desc="reading result files", disable=None if progress else True, leave=False):
        contents[p] = _compact(results.read_result(p, experiment), p)
    meta = _check_identity(contents)
    if experiment is not None:
        _check_settings(contents, experiment)

    cv = {p: c for p, c in contents.items() if c["meta"]["mode"] != "full"}
    if experiment is not None:  # its first L repeats; files of repeats beyond them are ignored
        cv = {p: c for p, c in cv.items() if int(c["meta"]["run"]) < experiment.repeats}
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
    n_repeats = (experiment.repeats if experiment is not None
                 else int(meta.get("repeats") or max(r for r, _ in seen) + 1))
    outside = [p for (r, k), p in seen.items() if r >= n_repeats or k >= n_folds]
    if outside:
        raise SummaryError(f"{outside[0].name} is repeat {cv[outside[0]]['meta']['run']} fold "
                           f"{cv[outside[0]]['meta']['fold_idx']}, outside the {n_repeats} "
                           f"repeats of {n_folds} folds the files record")
    missing = n_repeats * n_folds - len(seen)
    if missing:
        first = list(itertools.islice((f"repeat {r} fold {k}" for r in range(n_repeats)
                                       for k in range(n_folds) if (r, k) not in seen), 5))
        raise SummaryError(f"missing {missing} of {n_repeats * n_folds} fold result files: "
                           f"{', '.join(first)}{', ...' if missing > len(first) else ''}")

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
        n = len(c["train"][0]) + len(c["test"][0])
    n, E, R = int(n), len(epochs), n_repeats
    # each fold model scored every example once, in train or test: before any allocation,
    # the counts; in the loop below, the indices
    for p, c in cv.items():
        for epoch in epochs:
            parts = c["results"]["logpxs"][str(epoch)]
            if len(parts["train"][0]) + len(parts["test"][0]) != n:
                raise SummaryError(
                    f"{p.name}: {len(parts['train'][0])} training and {len(parts['test'][0])} "
                    f"held-out examples at epoch {epoch}, but n = {n}; the file is damaged or "
                    "from another experiment")

    in_lse = np.full((E, R, n), -np.inf)
    out_lse = np.full((E, R, n), -np.inf)
    in_count = np.zeros((E, R, n), dtype=np.int64)
    out_count = np.zeros((E, R, n), dtype=np.int64)
    ess_sum = {"train": np.zeros(n), "test": np.zeros(n)}
    ess_cnt = {"train": np.zeros(n, dtype=np.int64), "test": np.zeros(n, dtype=np.int64)}
    # every fold model's value of every example at the final epoch, for the calibration
    values = np.full((R, n_folds, n), np.nan, dtype=np.float32)
    held_out = np.full((R, n), -1, dtype=np.int16)
    for p, c in cv.items():
        r, k = int(c["meta"]["run"]), int(c["meta"]["fold_idx"])
        for ei, epoch in enumerate(epochs):
            parts = c["results"]["logpxs"][str(epoch)]
            both = np.concatenate([parts["train"][0], parts["test"][0]])
            if both.min() < 0 or both.max() >= n or (np.bincount(both, minlength=n) != 1).any():
                raise SummaryError(
                    f"{p.name}: at epoch {epoch} its training and held-out examples are not "
                    f"each of 0..{n - 1} once (an example in both, or twice, or none); the file "
                    "is damaged or was edited")
            for part, lse, cnt in (("train", in_lse, in_count), ("test", out_lse, out_count)):
                idx, val = parts[part]
                if len(idx) and (idx.min() < 0 or idx.max() >= n):
                    raise SummaryError(f"{p.name}: example index outside 0..{n - 1}")
                if not np.isfinite(val).all():
                    raise SummaryError(f"{p.name}: non-finite log p(x) at epoch {epoch}")
                lse[ei, r, idx] = np.logaddexp(lse[ei, r, idx], val)
                cnt[ei, r, idx] += 1
                if ei == E - 1:
                    values[r, k, idx] = val
                    if part == "test":
                        held_out[r, idx] = k
        ess = c["results"].get("ess", {}).get(str(epochs[-1]))
        if ess:
            for part in ("train", "test"):
                idx, val = ess[part]
                ess_sum[part][idx] += val
                ess_cnt[part][idx] += 1
    for r, never in enumerate(held_out < 0):
        if never.any():
            raise SummaryError(f"repeat {r}: {int(never.sum())} examples are never held out; "
                               "a fold result file is missing or from another split")

    U, V, M = np.empty((E, n)), np.empty((E, n)), np.empty((E, n))
    for ei in range(E):
        U[ei], V[ei], M[ei] = uncertainty.score_from_repeats(
            in_lse[ei], in_count[ei], out_lse[ei], out_count[ei])
    with np.errstate(invalid="ignore", divide="ignore"):
        ess_in = np.where(ess_cnt["train"] > 0, ess_sum["train"] / ess_cnt["train"], np.nan)
        ess_out = np.where(ess_cnt["test"] > 0, ess_sum["test"] / ess_cnt["test"], np.nan)
    losses = full[0]["results"]["losses"] if full else {"train": [], "test": []}
    # named after the experiment asked for, and its data from the experiment, never from a
    # path a file names (a file may come from anywhere)
    spec = meta.get("data_spec")
    out_meta = {
        "experiment": (experiment.name if experiment else None) or meta.get("experiment")
        or Path(paths[0]).parent.parent.name,
        "data": (experiment.data if experiment else None)
        or (spec if spec in DATASET_NAMES else _spec_from_dataset(meta["dataset"])),
        "dataset": meta["dataset"], "model": meta["model"], "latent_dim": meta.get("latent_dim"),
        "lr": meta.get("learning_rate"), "epochs": meta.get("epochs"),
        "n_is": meta.get("num_iw_samples"), "folds": n_folds, "repeats": n_repeats,
        "seed": meta.get("seed"), "n": n, "eval_epochs": epochs, "subset": meta.get("subset", 0),
        "has_full_model": bool(full), "method": results.recorded_method(meta),
        "ess_threshold_fraction": uncertainty.ESS_THRESHOLD_FRACTION,
    }
    privacy = _privacy(contents)
    if privacy:
        out_meta["privacy"] = privacy

    final = (in_lse[-1], in_count[-1], out_lse[-1], out_count[-1])
    seed = out_meta["seed"] or 0
    # one draw of bootstrap replicates for M and M_corrected: their intervals match
    weights = uncertainty.bootstrap_weights(R, n_boot, seed) if R >= 2 and n_boot >= 2 else None
    se, lo, hi = uncertainty.bootstrap(*final, n_boot=n_boot, seed=seed, weights=weights)
    reliability = uncertainty.split_half_reliability(*final, seed=seed)
    low_ess = (uncertainty.ess_flags(ess_in, out_meta["n_is"])
               | uncertainty.ess_flags(ess_out, out_meta["n_is"]))
    s = Summary(
        meta=out_meta, epochs=np.array(epochs), U=U, V=V,
        in_lse=in_lse[-1], in_count=in_count[-1], out_lse=out_lse[-1], out_count=out_count[-1],
        ess_in=ess_in, ess_out=ess_out,
        full_losses_train=np.asarray(losses["train"], dtype=float),
        full_losses_test=np.asarray(losses["test"], dtype=float),
        index=np.arange(n), labels=np.full(n, -1, dtype=np.int64),
        M_se=se, M_ci_low=lo, M_ci_high=hi, split_half=float(reliability), low_ess=low_ess)
    out_meta["split_half_repeats"] = [R // 2, R - R // 2]
    n_perm = calibration.DEFAULT_PERMUTATIONS if n_perm is None else int(n_perm)
    fdr_q = calibration.DEFAULT_FDR_Q if fdr_q is None else float(fdr_q)
    if n_perm > 0:
        missing = int(np.isnan(values).sum())
        twice = int((out_count[-1] != 1).sum())
        if missing or twice:
            what = (f"{missing} of {values.size} (repeat, fold, example) values are missing"
                    if missing else
                    f"{twice} (repeat, example) pairs are not held out exactly once")
            raise SummaryError(
                f"cannot calibrate: {what} at epoch {epochs[-1]}; the calibration needs every "
                "fold model's log p of every example (complete result files); summarize "
                "without it with --n-perm 0")
        controls = _control_values(cv, epochs[-1], R, n_folds, seed)
        calibrate_summary(s, values, held_out, n_perm=n_perm, fdr_q=fdr_q, n_boot=n_boot,
                          seed=seed, weights=weights, test=test, controls=controls)
    return s


def _finite_or_none(v: float) -> float | None:
    """JSON has no infinity or nan: such a number is recorded as null."""
    return float(v) if np.isfinite(v) else None


def _p_values(test: str, values, held_out, perm, prior=None) -> tuple[np.ndarray, dict]:
    """The flagging test's p-values (memo.score.flagging) and its record; perm: the
    permutation calibration of the same values; prior: the training examples' variance prior
    (for the control images)."""
    if test == "permutation":
        return perm.p_value, {}
    try:
        tt = flagging.p_values(test, values, held_out, prior)
    except flagging.FlaggingError as e:
        raise SummaryError(f"{e}; summarize with --test permutation") from None
    # one variance for all (d0 infinite) is recorded as null
    return tt.p, {"df": _finite_or_none(tt.df), "prior_df": _finite_or_none(tt.prior_df),
                  "prior_var": _finite_or_none(tt.prior_var)}


def score_controls(values, held_out, test: str, n_perm: int, seed: int, prior=None) -> dict:
    """M, M_corrected and the flagging test's p-value of the control images, by the code the
    training examples go through (with their variance prior)."""
    in_lse, in_count, out_lse, out_count = terms_from_values(values, held_out)
    _, _, M = uncertainty.score_from_repeats(in_lse, in_count, out_lse, out_count)
    perm = calibration.calibrate(values, held_out, n_perm=n_perm, seed=seed + 1)
    p, _ = _p_values(test, values, held_out, perm, prior)
    return {"M": M, "M_corrected": M - perm.null_mean, "p_value": p}


def terms_from_values(values, held_out):
    """Per-repeat (in logsumexp, in count, out logsumexp, out count), each (R, m), of one
    evaluation epoch from every fold model's values (R, K, m) and the held-out folds (R, m)."""
    values = np.asarray(values, dtype=np.float64)
    held = flagging.out_mask(values.shape, held_out)
    with np.errstate(divide="ignore"):
        in_lse = np.logaddexp.reduce(np.where(held, -np.inf, values), axis=1)
        out_lse = np.logaddexp.reduce(np.where(held, values, -np.inf), axis=1)
    K = values.shape[1]
    count = np.ones(held_out.shape, dtype=np.int64)
    return in_lse, count * (K - 1), out_lse, count


def calibrate_summary(s: Summary, values, held_out, n_perm: int, fdr_q: float, n_boot: int,
                      seed: int, weights=None, test: str | None = None, controls=None) -> None:
    """Fill the calibration of a summary in place (memo.calibration): null mean, M_corrected
    and its bootstrap interval, the p-values of `test` (memo.score.flagging), BH flags,
    split-half of M_corrected, the control images' scores and flag rate; the record of how
    (meta["calibration"]). weights: the bootstrap replicates of M's interval (drawn from
    seed when not given). controls: (index, values, pseudo-folds) or None. Work is timed in
    s.timings."""
    test = test or flagging.DEFAULT_TEST
    if test not in flagging.TESTS:
        raise SummaryError(f"unknown test {test!r}; valid choices: {', '.join(flagging.TESTS)}")
    t0 = time.perf_counter()
    R, K, n = values.shape
    c = calibration.calibrate(values, held_out, n_perm=n_perm, seed=seed)
    p_value, test_record = _p_values(test, values, held_out, c)
    flags, cutoff = calibration.benjamini_hochberg(p_value, fdr_q)
    s.values, s.held_out = values, held_out
    s.null_mean = c.null_mean
    s.p_value = p_value
    s.memorized = flags
    at = flagging.threshold(int(flags.sum()), fdr_q, n)
    control_record = None
    if controls is not None:
        s.control_index, s.control_values, s.control_held_out = controls
        prior = None
        if test_record.get("prior_var") is not None:   # moderated: the training examples' prior
            d0 = test_record["prior_df"]
            prior = (float("inf") if d0 is None else d0, test_record["prior_var"])
        scored = score_controls(s.control_values, s.control_held_out, test, n_perm, seed, prior)
        s.control_M, s.control_M_corrected = scored["M"], scored["M_corrected"]
        s.control_p_value = scored["p_value"]
        control_record = flagging.control_report(s.control_p_value, at, n, int(flags.sum()))
    s.timings["calibration"] = time.perf_counter() - t0

    # the interval of M_corrected: the null recomputed in each bootstrap replicate when
    # affordable, else M's interval shifted by the (full-data) null mean
    t0 = time.perf_counter()
    if R < 2 or n_boot < 2:
        interval = "none"
    elif calibration.bootstrap_affordable(K, R, n, n_boot):
        w = uncertainty.bootstrap_weights(R, n_boot, seed) if weights is None else weights
        s.M_corrected_ci_low, s.M_corrected_ci_high = calibration.bootstrap_corrected(
            values, held_out, w)
        interval = "recomputed"
    else:
        s.M_corrected_ci_low = s.M_ci_low - c.null_mean
        s.M_corrected_ci_high = s.M_ci_high - c.null_mean
        interval = "shifted"
    rel, splits = calibration.split_half_corrected(values, held_out, seed=seed, n_perm=n_perm)
    s.split_half_corrected = rel
    s.timings["calibration uncertainty"] = time.perf_counter() - t0

    min_p = c.min_p if test == "permutation" else 0.0
    pi1_low, pi1_high = flagging.storey_interval(p_value, n_boot=n_boot, seed=seed)
    s.meta["calibration"] = {
        "test": test, **test_record,
        "n_perm": n_perm, "exact": c.exact, "labellings": calibration.labellings(K, R),
        "labellings_used": c.n_labellings, "min_p": min_p, "fdr_q": fdr_q,
        "bh_first_threshold": fdr_q / n, "bh_cutoff": None if np.isnan(cutoff) else cutoff,
        "threshold": at, "flagged": int(flags.sum()), "can_flag": min_p <= fdr_q / n,
        "needed_at_min_p": calibration.needed_at_minimum(min_p, n, fdr_q) if min_p else 1,
        "seed": seed, "interval": interval, "split_half_corrected_splits": splits,
        "pi1": flagging.storey_pi1(p_value), "pi1_ci": [pi1_low, pi1_high],
        "controls": control_record,
        # the variance model's check (memo.score.flagging.variance_ratio): ~1 when it holds
        "variance_ratio": _finite_or_none(flagging.variance_ratio(values, held_out)),
        "variance_ratio_controls": (None if controls is None else _finite_or_none(
            flagging.variance_ratio(s.control_values, s.control_held_out))),
    }


def _privacy(contents: dict[Path, dict]) -> dict | None:
    """The privacy of the models of a private experiment (memo/train/private.py), or None: the target,
    the largest ε any model spent, and the noise multipliers (fold models and the full model
    have different sample rates, hence different σ)."""
    records = {c["meta"]["mode"] == "full": c["meta"]["privacy"] for c in contents.values()
               if c["meta"].get("privacy")}
    if not records:
        return None
    every = [c["meta"]["privacy"] for c in contents.values() if c["meta"].get("privacy")]
    any_record = next(iter(records.values()))
    out = {"epsilon": any_record["target_epsilon"], "delta": any_record["delta"],
           "max_grad_norm": any_record["max_grad_norm"],
           "epsilon_spent": max(r["epsilon_spent"] for r in every),
           "noise_multiplier": max(r["noise_multiplier"] for r in every)}
    if True in records:
        out["epsilon_spent_full"] = records[True]["epsilon_spent"]
        out["noise_multiplier_full"] = records[True]["noise_multiplier"]
    if False in records:
        out["noise_multiplier_folds"] = records[False]["noise_multiplier"]
        # what bounds M (memo.score.privacy): each distinct schedule of the fold models (their
        # training sets differ in size by one when K does not divide n)
        folds = {(r["sample_rate"], r["noise_multiplier"], r["steps"]): r
                 for c in contents.values() if c["meta"]["mode"] != "full"
                 for r in [c["meta"].get("privacy")] if r}
        out["fold_models"] = [{"sample_rate": q, "noise_multiplier": sigma, "steps": steps}
                              for q, sigma, steps in sorted(folds)]
    return out


def _spec_from_dataset(dataset: str) -> str:
    return {name: spec for spec, name in DATASET_NAMES.items()}.get(dataset, dataset)



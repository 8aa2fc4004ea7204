"""The field's other memorization measures beside M, computed from models the pipeline trains.

Every measure is one number per training example, larger meaning "more memorized" in the
sense its authors use it:

  M               the K-fold score (memo/score/summary.py), K·L + 1 models
  M_corrected     M minus its permutation-null mean (memo/score/calibration.py)
  neg_log_px      −log p(x) under the full model (IS, last epoch): the outlier score the paper
                  contrasts with memorization
  final_loss      negative ELBO of x under the final full model (eval mode, fixed input noise,
                  mean over EPS_DRAWS reparameterization draws): high for atypical, poorly
                  fitted examples (the opposite orientation of loss-based membership inference)
  loss_sum        x's training loss added up over every epoch of the full model's training
                  (recorded by the training loop itself, memo/train/training.py)
  self_influence  TracIn self-influence (SGD form), Σ_c lr·‖∇θ ℓ(x; θ_c)‖² over the full
                  model's weights at its evaluation epochs, ℓ averaged over EPS_DRAWS draws;
                  the mean of two independent evaluations, whose Spearman correlation is
                  kept as its reliability (memo/measures/influence.py)
  curvature       input-loss curvature, Hutchinson estimate of tr(HᵀH) of ℓ at x from exact
                  Hessian-vector products (memo/measures/curvature.py), mean over the
                  evaluation epochs' weights
  curvature_final the same at the final weights alone
  copies          the number of the full model's samples that copy x by the 1/3 rule
                  (memo/measures/copying.py)

All one-model measures use the full model (trained on all of D) and its weights kept at each
evaluation epoch (memo/files/results.py, JobFiles.weights_at).
"""
from __future__ import annotations

import json
import time

import numpy as np
import torch

from memo.train import checkpoints
from memo.measures import EPS_DRAWS, H, N_SAMPLES, N_VECTORS, copying, curvature, influence
from memo import data, models
from memo.data import planted, preprocess
from memo.score import rankstats
from memo.files import results
from memo.files.measures import MeasureSet
from memo.config.experiments import FULL_JOB, Experiment
from memo.errors import MemoError

MEASURES = {                   # name: label for tables and figures
    "M": "$M$ ($K$-fold)",
    "M_corrected": r"$M_{\mathrm{corrected}}$",
    "neg_log_px": r"$-\log p(x)$, full model",
    "final_loss": "final training loss",
    "loss_sum": "loss summed over training",
    "self_influence": "self-influence (TracIn)",
    "curvature": "input curvature (mean over epochs)",
    "curvature_final": "input curvature (final epoch)",
    "copies": "samples copying it (1/3 rule)",
}
ONE_MODEL = [k for k in MEASURES if k not in ("M", "M_corrected")]


class MeasuresError(ValueError, MemoError):
    """Inputs the measures cannot be computed from; the message names the file and the fix."""


# ----------------------------------------------------------------------------------------------
# computing


def _cpu(fn):
    """(result, CPU seconds of this process) of fn()."""
    t = time.process_time()
    out = fn()
    return out, time.process_time() - t


def _training_seconds(exp: Experiment, root) -> tuple[float, float]:
    """CPU seconds of training (all models, the full model), nan where not recorded."""
    def cpu(job):
        try:
            return float(json.loads(results.job_files(exp, job, root).cost.read_text())
                         ["cpu_seconds"])
        except (OSError, ValueError, KeyError, TypeError):
            return float("nan")
    return sum(cpu(j) for j in exp.jobs()), cpu(FULL_JOB)


STREAMS = ("final_loss", "self_influence", "curvature", "samples", "self_influence_2")


def stream(exp: Experiment, device, measure: str, epoch: int = 0) -> torch.Generator:
    """The random stream of one measure (and epoch), apart from every other's."""
    seed = np.random.SeedSequence([exp.seed, 0x4D45, STREAMS.index(measure), epoch])
    return torch.Generator(device=device).manual_seed(int(seed.generate_state(1)[0]))


def _weights(exp: Experiment, root, model: torch.nn.Module) -> tuple[list[int], list[dict]]:
    """The full model's weights at each evaluation epoch that has them (the last one is
    required: checkpoints.load_full_model has loaded it)."""
    files = results.job_files(exp, FULL_JOB, root)
    epochs, states = [], []
    for e in exp.eval_epochs():
        path = files.checkpoint if e == exp.epochs else files.weights_at(e)
        if not path.is_file():
            continue
        state = checkpoints.full_model_state(exp, root, e)
        models.load_weights(model, state, path)   # checks the layout
        checkpoints.finite_or_refuse(model, path, "retrain the full model (delete its "
                                     "checkpoints and its result file)")
        epochs.append(e)
        states.append(state)
    return epochs, states


def layout_of(exp: Experiment, data_root=None) -> planted.Layout | None:
    if exp.data != "planted":
        return None
    return data.planted_layout(data_root)


def compute(exp: Experiment, summary, results_root="results", data_root=None, device="cpu",
            n_samples: int = N_SAMPLES, n_vectors: int = N_VECTORS, h: float | None = H,
            log=print) -> MeasureSet:
    """Every measure for the examples of `summary` (a memo.files.summary.Summary of exp)."""
    device = torch.device(device)
    files = results.job_files(exp, FULL_JOB, results_root)
    full = results.read_result(files.result, exp)
    train = data.training_images(exp, data_root)
    index = np.asarray(summary.index, dtype=np.int64)
    if index.max(initial=-1) >= len(train):
        raise MeasuresError(f"summary of {exp.name} names example {index.max()} but the data "
                            f"set has {len(train)}; rebuild the summary")
    images = train[torch.from_numpy(index)].to(device)
    model = checkpoints.load_full_model(exp, results_root, device, images.shape[1])
    epochs, states = _weights(exp, results_root, model)
    model.load_state_dict(states[-1])
    model.eval()

    values, seconds = {}, {}
    values["M"] = np.asarray(summary.M_final, dtype=float)
    values["M_corrected"] = np.asarray(summary.M_corrected, dtype=float)
    seconds["M"] = seconds["M_corrected"] = 0.0

    # from the full model's result file: log p at its last epoch, the summed training loss
    last = str(max(map(int, full["results"]["logpxs"])))
    idx, lp = results.as_arrays(full["results"]["logpxs"][last]["train"], files.result)
    values["neg_log_px"] = _by_index(index, idx, -lp)
    seconds["neg_log_px"] = 0.0
    loss_sum = full["results"].get("train_loss_sum")
    if loss_sum:
        values["loss_sum"] = _by_index(index, *results.as_arrays(loss_sum, files.result))
    else:
        log(f"[{exp.name}] {files.result.name} records no per-example training loss "
            "(made before it was recorded, or by the authors' code): loss_sum is not available")
        values["loss_sum"] = np.full(len(index), np.nan)
    seconds["loss_sum"] = 0.0

    # inputs with their fixed evaluation noise; each measure draws from a stream of its own
    x = preprocess.eval_inputs(images, torch.from_numpy(index).to(device), model.binary,
                               exp.seed, None)
    eps = model.noise((EPS_DRAWS, len(index)), stream(exp, device, "final_loss"), device)

    def final_loss():
        return torch.stack([influence.per_example_loss(model, x, e) for e in eps]).mean(0)
    v, seconds["final_loss"] = _cpu(final_loss)
    values["final_loss"] = v.double().cpu().numpy()

    # the measures over training need the weights of every evaluation epoch
    every = epochs == exp.eval_epochs()
    if not every:
        log(f"[{exp.name}] the full model kept weights at epochs {epochs} only, not at every "
            f"evaluation epoch {exp.eval_epochs()} (trained before they were kept, or "
            "published without them): self_influence and curvature (mean over epochs) are "
            "not available; retrain the full model to have them")
    values["self_influence"], seconds["self_influence"] = np.full(len(index), np.nan), 0.0
    reliability = {}
    if every:
        log(f"[{exp.name}] self-influence over the weights of epochs {epochs}, twice "
            f"({EPS_DRAWS} noise draws each)")

        def si(name):
            draws = model.noise((EPS_DRAWS, len(index)), stream(exp, device, name), device)
            return influence.self_influence(model, states, [exp.lr] * len(states), x, draws)
        (a, b), seconds["self_influence"] = _cpu(
            lambda: [si(k).double().cpu().numpy() for k in ("self_influence",
                                                            "self_influence_2")])
        values["self_influence"] = (a + b) / 2
        reliability["self_influence"] = rankstats.spearman(a, b)
        log(f"[{exp.name}] self-influence: Spearman {reliability['self_influence']:.3f} "
            "between two independent evaluations")

    how = "exact Hessian-vector products" if h is None else f"forward difference, h = {h:g}"
    log(f"[{exp.name}] input curvature ({n_vectors} vectors, {how}, float64)")
    per_epoch, total = [], 0.0
    used = list(zip(epochs, states)) if every else [(epochs[-1], states[-1])]
    for epoch, state in used:
        model.load_state_dict(state)
        cgen = stream(exp, device, "curvature", epoch)   # new vectors and eps at each epoch
        v, s = _cpu(lambda: curvature.vae_input_curvature(model, x, n_vectors, h, cgen))
        per_epoch.append(v.double().cpu().numpy())
        total += s
    values["curvature"] = np.mean(per_epoch, axis=0) if every else np.full(len(index), np.nan)
    values["curvature_final"] = per_epoch[-1]
    seconds["curvature"] = total
    seconds["curvature_final"] = total / len(per_epoch)
    model.load_state_dict(states[-1])

    log(f"[{exp.name}] 1/3 rule: {n_samples} samples against {len(index)} training images")
    pixels = (images.to(torch.float32) / 255).flatten(1)

    def copies():
        samples = copying.sample_images(model, n_samples, stream(exp, device, "samples"))
        return copying.copying(samples, pixels)
    found, seconds["copies"] = _cpu(copies)
    values["copies"] = found.copies_per_example.double().numpy()
    record = {"ratio": found.ratio, "low": found.interval[0], "high": found.interval[1],
              "samples": n_samples}
    try:  # control: held-out real images, which cannot be copies
        test = data.load(exp.data, "test", root=data_root).images[:len(index)]
        control = copying.copying((test.to(device, torch.float32) / 255).flatten(1), pixels)
        record.update(control_ratio=control.ratio, control_low=control.interval[0],
                      control_high=control.interval[1], control_n=len(test))
    except data.DataMissingError:
        pass

    all_seconds, full_seconds = _training_seconds(exp, results_root)
    n_models = exp.folds * exp.repeats + 1
    lay = layout_of(exp, data_root)
    return MeasureSet(
        experiment=exp.name, index=index, values={k: values[k] for k in MEASURES},
        seconds=seconds,
        models={k: (n_models if k in ("M", "M_corrected") else 1) for k in MEASURES},
        train_seconds={k: (all_seconds if k in ("M", "M_corrected") else full_seconds)
                       for k in MEASURES},
        copying=record, epochs=epochs,
        role=None if lay is None else lay.role[index].astype(np.int64),
        group=None if lay is None else lay.group[index],
        settings={"eps_draws": EPS_DRAWS, "curvature_vectors": n_vectors, "curvature_h": h},
        reliability=reliability)


def _by_index(index: np.ndarray, idx: np.ndarray, v: np.ndarray) -> np.ndarray:
    """v (given at positions idx of D) at the positions `index`; nan where absent."""
    out = np.full(len(index), np.nan)
    where = {int(i): k for k, i in enumerate(idx)}
    for j, i in enumerate(index):
        k = where.get(int(i))
        if k is not None:
            out[j] = v[k]
    return out


# ----------------------------------------------------------------------------------------------
# the benchmark table


def singleton_auroc(scores: np.ndarray, role: np.ndarray, n_boot: int = 1000,
                    target: int = planted.SINGLETON) -> tuple[float, float, float]:
    """(AUROC, low, high) of the planted examples of role `target` (the rare-class
    singletons by default, or the one-offs) against the regular examples under `scores`
    (other planted examples and non-finite scores left out); the 95 % bootstrap interval is
    nan for n_boot = 0, everything nan when one of the two groups is empty."""
    pool = np.isfinite(scores) & ((role == planted.REGULAR) | (role == target))
    positive = role[pool] == target
    if positive.all() or not positive.any():
        return (np.nan,) * 3
    a = rankstats.auroc(scores[pool], positive)
    if not n_boot:
        return a, np.nan, np.nan
    return (a, *rankstats.auroc_interval(scores[pool], positive, n_boot=n_boot))


FLAG_COLUMNS = ("flagged_oneoffs", "flagged_singletons", "flagged_duplicates",
                "flagged_regular", "flagged_controls")
FLAG_ROLES = (("oneoffs", planted.ONEOFF), ("singletons", planted.SINGLETON),
              ("duplicates", planted.DUPLICATE), ("regular", planted.REGULAR))


def benchmark(ms: MeasureSet, n_boot: int = 1000, flagged=None, control_flagged=None
              ) -> list[dict]:
    """Per measure: AUROC of the one-offs and of the rare-class singletons against regular
    examples (with bootstrap intervals), the mean rank percentile of duplicates, Spearman with
    M over regular examples, the reliability of a noisy measure (Spearman between two
    independent evaluations, where kept), and cost. Without a planted layout only the
    Spearman, reliability and cost columns are filled. flagged (n,) and
    control_flagged (C,): the summary's flags; M's row then counts them per planted role and
    among the control images ("k/of")."""
    rows = []
    regular = np.ones(ms.n, bool) if ms.role is None else ms.role == planted.REGULAR
    for name in MEASURES:
        v = ms.values.get(name)
        row = {"measure": name, "oneoff_auroc": np.nan, "oneoff_auroc_low": np.nan,
               "oneoff_auroc_high": np.nan,
               "auroc": np.nan, "auroc_low": np.nan, "auroc_high": np.nan,
               "duplicate_percentile": np.nan, "spearman_M": np.nan,
               "reliability": float(ms.reliability.get(name, np.nan)),
               "models": ms.models[name],
               "cpu_seconds": ms.train_seconds[name] + ms.seconds[name],
               **dict.fromkeys(FLAG_COLUMNS, "")}
        if v is None or not np.isfinite(v).any():
            rows.append(row)
            continue
        ok = np.isfinite(v)
        if name != "M":
            both = ok & regular & np.isfinite(ms.values["M"])
            row["spearman_M"] = rankstats.spearman(v[both], ms.values["M"][both])
        if ms.role is not None:
            row["auroc"], row["auroc_low"], row["auroc_high"] = singleton_auroc(v, ms.role,
                                                                                n_boot)
            (row["oneoff_auroc"], row["oneoff_auroc_low"],
             row["oneoff_auroc_high"]) = singleton_auroc(v, ms.role, n_boot, planted.ONEOFF)
            pct = rankstats.rank_percentile(np.where(ok, v, -np.inf))
            row["duplicate_percentile"] = float(pct[ms.role == planted.DUPLICATE].mean())
        if name == "M" and flagged is not None:
            flagged = np.asarray(flagged, bool)
            for label, role in (() if ms.role is None else FLAG_ROLES):
                sel = ms.role == role
                if not sel.any():
                    continue
                row[f"flagged_{label}"] = f"{int(flagged[sel].sum())}/{int(sel.sum())}"
            if ms.role is None:
                row["flagged_regular"] = f"{int(flagged.sum())}/{flagged.size}"
            if control_flagged is not None and len(control_flagged):
                row["flagged_controls"] = (f"{int(np.sum(control_flagged))}/"
                                           f"{len(control_flagged)}")
        rows.append(row)
    return rows


# ----------------------------------------------------------------------------------------------
# the CSV beside the measures file (memo/files/measures.py)


def csv_text(ms: MeasureSet) -> str:
    """One row per example: index, its planted role and group when there is a layout, every
    measure."""
    cols = ["index"] + (["role", "group"] if ms.role is not None else []) + list(ms.values)
    lines = [",".join(cols)]
    for j in range(ms.n):
        cells = [str(int(ms.index[j]))]
        if ms.role is not None:
            cells += [planted.ROLE_NAMES[int(ms.role[j])], str(int(ms.group[j]))]
        cells += [f"{ms.values[k][j]:.6g}" for k in ms.values]
        lines.append(",".join(cells))
    return "\n".join(lines) + "\n"


TABLE_COLUMNS = ("measure", "oneoff_auroc", "oneoff_auroc_low", "oneoff_auroc_high", "auroc",
                 "auroc_low", "auroc_high", "duplicate_percentile", "spearman_M", "reliability",
                 "models", "cpu_seconds", *FLAG_COLUMNS)


# filled only on a planted layout (memo/data/planted.py); elsewhere they would be empty
PLANTED_COLUMNS = ("oneoff_auroc", "oneoff_auroc_low", "oneoff_auroc_high", "auroc",
                   "auroc_low", "auroc_high", "duplicate_percentile", "flagged_oneoffs",
                   "flagged_singletons", "flagged_duplicates")


def table_columns(rows: list[dict]) -> tuple[str, ...]:
    """TABLE_COLUMNS less the planted benchmark's columns that no row fills (data without a
    planted layout, or a layout without one of the roles)."""
    def filled(value):
        return bool(value) if isinstance(value, str) else bool(np.isfinite(value))
    return tuple(c for c in TABLE_COLUMNS if c not in PLANTED_COLUMNS
                 or any(filled(r[c]) for r in rows))


def table_csv(rows: list[dict]) -> str:
    columns = table_columns(rows)
    lines = [",".join(columns)]
    for r in rows:
        lines.append(",".join(str(r[c]) if isinstance(r[c], (str, int)) else f"{r[c]:.6g}"
                              for c in columns))
    return "\n".join(lines) + "\n"


def table_text(rows: list[dict], ms: MeasureSet) -> str:
    """The table for a terminal (the planted benchmark's columns where filled), and the
    copying ratio."""
    def au(r, key):   # the interval where bootstrapped
        if not np.isfinite(r[key]):
            return "--"
        low, high = r[key + "_low"], r[key + "_high"]
        return f"{r[key]:.3f}" + (f" [{low:.3f}, {high:.3f}]" if np.isfinite(low) else "")

    def num(value, spec):
        return "--" if not np.isfinite(value) else format(value, spec)
    columns = table_columns(rows)
    names = {} if ms.role is not None else {"flagged_regular": "examples"}
    shown = [(key, head, width, cell) for key, head, width, cell in (
        ("oneoff_auroc", "AUROC one-offs", 24, lambda r: au(r, "oneoff_auroc")),
        ("auroc", "AUROC rare singletons", 24, lambda r: au(r, "auroc")),
        ("duplicate_percentile", "dup. pct", 9, lambda r: num(r["duplicate_percentile"], ".1f")))
        if key in columns]
    out = [f"{'measure':<16} " + "".join(f"{head:>{width}} " for _, head, width, _ in shown)
           + f"{'Spearman M':>11} {'models':>6} {'CPU s':>8}"]
    for r in rows:
        spearman = "" if r["measure"] == "M" else num(r["spearman_M"], ".3f")
        out.append(f"{r['measure']:<16} " + "".join(f"{cell(r):>{width}} "
                                                   for _, _, width, cell in shown)
                   + f"{spearman:>11} {r['models']:>6d} {r['cpu_seconds']:>8.1f}")
        # without a planted layout every example is "regular": say examples
        flags = [f"{names.get(c, c.removeprefix('flagged_'))} {r[c]}" for c in FLAG_COLUMNS
                 if r.get(c)]
        if flags:
            out.append(f"{'':<16} flagged: " + ", ".join(flags))
        if np.isfinite(r["reliability"]):
            out.append(f"{'':<16} reliability: Spearman {r['reliability']:.3f} between two "
                       "independent evaluations")
    h = ms.settings.get("curvature_h", "absent")
    if h != "absent":
        out.append("curvature: " + ("exact Hessian-vector products" if h is None else
                                    f"forward difference, h = {h:g}")
                   + f", {ms.settings.get('curvature_vectors')} Rademacher vectors")
    c = ms.copying
    if c:
        out.append(f"memorization ratio (1/3 rule): {c['ratio']:.4f} [{c['low']:.4f}, "
                   f"{c['high']:.4f}] of {c['samples']} samples"
                   + (f"; held-out images: {c['control_ratio']:.4f} [{c['control_low']:.4f}, "
                      f"{c['control_high']:.4f}] of {c['control_n']}" if "control_ratio" in c
                      else ""))
    return "\n".join(out)

"""The training-set size sweep (scripts/sweep.py): per experiment of the sweep, how often its
full model's samples copy a training image by the 1/3 rule (memo/measures/copying.py), at its
final weights and at every kept snapshot (the highest ratio over them, as Gu et al. report it),
the same rule on held-out real images, the full model's final losses and training time, and
the upper tail of M from the experiment's summary when its K-fold models were summarized.

The tail is the mean of the TOP_K largest values, not a quantile: a fixed count of examples
compares alike across sizes, while a 99.9 % quantile of 250 values interpolates between the
two largest and one of 8,000 averages the top eight.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from memo import data
from memo.config.experiments import FULL_JOB
from memo.files import results, summary
from memo.measures import copying, measures
from memo.train import checkpoints
from memo.train import runner


def ratios(found, prefix: str) -> dict:
    """The median and the 1 % quantile of d1/d2 (the rule calls a copy below 1/3)."""
    r = (found.d1 / found.d2).double()
    return {f"{prefix}median_ratio": float(r.quantile(0.5)),
            f"{prefix}low_ratio": float(r.quantile(0.01))}


TOP_K = 10


def top_mean(values: np.ndarray, k: int = TOP_K) -> float:
    """The mean of the k largest values (of all of them when there are fewer)."""
    v = np.sort(np.asarray(values, dtype=float))
    return float(v[-k:].mean()) if v.size else float("nan")


M_FIELDS = ("M_median", "M_q95", "M_top", "Mc_median", "Mc_q95", "Mc_top")


def m_quantiles(exp, summaries) -> dict:
    """The median, 95 % quantile and top-TOP_K mean of M and of M_corrected at the last epoch
    from the experiment's summary in the folder `summaries` (nan when there is none: the
    K-fold models were not trained)."""
    nan = {k: float("nan") for k in M_FIELDS}
    path = Path(summaries) / f"{exp.name}.npz" if summaries else None
    if path is None or not path.is_file():
        return nan
    s = summary.load(path)
    out = dict(nan)
    for prefix, v in (("M", s.M_final), ("Mc", s.M_corrected)):
        v = v[np.isfinite(v)]
        if v.size:
            out.update({f"{prefix}_median": float(np.median(v)),
                        f"{prefix}_q95": float(np.quantile(v, 0.95)),
                        f"{prefix}_top": top_mean(v)})
    return out


def snapshot_epochs(exp) -> list[int]:
    """The epochs before the last whose weights the full model keeps (memo/train/training.py):
    every evaluation and every checkpoint epoch."""
    every = set(range(exp.checkpoint_every, exp.epochs, exp.checkpoint_every))
    return sorted(every | {e for e in exp.eval_epochs() if e < exp.epochs})


def snapshot_ratios(exp, model, samples: int, pixels, root, device) -> list[tuple[int, float]]:
    """(epoch, memorization ratio) at each snapshot before the last that the full model kept
    (snapshot_epochs; missing files are skipped), each snapshot's samples from a stream of its
    own. The model is left with its final weights."""
    files = results.job_files(exp, FULL_JOB, root)
    out = []
    for e in snapshot_epochs(exp):
        if not files.weights_at(e).is_file():
            continue
        model.load_state_dict(checkpoints.full_model_state(exp, root, e))
        found = copying.copying(copying.sample_images(
            model, samples, measures.stream(exp, device, "samples", e)), pixels)
        out.append((e, found.ratio))
    model.load_state_dict(checkpoints.full_model_state(exp, root))
    return out


def one_size(exp, samples: int, root, data_root, device, log=print, summaries=None) -> dict:
    """Every number of the sweep file (memo/files/sweep.py FIELDS) for one experiment of the
    sweep: its full model trained first when its result file is missing (resumed when a
    resume file is there); summaries: the folder of the sweep's summaries, or None."""
    files = results.job_files(exp, FULL_JOB, root)
    if not files.result.is_file():
        runner.run_job(exp, FULL_JOB, root, device, data_root, log=log)
    content = results.read_result(files.result)
    train = data.training_images(exp, data_root)
    test = data.load(exp.data, "test", root=data_root).images
    model = checkpoints.load_full_model(exp, root, device, train.shape[1])
    pixels = (train.to(device, torch.float32) / 255).flatten(1)
    found = copying.copying(copying.sample_images(model, samples,
                                                  measures.stream(exp, device, "samples")),
                            pixels)
    control = copying.copying((test[:samples].to(device, torch.float32) / 255).flatten(1), pixels)
    snaps = snapshot_ratios(exp, model, samples, pixels, root, device)
    snaps.append((exp.epochs, found.ratio))
    best = max(snaps, key=lambda t: t[1])                    # the earliest of equal ones
    losses = content["results"]["losses"]
    try:
        cpu = float(json.loads(files.cost.read_text())["cpu_seconds"])
    except (OSError, ValueError, KeyError):
        cpu = float("nan")
    return {"n": exp.subset, "epochs": exp.epochs, "ratio": found.ratio,
            "low": found.interval[0], "high": found.interval[1],
            "snapshots": len(snaps), "ratio_max": best[1], "ratio_max_epoch": best[0],
            "control_ratio": control.ratio, "control_low": control.interval[0],
            "control_high": control.interval[1],
            **ratios(found, ""), **ratios(control, "control_"),
            "train_loss": float(losses["train"][-1]),
            "test_loss": float(losses["test"][-1]) if losses["test"] else float("nan"),
            "cpu_seconds": cpu, **m_quantiles(exp, summaries)}

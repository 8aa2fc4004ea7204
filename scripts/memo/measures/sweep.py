"""The training-set size sweep (scripts/sweep.py): per experiment of the sweep, how often its
full model's samples copy a training image by the 1/3 rule (memo/measures/copying.py), the same
rule on held-out real images, the full model's final losses and training time, and quantiles
of M from the experiment's summary when its K-fold models were summarized.
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


def m_quantiles(exp, summaries) -> dict:
    """Quantiles of M and M_corrected at the last epoch from the experiment's summary in the
    folder `summaries` (nan when there is none: the K-fold models were not trained)."""
    nan = {k: float("nan") for k in ("M_median", "M_q95", "M_q999", "Mc_median", "Mc_q95")}
    path = Path(summaries) / f"{exp.name}.npz" if summaries else None
    if path is None or not path.is_file():
        return nan
    s = summary.load(path)
    m, mc = s.M_final[np.isfinite(s.M_final)], s.M_corrected[np.isfinite(s.M_corrected)]
    out = dict(nan)
    if m.size:
        out.update(M_median=float(np.median(m)), M_q95=float(np.quantile(m, 0.95)),
                   M_q999=float(np.quantile(m, 0.999)))
    if mc.size:
        out.update(Mc_median=float(np.median(mc)), Mc_q95=float(np.quantile(mc, 0.95)))
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
    losses = content["results"]["losses"]
    try:
        cpu = float(json.loads(files.cost.read_text())["cpu_seconds"])
    except (OSError, ValueError, KeyError):
        cpu = float("nan")
    return {"n": exp.subset, "epochs": exp.epochs, "ratio": found.ratio,
            "low": found.interval[0], "high": found.interval[1],
            "control_ratio": control.ratio, "control_low": control.interval[0],
            "control_high": control.interval[1],
            **ratios(found, ""), **ratios(control, "control_"),
            "train_loss": float(losses["train"][-1]),
            "test_loss": float(losses["test"][-1]) if losses["test"] else float("nan"),
            "cpu_seconds": cpu, **m_quantiles(exp, summaries)}

"""Training one job (a fold model or the full model) and writing its result file: the trainer
its experiment needs — plain (memo/train/training.py) or differentially private
(memo/train/private.py) — through the one loop, training.fit."""
from __future__ import annotations

import torch

from memo.config.experiments import Experiment, Job
from memo.data import JobData, load_job_data
from memo.train import accel
from memo.train.training import Member, OneModel, fit


def run_job(exp: Experiment, job: Job, results_root="results", device="cpu",
            data_root=None, download: bool = False, jd: JobData | None = None,
            log=print, stop_after: int | None = None,
            speed: accel.Speed = accel.Speed(), verbose: bool = False) -> dict | None:
    """Train one model and write its result file. Returns the result dict.

    stop_after=E: checkpoint after epoch E and return None without a result file.
    speed: TF32 and torch.compile for the training steps (memo/train/accel.py).
    verbose: log a line per epoch, not only the model's result line.
    """
    device = torch.device(device)
    jd = jd or load_job_data(exp, device, job.full, data_root, download)
    member = Member.of(exp, job, jd.train.shape[0], results_root, device)
    trainer = OneModel
    if exp.dp is not None:  # differentially private training (docs/privacy.md)
        # opacus deferred: only private experiments load it
        from memo.train.private import PrivateModel
        trainer = PrivateModel
    done = fit(trainer(exp, member, jd, speed), exp, jd, log, stop_after, speed.describe(device),
               verbose)
    return None if done is None else done[0]

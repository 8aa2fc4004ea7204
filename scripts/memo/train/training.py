"""The training loop: `fit` runs the epochs of one model or of a vectorized group of models.

A trainer (`OneModel` here, `ensemble.Group` for several) does the arithmetic of an epoch, of
the held-out loss and of log p(x); `fit` does everything else, once for both: resume, the
evaluation schedule, divergence checks, resume checkpoints every `checkpoint_every` epochs,
stop-after, and the result files. A restarted job continues from its last checkpoint and gives
the same numbers.
"""
from __future__ import annotations

import json
import math
import os
import sys
import time
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
import torch
from tqdm import tqdm

from memo.train import accel, checkpoints, evaluation, progress
from memo import fileio, models
from memo.data import preprocess
from memo.files import results
from memo.config import splits
from memo.data import JobData
from memo.config.experiments import Experiment, Job
from memo.errors import MemoError


class TrainingDivergedError(RuntimeError, MemoError):
    pass


def adam(params, lr: float) -> torch.optim.Adam:
    """The paper's optimizer, Adam, in torch's fused implementation: one pass over the
    parameters per step instead of several. Measured on the 2-core CPU: 1.8x faster MLP
    training steps, ~4 % for the DCVAEs; on a GPU it is one kernel instead of dozens. It rounds
    differently from the per-tensor implementation (~1e-7 per step)."""
    return torch.optim.Adam(params, lr=lr, fused=True)


def init_model(exp: Experiment, seed: int, in_channels: int, device) -> models.Model:
    """A fresh model initialised from `seed`; the global RNG is left untouched."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return models.of_experiment(exp, in_channels).to(device)


def new_history() -> dict:
    return {"logpxs": {}, "ess": {}, "losses": {"train": [], "test": []}}


#----------------------------------------------------------------------------
# One job's state: what a resume file holds, and where its files go

@dataclass
class Member:
    """One job of a trainer and what it owns. For a group, model and optimizer hold the job's
    state only when it is saved or restored (the arithmetic runs on the stacked copy)."""
    job: Job
    train_idx: np.ndarray            # in-fold examples of D
    test_idx: np.ndarray             # held-out examples of D
    seed: int                        # the model's own seed (splits.model_seed)
    files: results.JobFiles
    train_t: torch.Tensor            # train_idx on the device
    test_t: torch.Tensor             # test_idx on the device
    model: models.Model = None
    optimizer: torch.optim.Adam = None
    gen: torch.Generator = None      # its training stream: data order, input noise, eps
    history: dict = field(default_factory=new_history)
    extra: dict = field(default_factory=dict)  # the trainer's own resume state (memo/train/private.py)

    @classmethod
    def of(cls, exp: Experiment, job: Job, n: int, results_root, device) -> "Member":
        train_idx, test_idx, seed = splits.job_split(exp, job, n)
        return cls(job, train_idx, test_idx, seed, results.job_files(exp, job, results_root),
                   torch.as_tensor(train_idx, device=device),
                   torch.as_tensor(test_idx, device=device))

    def start(self, exp: Experiment, in_channels: int, device) -> None:
        """The job's first state: model from its seed, a fresh Adam, its generator."""
        self.model = init_model(exp, self.seed, in_channels, device)
        self.optimizer = adam(self.model.parameters(), exp.lr)
        self.gen = torch.Generator(device=device).manual_seed(self.seed)
        self.history = new_history()
        self.extra = {}


class Trainer(Protocol):
    """What `fit` needs of one model or a group: lists have one entry per member."""
    members: list[Member]

    def begin(self) -> None:
        """Called once the members hold their first or resumed state."""

    def train_epoch(self) -> list[float]:
        """One epoch of Adam steps; the mean training loss per example of each member."""

    def heldout_losses(self, epoch: int) -> list[float | None]:
        """Mean negative ELBO per held-out example (None: no held-out set)."""

    def log_px(self, epoch: int, part: str) -> list[tuple[np.ndarray, np.ndarray]]:
        """IS (log p, ESS) of every member's in-fold ("train") or held-out ("test") examples."""

    def sync(self) -> None:
        """Bring each member's model and optimizer up to date (before they are saved)."""


#----------------------------------------------------------------------------
# One model

def batch_loss_fn(model, speed: accel.Speed, device):
    """(x, eps) -> the model's loss of each example of a batch, the negative ELBO for the VAEs
    (the paper's loss is their sum), compiled when speed says so."""
    def batch_loss(x, eps):
        return model.loss(x, eps)
    return accel.compile_loss(batch_loss, speed, device)


def train_steps(model, optimizer, batch_loss, images: torch.Tensor, order: torch.Tensor,
                batch_size: int, hflip: bool, gen: torch.Generator,
                speed: accel.Speed, flip: str = "image",
                loss_sum: torch.Tensor | None = None) -> torch.Tensor:
    """One pass of Adam steps over images[order] in batches: the summed loss, float64, left on
    the device (no host synchronisation). loss_sum: a float64 vector over the examples of
    `images` to which each example's loss of this pass is added."""
    model.train()
    total = torch.zeros((), device=images.device, dtype=torch.float64)
    with accel.training_precision(speed):
        for sl in evaluation.batches(len(order), batch_size):
            # noise is drawn outside the (possibly compiled) loss: inputs, then the loss's
            x = preprocess.train_inputs(images[order[sl]], model.binary, hflip, gen, flip)
            eps = model.noise(x.shape[0], gen, images.device)
            losses = batch_loss(x, eps)
            loss = losses.sum()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total += loss.detach().double()
            if loss_sum is not None:
                loss_sum.index_add_(0, order[sl], losses.detach().double())
    return total


LOSS_SUM = "loss_sum"  # history key of the full model's per-example training loss, summed


def start_loss_sum(m: Member, jd: JobData) -> None:
    """The full model's per-example loss accumulator, on the device: zeros at epoch 1, the
    saved one on resume. A resume file from before it was kept has none: the sum would miss
    the epochs before it, so none is recorded (the measures then report it as missing)."""
    if not m.job.full:
        return
    saved = m.history.get(LOSS_SUM)
    if saved is None and m.history["losses"]["train"]:
        return
    m.history[LOSS_SUM] = (torch.zeros(len(jd.train), dtype=torch.float64)
                           if saved is None else saved).to(jd.train.device)


class OneModel:
    """The trainer of a single job: its model, Adam and generator are the training state.
    The full model also adds up each example's training loss over the epochs (a one-model
    memorization measure, memo/measures/measures.py)."""

    def __init__(self, exp: Experiment, member: Member, jd: JobData, speed: accel.Speed):
        self.exp, self.members, self.jd, self.speed = exp, [member], jd, speed

    def begin(self) -> None:
        m = self.members[0]
        self.batch_loss = batch_loss_fn(m.model, self.speed, self.jd.train.device)
        start_loss_sum(m, self.jd)

    def train_epoch(self) -> list[float]:
        m = self.members[0]
        order = m.train_t[torch.randperm(len(m.train_t), device=m.train_t.device,
                                         generator=m.gen)]
        total = train_steps(m.model, m.optimizer, self.batch_loss, self.jd.train, order,
                            self.exp.batch_size, self.jd.hflip, m.gen, self.speed, self.exp.flip,
                            m.history.get(LOSS_SUM))
        return [float(total) / len(m.train_idx)]  # the one host sync per epoch

    def heldout_losses(self, epoch: int) -> list[float | None]:
        m = self.members[0]
        images, image_idx, noise_idx = evaluation.heldout_set(m.job, self.jd, m.test_t)
        if not len(image_idx):
            return [None]
        return [evaluation.test_loss(m.model, images[image_idx], noise_idx, self.exp.seed,
                                     epoch, m.seed, eval_noise=self.exp.eval_noise)]

    def log_px(self, epoch: int, part: str) -> list[tuple[np.ndarray, np.ndarray]]:
        m = self.members[0]
        if part == "control":
            images, index = self.jd.controls, self.jd.control_noise_index
        else:
            index = m.train_t if part == "train" else m.test_t
            images = self.jd.train[index]
        return [evaluation.evaluate(m.model, images, index, self.exp.seed, self.exp.n_is, epoch,
                                    m.seed, eval_noise=self.exp.eval_noise,
                                    desc=f"log p ({evaluation.PART_NAMES[part]})")]

    def sync(self) -> None:
        pass


#----------------------------------------------------------------------------
# The loop

def check_train_loss(train_loss: float, epoch: int, where: str) -> None:
    if not math.isfinite(train_loss):
        raise TrainingDivergedError(
            f"[{where}] training loss became {train_loss} at epoch {epoch}; "
            "no result written (try a lower learning rate)")


def record_log_px(history: dict, epoch: int, train_idx: np.ndarray, test_idx: np.ndarray,
                  lp_tr: np.ndarray, ess_tr: np.ndarray, lp_te: np.ndarray, ess_te: np.ndarray,
                  where: str) -> None:
    """Add one evaluation epoch's log p and ESS to the history; non-finite log p is an error."""
    if not (np.isfinite(lp_tr).all() and np.isfinite(lp_te).all()):
        raise TrainingDivergedError(
            f"[{where}] non-finite log p(x) at epoch {epoch}; no result written")
    history["logpxs"][str(epoch)] = {
        "train": dict(zip(map(str, train_idx.tolist()), lp_tr.tolist())),
        "test": dict(zip(map(str, test_idx.tolist()), lp_te.tolist()))}
    history["ess"][str(epoch)] = {
        "train": dict(zip(map(str, train_idx.tolist()), ess_tr.tolist())),
        "test": dict(zip(map(str, test_idx.tolist()), ess_te.tolist()))}


def record_controls(history: dict, epoch: int, control_idx: np.ndarray, lp: np.ndarray,
                    ess: np.ndarray, where: str) -> None:
    """Add one evaluation epoch's log p and ESS of the control images to the history, keyed by
    their positions in the test split; non-finite log p is an error."""
    if not np.isfinite(lp).all():
        raise TrainingDivergedError(
            f"[{where}] non-finite log p(x) of a control image at epoch {epoch}; no result written")
    keys = list(map(str, control_idx.tolist()))
    controls = history.setdefault(results.CONTROLS, {"logpxs": {}, "ess": {}})
    controls["logpxs"][str(epoch)] = dict(zip(keys, lp.tolist()))
    controls["ess"][str(epoch)] = dict(zip(keys, ess.tolist()))


def _load(members: list[Member], exp: Experiment, paths: list) -> list[int]:
    """Load each member's state from its file in paths; the epochs they hold."""
    done = []
    for m, path in zip(members, paths):
        m.history, epoch = checkpoints.load_resume(path, m.model, m.optimizer, m.gen, exp,
                                                   m.extra)
        done.append(epoch)
    return done


def _resume(exp: Experiment, members: list[Member], in_channels: int, device, name: str,
            log) -> int:
    """Start every member afresh, or from resume files of one epoch for all members: the
    latest, or the one before for members already past it (a group killed while writing its
    files). Returns the last epoch done (0: fresh)."""
    for m in members:
        m.start(exp, in_channels, device)
        for path in (m.files.result, m.files.resume, m.files.resume_previous, m.files.checkpoint,
                     m.files.cost):
            fileio.remove_orphans(path)  # temporary files of a write that was killed
    have = [m.files.resume.exists() or m.files.resume_previous.exists() for m in members]
    if not any(have):
        return 0
    if all(have):
        latest = [m.files.resume if m.files.resume.exists() else m.files.resume_previous
                  for m in members]
        done = _load(members, exp, latest)
        target = min(done)
        # members past the others (a group killed while writing its files) go back one file
        ahead = [i for i, e in enumerate(done) if e > target]
        if all(members[i].files.resume_previous.exists() for i in ahead):
            for i, e in zip(ahead, _load([members[i] for i in ahead], exp,
                                         [members[i].files.resume_previous for i in ahead])):
                done[i] = e
        if set(done) == {target}:
            source = latest[0] if len(members) == 1 else f"{len(members)} resume files"
            log(f"[{name}] resuming after epoch {target} from {source}")
            return target
    log(f"[{name}] resume files are missing or of different epochs; starting afresh")
    for m in members:
        m.start(exp, in_channels, device)
    return 0


def _name(exp: Experiment, members: list[Member]) -> str:
    tags = [m.job.tag for m in members]
    return f"{exp.name} {tags[0]}" if len(tags) == 1 else f"{exp.name} {tags[0]}..{tags[-1]}"


def _mean_or_range(values: list[float]) -> str:
    lo, hi = min(values), max(values)
    return f"{lo:.3f}" if len(values) == 1 else f"{lo:.3f}..{hi:.3f}"


def fit(trainer: Trainer, exp: Experiment, jd: JobData, log=print,
        stop_after: int | None = None, speed: dict | None = None,
        verbose: bool = False) -> list[dict] | None:
    """Train the trainer's members for exp.epochs and write their result files.

    Returns the result dicts in the order of the members; stop_after=E: checkpoint after
    epoch E and return None without result files. speed: recorded in the result metadata.
    Logs one line when done (the last epoch's losses and log p, this run's seconds);
    verbose: one line per epoch as well.
    """
    members = trainer.members
    name = _name(exp, members)
    device = jd.train.device
    start_epoch = _resume(exp, members, jd.train.shape[1], device, name, log) + 1
    trainer.begin()

    eval_epochs = set(exp.eval_epochs())
    for m in members:  # resumed from a file that kept no seconds: the cost stays unknown
        if "seconds" not in m.history:
            m.history["seconds"] = {"cpu": 0.0, "wall": 0.0} if start_epoch == 1 else None
    began = time.perf_counter()
    for epoch in tqdm(range(start_epoch, exp.epochs + 1), desc=name, initial=start_epoch - 1,
                      total=exp.epochs, disable=progress.disabled(), file=sys.stderr,
                      leave=False):
        t0, c0 = time.perf_counter(), time.process_time()
        train = trainer.train_epoch()
        for m, loss in zip(members, train):
            check_train_loss(loss, epoch, f"{exp.name} {m.job.tag}")
            m.history["losses"]["train"].append(loss)
        held = trainer.heldout_losses(epoch)
        for m, loss in zip(members, held):
            if loss is not None:
                m.history["losses"]["test"].append(loss)
        line = f"loss train {_mean_or_range(train)}"
        tests = [loss for loss in held if loss is not None]
        if tests:
            line += f" test {_mean_or_range(tests)}"
        if epoch in eval_epochs:
            ins, outs = trainer.log_px(epoch, "train"), trainer.log_px(epoch, "test")
            for m, (lp_tr, ess_tr), (lp_te, ess_te) in zip(members, ins, outs):
                record_log_px(m.history, epoch, m.train_idx, m.test_idx, lp_tr, ess_tr,
                              lp_te, ess_te, f"{exp.name} {m.job.tag}")
            line += f" | mean log p in {np.mean([lp.mean() for lp, _ in ins]):.3f}"
            out = [lp for lp, _ in outs if len(lp)]
            if out:
                line += f" out {np.mean([lp.mean() for lp in out]):.3f}"
            if jd.controls is not None:
                ctl = trainer.log_px(epoch, "control")
                control_idx = jd.control_index.cpu().numpy()
                for m, (lp, ess) in zip(members, ctl):
                    record_controls(m.history, epoch, control_idx, lp, ess,
                                    f"{exp.name} {m.job.tag}")
                line += f" controls {np.mean([lp.mean() for lp, _ in ctl]):.3f}"
        # the full model's weights at each evaluation epoch (the measures over training) and
        # each checkpoint epoch (snapshots: the size sweep's copy rate over training)
        if (any(m.job.full for m in members) and epoch < exp.epochs
                and (epoch in eval_epochs or epoch % exp.checkpoint_every == 0)):
            trainer.sync()
            for m in members:
                if m.job.full:
                    checkpoints.save_weights(m.files.weights_at(epoch), m.model)
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
        for m in members:  # a group's time is shared equally among its models
            if m.history["seconds"] is not None:
                m.history["seconds"]["cpu"] += cpu / len(members)
                m.history["seconds"]["wall"] += wall / len(members)
        models_ = "" if len(members) == 1 else f", {len(members)} models"
        if verbose:
            log(f"[{name}] epoch {epoch}/{exp.epochs} {line} ({wall:.1f} s{models_})")
        stopping = stop_after is not None and epoch >= stop_after and epoch < exp.epochs
        if (epoch % exp.checkpoint_every == 0 and epoch < exp.epochs) or stopping:
            trainer.sync()
            for m in members:  # the previous file stays until the new one is whole
                if m.files.resume.exists():
                    os.replace(m.files.resume, m.files.resume_previous)
                checkpoints.save_resume(m.files.resume, m.model, m.optimizer, m.gen, m.history,
                                        epoch, exp, m.extra)
        if stopping:
            log(f"[{name}] stopped after epoch {epoch} (checkpoint saved)")
            return None

    trainer.sync()
    out = [finish_job(exp, m, jd, speed) for m in members]
    for m in members:  # only once every result is written: a kill before leaves all resumable
        m.files.resume.unlink(missing_ok=True)
        m.files.resume_previous.unlink(missing_ok=True)
    if start_epoch <= exp.epochs:  # the model's one result line: the last epoch's numbers
        log(f"[{name}] done, epoch {exp.epochs}/{exp.epochs} {line} "
            f"({time.perf_counter() - began:.1f} s{models_})")
    return out


def finish_job(exp: Experiment, member: Member, jd: JobData, speed: dict | None = None) -> dict:
    """Write the result file (and the full model's final weights)."""
    if member.job.full:  # the full model keeps its final weights (loss curves, nearest neighbours)
        checkpoints.save_weights(member.files.checkpoint, member.model)
    h = member.history
    content = {"logpxs": h["logpxs"], "losses": h["losses"], "ess": h["ess"]}
    if results.CONTROLS in h:  # ours, beside the authors' keys
        content[results.CONTROLS] = h[results.CONTROLS]
    if LOSS_SUM in h:
        content["train_loss_sum"] = dict(zip(map(str, member.train_idx.tolist()),
                                             h[LOSS_SUM][member.train_t].tolist()))
    # seconds vary from run to run: kept beside the result, so that it stays a function of
    # the settings alone
    if h.get("seconds"):
        fileio.atomic_write_bytes(member.files.cost, json.dumps(
            {"cpu_seconds": h["seconds"]["cpu"], "wall_seconds": h["seconds"]["wall"],
             "device": str(jd.train.device)}, sort_keys=True).encode())
    meta = results.meta_for(exp, member.job, tuple(jd.train.shape), jd.dataset, jd.hflip, speed,
                            0 if jd.controls is None else len(jd.controls))
    if "privacy" in member.extra:  # private training's record (memo/train/private.py)
        meta["privacy"] = member.extra["privacy"]
    results.write_result(member.files.result, meta, content)
    return content

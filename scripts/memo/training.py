"""One training job: a (repeat, fold) model or the full-data model, from data to result file.

The job is resumable: every `checkpoint_every` epochs the model, optimizer, RNG state and the
results so far are saved; a restarted job continues from there and gives the same numbers.
"""
from __future__ import annotations

import io
import math
import sys
import time
from dataclasses import asdict, dataclass

import numpy as np
import torch
from tqdm import tqdm

from . import data as datasets
from . import accel, estimator, models, objectives, preprocess, results, splits
from .experiments import Experiment


EVAL_BATCH = 256   # examples per importance-sampling batch (its noise layout depends on it)
LOSS_BATCH = 1024  # examples per held-out loss batch


class TrainingDivergedError(RuntimeError):
    pass


@dataclass
class JobData:
    """The images a job needs, resident on the device as uint8."""
    train: torch.Tensor          # (n, C, 32, 32): the whole training set D (or its subset)
    test: torch.Tensor | None    # the official test split, used by the full-data model's loss
    hflip: bool
    dataset: str


def load_job_data(exp: Experiment, device: torch.device, full: bool, root=None,
                  download: bool = False) -> JobData:
    train = datasets.load(exp.data, "train", root=root, download=download)
    images = train.images[: exp.subset] if exp.subset else train.images
    test = None
    if full:
        try:
            test = datasets.load(exp.data, "test", root=root, download=download).images.to(device)
        except datasets.DataMissingError:
            test = None  # npz data without x_test: the full model reports no test loss
    hflip = train.hflip if exp.hflip is None else exp.hflip
    return JobData(images.to(device), test, hflip, datasets.dataset_name(exp.data))


def file_stem(exp: Experiment, job: results.Job, in_channels: int) -> str:
    desc = models.build(exp.model, exp.latent_dim, in_channels).description
    return results.stem(datasets.dataset_name(exp.data), exp.model, desc, exp.seed, job)


def _eval_seed(seed: int, epoch: int) -> int:
    return int(np.random.SeedSequence([seed, epoch, 7]).generate_state(1)[0])


def _batches(n: int, size: int):
    for start in range(0, n, size):
        yield slice(start, min(start + size, n))


@torch.no_grad()
def evaluate(model, images: torch.Tensor, index: torch.Tensor, exp: Experiment, epoch: int,
             model_seed: int, batch_size: int = EVAL_BATCH, desc: str = "log p") -> tuple[np.ndarray, np.ndarray]:
    """IS log p(x) and ESS for images (the examples `index` of D); input noise fixed per example."""
    model.eval()
    gen = torch.Generator(device=images.device).manual_seed(_eval_seed(model_seed, epoch))
    lps, esss = [], []
    with accel.exact_float32():
        for sl in tqdm(list(_batches(len(index), batch_size)), desc=desc, leave=False,
                       disable=None, file=sys.stderr):
            x = preprocess.eval_inputs(images[sl], index[sl], model.binary, exp.seed)
            lp, ess = estimator.log_px(model, x, exp.n_is, gen)
            lps.append(lp)
            esss.append(ess)
    if not lps:
        return np.zeros(0), np.zeros(0)
    return torch.cat(lps).double().cpu().numpy(), torch.cat(esss).double().cpu().numpy()


@torch.no_grad()
def test_loss(model, images: torch.Tensor, index: torch.Tensor, exp: Experiment, epoch: int,
              model_seed: int, batch_size: int = LOSS_BATCH) -> float:
    """Mean negative ELBO per example on a held-out set, eval mode, fixed input noise."""
    model.eval()
    gen = torch.Generator(device=images.device).manual_seed(_eval_seed(model_seed, epoch) + 1)
    total = torch.zeros((), device=images.device, dtype=torch.float64)
    with accel.exact_float32():
        for sl in _batches(len(images), batch_size):
            x = preprocess.eval_inputs(images[sl], index[sl], model.binary, exp.seed)
            total += objectives.neg_elbo(model, x, gen).sum().double()
    return float(total) / max(len(images), 1)


def meta_for(exp: Experiment, job: results.Job, jd: JobData, model,
             speed: dict | None = None) -> dict:
    """The authors' meta keys (PAPER.md §7) plus ours (experiment, folds, repeats, data spec)."""
    return {
        "batch_size": exp.batch_size, "dataset": jd.dataset, "epochs": exp.epochs,
        "fold_idx": job.fold, "img_dim": int(jd.train.shape[-1]), "latent_dim": exp.latent_dim,
        "learning_rate": exp.lr, "mode": job.mode, "model": exp.model,
        "num_feature": getattr(model, "description", ""), "num_iw_samples": exp.n_is,
        "run": job.repeat, "seed": exp.seed,
        "trainer_params": {"optimizer": "Adam", "eval_every": exp.eval_every,
                           "checkpoint_every": exp.checkpoint_every},
        "experiment": exp.name, "num_folds": exp.folds, "repeats": exp.repeats,
        "data_spec": exp.data, "subset": exp.subset, "n": int(jd.train.shape[0]),
        "in_channels": int(jd.train.shape[1]), "eval_noise": "fixed per example (seed, index)",
        "settings": asdict(exp), "speed": speed,
    }


def job_split(exp: Experiment, job: results.Job, n: int) -> tuple[np.ndarray, np.ndarray, int]:
    """(in-fold indices, held-out indices, model seed) of a job on a training set of n examples."""
    if job.full:
        return np.arange(n), np.arange(0), splits.model_seed(exp.seed, job.repeat, splits.FULL_FOLD)
    if not (0 <= job.repeat < exp.repeats and 0 <= job.fold < exp.folds):
        raise ValueError(f"{job.tag} is outside this experiment's {exp.repeats} repeats "
                         f"x {exp.folds} folds")
    train_idx, test_idx = splits.train_test_indices(n, exp.folds, exp.seed, job.repeat, job.fold)
    return train_idx, test_idx, splits.model_seed(exp.seed, job.repeat, job.fold)


def adam(params, lr: float) -> torch.optim.Adam:
    """The paper's optimizer, Adam, in torch's fused implementation: one pass over the
    parameters per step instead of several. Measured on the 2-core CPU: 1.8x faster MLP
    training steps, ~4 % for the DCVAEs; on a GPU it is one kernel instead of dozens. It rounds
    differently from the per-tensor implementation (~1e-7 per step)."""
    return torch.optim.Adam(params, lr=lr, fused=True)


def init_model(exp: Experiment, seed: int, in_channels: int, device) -> torch.nn.Module:
    """A fresh model initialised from `seed`; the global RNG is left untouched."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return models.build(exp.model, exp.latent_dim, in_channels).to(device)


def new_history() -> dict:
    return {"logpxs": {}, "ess": {}, "losses": {"train": [], "test": []}}


def save_resume(path, model, optimizer, gen: torch.Generator, history: dict, epoch: int,
                exp: Experiment | None = None) -> None:
    buf = io.BytesIO()
    torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                "generator": gen.get_state(), "generator_device": gen.device.type,
                "history": history, "epoch": epoch,
                "settings": asdict(exp) if exp else None}, buf)
    results.atomic_write_bytes(path, buf.getvalue())


def load_resume(path, model, optimizer, gen: torch.Generator,
                exp: Experiment | None = None) -> tuple[dict, int]:
    """Restore model, optimizer and generator from a resume file: (history, last epoch done).

    A checkpoint written under other settings is refused rather than silently continued."""
    # Read to the CPU: load_state_dict puts weights and Adam's state where the parameters and
    # the Adam implementation want them, and a generator state must be a CPU tensor.
    state = torch.load(path, map_location="cpu", weights_only=False)
    saved = state.get("settings")
    if exp is not None and saved is not None and saved != asdict(exp):
        changed = sorted(k for k in saved if saved[k] != asdict(exp).get(k))
        raise ValueError(f"resume checkpoint {path} was written with other settings "
                         f"({', '.join(changed)} differ); delete it to start this job afresh")
    saved_device = state.get("generator_device", "cpu")
    if saved_device != gen.device.type:  # the random streams of CPU and CUDA differ in kind
        raise ValueError(f"resume checkpoint {path} was written by a run on {saved_device}; "
                         f"resume it on {saved_device}, or delete it to start afresh on "
                         f"{gen.device.type}")
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    gen.set_state(state["generator"])
    return state["history"], state["epoch"]


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


def finish_job(exp: Experiment, job: results.Job, jd: JobData, model, history: dict,
               results_root, speed: dict | None = None) -> dict:
    """Write the result file (and the full model's final weights); drop the resume file."""
    stem = results.stem(jd.dataset, exp.model, model.description, exp.seed, job)
    if job.full:  # the full model keeps its final weights (loss curves, nearest neighbours)
        buf = io.BytesIO()
        torch.save(model.state_dict(), buf)
        results.atomic_write_bytes(
            results.checkpoint_path(results_root, exp.name, stem, exp.epochs), buf.getvalue())
    content = {"logpxs": history["logpxs"], "losses": history["losses"], "ess": history["ess"]}
    results.write_result(results.result_path(results_root, exp.name, stem),
                         meta_for(exp, job, jd, model, speed), content)
    results.resume_path(results_root, exp.name, stem).unlink(missing_ok=True)
    return content


def batch_loss_fn(model, speed: accel.Speed, device):
    """(x, eps) -> the summed negative ELBO of a batch (paper), compiled when speed says so."""
    def batch_loss(x, eps):
        return objectives.neg_elbo(model, x, eps=eps).sum()
    return accel.compile_loss(batch_loss, speed, device)


def train_steps(model, optimizer, batch_loss, images: torch.Tensor, order: torch.Tensor,
                batch_size: int, hflip: bool, gen: torch.Generator,
                speed: accel.Speed) -> torch.Tensor:
    """One pass of Adam steps over images[order] in batches: the summed loss, float64, left on
    the device (no host synchronisation)."""
    model.train()
    total = torch.zeros((), device=images.device, dtype=torch.float64)
    latent = model.mu.out_features
    with accel.training_precision(speed):
        for sl in _batches(len(order), batch_size):
            # noise is drawn outside the (possibly compiled) loss, in neg_elbo's order
            x = preprocess.train_inputs(images[order[sl]], model.binary, hflip, gen)
            eps = torch.randn((x.shape[0], latent), device=images.device, generator=gen)
            loss = batch_loss(x, eps)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total += loss.detach().double()
    return total


def run_job(exp: Experiment, job: results.Job, results_root="results", device="cpu",
            data_root=None, download: bool = False, jd: JobData | None = None,
            log=print, stop_after: int | None = None,
            speed: accel.Speed = accel.Speed()) -> dict | None:
    """Train one model and write its result file. Returns the result dict.

    stop_after=E: checkpoint after epoch E and return None without a result file.
    speed: TF32 and torch.compile for the training steps (memo/accel.py).
    """
    device = torch.device(device)
    jd = jd or load_job_data(exp, device, job.full, data_root, download)
    n, in_channels = jd.train.shape[0], jd.train.shape[1]
    train_idx, test_idx, seed = job_split(exp, job, n)
    train_idx_t = torch.as_tensor(train_idx, device=device)
    test_idx_t = torch.as_tensor(test_idx, device=device)

    model = init_model(exp, seed, in_channels, device)  # from the job's own seed
    optimizer = adam(model.parameters(), exp.lr)
    gen = torch.Generator(device=device).manual_seed(seed)

    stem = results.stem(jd.dataset, exp.model, model.description, exp.seed, job)
    resume = results.resume_path(results_root, exp.name, stem)
    history, start_epoch = new_history(), 1
    if resume.exists():
        history, done = load_resume(resume, model, optimizer, gen, exp)
        start_epoch = done + 1
        log(f"[{exp.name} {job.tag}] resuming after epoch {done} from {resume}")

    batch_loss = batch_loss_fn(model, speed, device)
    eval_epochs = set(exp.eval_epochs())
    n_train = len(train_idx)
    for epoch in tqdm(range(start_epoch, exp.epochs + 1), desc=f"{exp.name} {job.tag}",
                      initial=start_epoch - 1, total=exp.epochs, disable=None, file=sys.stderr):
        t0 = time.perf_counter()
        order = train_idx_t[torch.randperm(n_train, device=device, generator=gen)]
        total = train_steps(model, optimizer, batch_loss, jd.train, order, exp.batch_size,
                            jd.hflip, gen, speed)
        train_loss = float(total) / n_train  # the one host sync per epoch
        check_train_loss(train_loss, epoch, f"{exp.name} {job.tag}")
        history["losses"]["train"].append(train_loss)
        line = f"[{exp.name} {job.tag}] epoch {epoch}/{exp.epochs} loss train {train_loss:.3f}"
        if job.full and jd.test is not None:  # test split; its noise indices sit past D's
            test_index = torch.arange(len(jd.test), device=device) + n
            history["losses"]["test"].append(test_loss(model, jd.test, test_index, exp, epoch, seed))
        elif not job.full:
            history["losses"]["test"].append(
                test_loss(model, jd.train[test_idx_t], test_idx_t, exp, epoch, seed))
        if history["losses"]["test"]:
            line += f" test {history['losses']['test'][-1]:.3f}"
        if epoch in eval_epochs:
            lp_tr, ess_tr = evaluate(model, jd.train[train_idx_t], train_idx_t, exp, epoch, seed,
                                        desc="log p (in)")
            lp_te, ess_te = evaluate(model, jd.train[test_idx_t], test_idx_t, exp, epoch, seed,
                                        desc="log p (out)")
            record_log_px(history, epoch, train_idx, test_idx, lp_tr, ess_tr, lp_te, ess_te,
                          f"{exp.name} {job.tag}")
            line += f" | mean log p in {lp_tr.mean():.3f}" + (
                f" out {lp_te.mean():.3f}" if len(lp_te) else "")
        log(line + f" ({time.perf_counter() - t0:.1f} s)")
        stopping = stop_after is not None and epoch >= stop_after and epoch < exp.epochs
        if (epoch % exp.checkpoint_every == 0 and epoch < exp.epochs) or stopping:
            save_resume(resume, model, optimizer, gen, history, epoch, exp)
        if stopping:
            return None

    return finish_job(exp, job, jd, model, history, results_root, speed.describe(device))

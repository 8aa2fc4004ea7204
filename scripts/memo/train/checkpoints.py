"""Model files: the resume state of a running job and the full model's weights (kept at every
evaluation epoch), and the one way to load the trained full model (`load_full_model`).

A resume file holds what a job needs to continue exactly where it stopped: model and Adam state,
the training generator, the history of losses and log p(x) so far, the last epoch done, and the
settings it was written under (a file of other settings is refused, not continued).
"""
from __future__ import annotations

import io
import pickle
import zipfile
from dataclasses import asdict
from pathlib import Path

import torch

from memo import models
from memo.config.experiments import FULL_JOB, Experiment
from memo.files import results
from memo.files.results import RESULT_SETTINGS
from memo.fileio import atomic_write_bytes, one_line, torch_refusal
from memo.errors import MemoError


def _save(path: str | Path, obj) -> None:
    buf = io.BytesIO()
    torch.save(obj, buf)
    atomic_write_bytes(path, buf.getvalue())


def save_weights(path: str | Path, model: torch.nn.Module) -> None:
    """The model's state_dict, as the authors save their full models."""
    _save(path, model.state_dict())


def save_resume(path, model, optimizer, gen: torch.Generator, history: dict, epoch: int,
                exp: Experiment | None = None, extra: dict | None = None) -> None:
    """extra: the trainer's own state (tensors and plain containers), e.g. the private
    trainer's accountant history and noise generator; stored only when not empty."""
    state = {"model": model.state_dict(), "optimizer": optimizer.state_dict(),
             "generator": gen.get_state(), "generator_device": gen.device.type,
             "history": history, "epoch": epoch, "settings": asdict(exp) if exp else None}
    if extra:
        state["extra"] = extra
    _save(path, state)


class CheckpointError(ValueError, MemoError):
    """A checkpoint file that cannot be used; the message names it and the fix."""


# what a checkpoint may inflate to beyond its tensors' bytes (names, containers, history)
CHECKPOINT_SLACK = 64 << 20


def _inflated_size(path: str | Path) -> int | None:
    """The bytes a torch zip checkpoint inflates to, from its members' headers (None: not a
    zip file, read as torch reads it)."""
    try:
        if not zipfile.is_zipfile(path):
            return None
        with zipfile.ZipFile(path) as z:
            return sum(info.file_size for info in z.infolist())
    except (OSError, zipfile.BadZipFile):
        return None


def load_state(path: str | Path, what: str, fix: str, max_bytes: int | None = None):
    """torch.load of a file we or the authors wrote: tensors and plain containers only
    (weights_only), read to the CPU. Anything else is one CheckpointError line.
    max_bytes: the most its members may inflate to (from their headers, before loading)."""
    size = _inflated_size(path) if max_bytes is not None else None
    if size is not None and size > max_bytes:
        raise CheckpointError(f"{what} {path} inflates to {size / 2**20:.0f} MiB, more than "
                              f"the model's weights ({max_bytes / 2**20:.0f} MiB at most); "
                              f"refused before loading; {fix}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:  # weights_only refused an object: it could run code
        raise CheckpointError(f"{what} {path} holds objects a checkpoint never holds; refused "
                              f"without loading them ({torch_refusal(e)}); {fix}") from None
    except (RuntimeError, EOFError, OSError, ValueError, KeyError, IndexError,
            zipfile.BadZipFile) as e:
        raise CheckpointError(f"{what} {path} is truncated or corrupt ({one_line(e, 120)}); "
                              f"{fix}") from None


def load_resume(path, model, optimizer, gen: torch.Generator,
                exp: Experiment | None = None, extra: dict | None = None) -> tuple[dict, int]:
    """Restore model, optimizer and generator from a resume file: (history, last epoch done).
    extra: a dict emptied and filled with the file's trainer state (save_resume's extra).

    A checkpoint written under other settings is refused rather than silently continued."""
    # Read to the CPU: load_state_dict puts weights and Adam's state where the parameters and
    # the Adam implementation want them, and a generator state must be a CPU tensor.
    fix = "delete it to restart this job from epoch 1"
    # weights and Adam's two moments, and a history no larger than the result file it becomes
    limit = (None if exp is None
             else state_bytes(model, copies=3) + results.max_result_bytes(exp))
    state = load_state(path, "resume checkpoint", fix, limit)
    if not (isinstance(state, dict) and {"model", "optimizer", "generator", "history",
                                         "epoch"} <= set(state)):
        raise CheckpointError(f"resume checkpoint {path} is not a resume file of this "
                              f"pipeline; {fix}")
    saved = state.get("settings")
    if exp is not None and saved is not None:
        # only what changes the numbers: checkpoint_every or the name may change meanwhile
        recorded = {k: saved[k] for k in RESULT_SETTINGS if k in saved}
        for field, was, now in results.differences(recorded, exp):
            raise CheckpointError(results.mismatch_message(
                f"resume checkpoint {path}", exp, field, was, now,
                "it was written with other settings; delete it to start this job afresh"))
    saved_device = state.get("generator_device", "cpu")
    if saved_device != gen.device.type:  # the random streams of CPU and CUDA differ in kind
        raise CheckpointError(f"resume checkpoint {path} was written by a run on {saved_device}; "
                         f"resume it on {saved_device}, or delete it to start afresh on "
                         f"{gen.device.type}")
    try:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        gen.set_state(state["generator"])
    except (RuntimeError, ValueError, KeyError, TypeError) as e:
        raise CheckpointError(f"resume checkpoint {path} does not fit this job's model "
                              f"({one_line(e, 120)}); {fix}") from None
    if extra is not None:
        extra.clear()
        extra.update(state.get("extra") or {})
    return state["history"], state["epoch"]


def state_bytes(model: torch.nn.Module, copies: int = 1) -> int:
    """The most a checkpoint of `model` (its state `copies` times over) may inflate to."""
    tensors = sum(t.numel() * t.element_size() for t in model.state_dict().values())
    return copies * tensors + CHECKPOINT_SLACK


def finite_or_refuse(model: torch.nn.Module, path, fix: str) -> None:
    """Refuse weights that are not all finite (they would give NaN everywhere downstream)."""
    bad = [name for name, t in model.state_dict().items()
           if t.is_floating_point() and not torch.isfinite(t).all()]
    if bad:
        raise CheckpointError(f"checkpoint {path}: non-finite weights in {', '.join(bad[:3])}"
                              f"{', ...' if len(bad) > 3 else ''}; {fix}")


def full_model_state(exp: Experiment, results_root, epoch: int | None = None,
                     max_bytes: int | None = None):
    """The full-data model's weights after `epoch` (default: its last), read as `load_state`
    reads; one CheckpointError naming the file and how to make it again when it is missing or
    unusable."""
    files = results.job_files(exp, FULL_JOB, results_root)
    path = files.checkpoint if epoch in (None, exp.epochs) else files.weights_at(epoch)
    if not path.is_file():
        # the weights are written by the job that writes the full model's result file
        var = "" if Path(results_root) == Path("results") else f" RESULTS={results_root}"
        again = (f" ({files.result} exists without its checkpoint: delete it so make retrains)"
                 if files.result.is_file() else "")
        raise CheckpointError(
            f"checkpoint of the full-data model not found: {path}; train that model first: "
            f"`make{var} {files.result}`{again}, or the whole experiment: "
            f"`make{var} memorization-{exp.name}`")
    return load_state(path, "checkpoint", f"if this pipeline wrote it, remove it and "
                      f"{files.result}, then `make {files.result}` retrains the full model",
                      max_bytes)


def load_full_model(exp: Experiment, results_root, device, in_channels: int) -> torch.nn.Module:
    """The trained full-data model of `exp` with its final weights, on `device`, in eval mode
    (the nearest neighbours, the other measures and the size sweep all load it here).
    in_channels: the images' channels. Any problem is one CheckpointError line."""
    path = results.job_files(exp, FULL_JOB, results_root).checkpoint
    model = models.of_experiment(exp, in_channels)
    state = full_model_state(exp, results_root, max_bytes=state_bytes(model))
    try:
        models.load_weights(model, state, path)
    except ValueError as e:   # names the keys or sizes that differ
        raise CheckpointError(str(e)) from None
    except (RuntimeError, TypeError, AttributeError) as e:  # what load_weights does not foresee
        raise CheckpointError(f"checkpoint {path} does not fit {exp.model} (latent_dim "
                              f"{exp.latent_dim}, {in_channels} channels): {one_line(e)}") from None
    finite_or_refuse(model, path, "retrain the full model (delete it and its result file)")
    return model.to(device).eval()

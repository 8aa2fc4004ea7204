"""Speed options of a training run, and the arithmetic each one is allowed to change.

Evaluation (importance-sampled log p, held-out losses) always runs in IEEE float32: the
memorization score is a difference of log-likelihoods and must not depend on the device's
matrix units. Note that PyTorch lets cuDNN convolutions use TF32 by default on Ampere and
later GPUs; `exact_float32` switches that off for every evaluation.

Training may opt in to:
  tf32     TF32 tensor cores for matmuls and convolutions (10-bit mantissa inputs, float32
           accumulation). Training trajectories then differ from float32 ones by rounding that
           Adam carries forward, much as a change of thread count does on a CPU.
  compile  torch.compile of the per-batch loss (forward and backward). "auto" picks
           "reduce-overhead" on CUDA, which replays the step as a CUDA graph (these small
           models at batch 64 are bound by kernel launches), and the default mode on a CPU.

The flags are set through torch's legacy `allow_tf32` switches on purpose: torch refuses to
report its precision when the legacy and the newer `fp32_precision` switches are mixed, and
torch.compile reads the legacy ones.
"""
from __future__ import annotations

import contextlib
import os
import shutil
from dataclasses import asdict, dataclass

import torch

from memo.errors import MemoError

COMPILE_MODES = ("auto", "default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")


@dataclass(frozen=True)
class Speed:
    tf32: bool = False          # TF32 in training (CUDA only; evaluation stays IEEE float32)
    compile: str | None = None  # torch.compile mode for the training loss, None: eager

    def __post_init__(self):
        if self.compile is not None and self.compile not in COMPILE_MODES:
            raise ValueError(f"unknown compile mode {self.compile!r}; "
                             f"valid: {', '.join(COMPILE_MODES)}")

    def describe(self, device) -> dict:
        """What the result file's meta records about how the numbers were computed."""
        return {**asdict(self), "device": torch.device(device).type,
                "compile": self.compile_mode(device), "torch": torch.__version__}

    def compile_mode(self, device) -> str | None:
        if self.compile != "auto":
            return self.compile
        return "reduce-overhead" if torch.device(device).type == "cuda" else "default"


def _tf32_flags() -> tuple[bool, bool]:
    return torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32


def _set_tf32_flags(matmul: bool, conv: bool) -> None:
    torch.backends.cuda.matmul.allow_tf32 = matmul
    torch.backends.cudnn.allow_tf32 = conv


@contextlib.contextmanager
def _tf32(enabled: bool):
    saved = _tf32_flags()
    _set_tf32_flags(enabled, enabled)
    try:
        yield
    finally:
        _set_tf32_flags(*saved)


def exact_float32():
    """Context: IEEE float32 matmuls and convolutions (no TF32), whatever was set before."""
    return _tf32(False)


def training_precision(speed: Speed):
    """Context for the training steps: TF32 only when `speed.tf32`, else IEEE float32."""
    return _tf32(speed.tf32)


class CompileError(RuntimeError, MemoError):
    """torch.compile cannot work here (no C++ compiler, no Triton, or its compilation failed)."""


def compile_loss(fn, speed: Speed, device):
    """fn itself, or torch.compile(fn) in the speed's mode with static shapes (a run has only
    a few batch shapes: the full batch and the epoch's last, per group of models).

    torch.compile compiles on the first call; a failure there is raised as CompileError."""
    mode = speed.compile_mode(device)
    if mode is None:
        return fn
    if torch.device(device).type == "cpu" and not _cxx_compiler():
        raise CompileError("--compile on a CPU needs a C++ compiler (g++ or clang++, or $CXX); "
                           "install one or train without --compile")
    compiled = torch.compile(fn, mode=mode, dynamic=False)

    def call(*args):
        try:
            return compiled(*args)
        except torch._dynamo.exc.TorchDynamoException as e:
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise CompileError(f"torch.compile (mode {mode}) failed: {first}; "
                               "train without --compile") from None
    return call


def _cxx_compiler() -> str | None:
    for name in (os.environ.get("CXX"), "g++", "clang++", "c++"):
        if name and shutil.which(name):
            return shutil.which(name)
    return None

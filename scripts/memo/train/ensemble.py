"""Train a group of models (e.g. the K folds of one repeat) as one vectorized computation.

`Group` is the trainer of `training.fit` for several jobs: `run_group(exp, jobs, ...)` gives every
job exactly what `runner.run_job` gives it, and writes the same result files; only the
arithmetic is batched over the group:

* each model is initialised from its own seed (`training.init_model`) and keeps its own
  torch.Generator, from which it draws - in the order and shapes `run_job` uses - its data order
  (randperm over its own in-fold indices), its flips and binarization/dequantization noise
  (`preprocess.train_inputs`) and its reparameterisation eps; its importance samples and held-out
  loss noise come from generators seeded as in `evaluation.evaluate` / `evaluation.test_loss`;
* the G models' parameters live in one (G, P) tensor and run through `torch.func.vmap` over
  `functional_call` of the very model classes of memo/models, called through their interface
  (`loss`, `log_px`; noise from `noise`, memo/models/interface.py), so each model keeps its own
  BatchNorm statistics and sees only its own batch;
* Adam is torch.optim.Adam (fused, as training.adam) over the G rows of the (G, P) tensor:
  G independent Adams, each with its own state and step count, run by torch's own code;
* folds of different sizes have different batch counts and last-batch sizes: a training step
  runs the models whose batch at that position has the same size together, the others do not
  step (so a model never takes an optimizer step it would not take alone). Evaluation is
  per-example (eval mode), so ragged evaluation batches are padded and the padding discarded.

Equal seeds give equal random numbers; the results then differ from one-at-a-time training
only by float rounding (batched matmuls/convolutions sum in another order), see
tests/test_ensemble.py for the tolerance.

Resume files are per model and in `run_job`'s format, so a group can be resumed one model at a
time and the other way round.

Speed: the lever is a GPU, where a batch-64 step of one of these small models is launch-bound.
On a CPU a group is no faster than its models one after another (grouped transposed
convolutions are slow there): keep one model per process and run processes side by side.
"""
from __future__ import annotations

import copy
import sys

import numpy as np
import torch
import torch.nn as nn
from torch.func import functional_call, vmap
from tqdm import tqdm

from memo import models
from memo.train import accel, evaluation, progress, training
from memo.data import preprocess
from memo.data import JobData, load_job_data
from memo.config.experiments import Experiment, Job, refuse_private

# Decoder rows alive at once in importance sampling, over the whole group (CPU: measured
# best for the grouped DCVAE; GPU: a guess, to be tuned with `make bench`).
IS_ROWS = {"cpu": 16384, "cuda": 65536}


class _Bound(nn.Module):
    """forward(*args) = fn(model, *args): lets functional_call run a loss beside the model."""

    def __init__(self, model: nn.Module, fn):
        super().__init__()
        self.model, self.fn = model, fn

    def forward(self, *args):
        return self.fn(self.model, *args)


def _train_loss(model, x, eps):
    return model.loss(x, eps)                                          # (B,)


def _log_px(model, x, eps, chunk):
    return model.log_px(x, eps.shape[1], chunk=chunk, eps=eps)         # (B,), (B,)


#----------------------------------------------------------------------------

class StackedVAEs:
    """G models of one architecture, stacked: parameters in one (G, P) tensor, each model's
    buffers (BatchNorm statistics) stacked as (G, ...).

    The optimizer is training.adam whose "parameters" are the G rows of the (G, P) tensor:
    Adam is elementwise, so that is G independent Adams with a step count each, run by torch's
    own (fused) implementation, as for a single model. A model
    without a batch in a step gets no gradient, and Adam leaves it and its state untouched.
    """

    def __init__(self, modules: list[nn.Module], lr: float,
                 speed: accel.Speed = accel.Speed()):
        ref = modules[0]
        self.size = len(modules)
        self.binary = ref.binary
        self.device = next(ref.parameters()).device
        self.speed = speed
        named = list(ref.named_parameters())
        self._layout, offset = [], 0   # (prefixed name, offset, numel, shape) per parameter
        for name, p in named:
            self._layout.append((f"model.{name}", offset, p.numel(), tuple(p.shape)))
            offset += p.numel()
        self.flat = torch.stack([torch.cat([p.detach().reshape(-1) for p in m.parameters()])
                                 for m in modules])                            # (G, P)
        buffers = [dict(m.named_buffers()) for m in modules]
        self.buffers = {f"model.{name}": torch.stack([b[name] for b in buffers])
                        for name in buffers[0]}                                # name: (G, ...)
        self.rows = list(self.flat.unbind(0))  # views: Adam updates self.flat in place
        self.optimizer = training.adam(self.rows, lr)
        self.shell = copy.deepcopy(ref).to("meta")  # architecture only; tensors come from the stack
        self._loss = vmap(self._call(_Bound(self.shell, _train_loss)))
        self._train_loss = accel.compile_loss(self._loss, speed, self.device)
        self._log_px = vmap(self._call(_Bound(self.shell, _log_px)), in_dims=(0, 0, 0, 0, None))

    def noise(self, batch, generator: torch.Generator, device=None,
              dtype: torch.dtype | None = None) -> torch.Tensor:
        """One model's noise, as its own `noise` (memo/models/interface.py) draws it."""
        return self.shell.noise(batch, generator, device, dtype)

    @staticmethod
    def _call(module):
        def call(params, buffers, *args):
            return functional_call(module, (params, buffers), args)
        return call

    def _views(self, flat: torch.Tensor) -> dict:
        g = flat.shape[0]
        return {name: flat[:, o:o + n].view(g, *shape) for name, o, n, shape in self._layout}

    def _rows(self, rows):
        if rows is None:
            return self.flat, self.buffers
        return (self.flat.index_select(0, rows),
                {k: b.index_select(0, rows) for k, b in self.buffers.items()})

    def train_step(self, x: torch.Tensor, eps: torch.Tensor, rows: torch.Tensor | None = None,
                   models: list[int] | None = None) -> torch.Tensor:
        """One Adam step of each model, or of some: `models` (list) = `rows` (on the device).

        x (G', B, C, H, W) model inputs, eps (G', B, L) reparameterisation draws.
        Returns the (G',) batch losses, summed over each batch as in run_job (no sync).
        """
        flat, buffers = self._rows(rows)
        leaf = flat.detach().requires_grad_()
        params = self._views(leaf)
        self.shell.train()
        loss = self._train_loss(params, buffers, x, eps).sum(1)  # (G',) BN stats update in place
        grads = torch.autograd.grad(loss.sum(), list(params.values()))
        grad = torch.cat([g.reshape(len(leaf), -1) for g in grads], dim=1)   # (G', P)
        if rows is None:
            for row, g in zip(self.rows, grad):
                row.grad = g
        else:
            for row in self.rows:
                row.grad = None
            for i, g in enumerate(models):
                self.rows[g].grad = grad[i]
        self.optimizer.step()
        if rows is not None:  # the BatchNorm statistics were updated in a gathered copy
            for k, b in buffers.items():
                self.buffers[k].index_copy_(0, rows, b)
        return loss.detach()

    @torch.no_grad()
    def loss(self, x: torch.Tensor, eps: torch.Tensor, rows=None) -> torch.Tensor:
        """(G', B) each model's loss (the negative ELBO) in eval mode (BatchNorm running
        statistics)."""
        flat, buffers = self._rows(rows)
        self.shell.eval()
        with accel.exact_float32():
            return self._loss(self._views(flat), buffers, x, eps)

    @torch.no_grad()
    def log_px(self, x: torch.Tensor, eps: torch.Tensor, rows=None,
               is_rows: int = IS_ROWS["cpu"]) -> tuple[torch.Tensor, torch.Tensor]:
        """(log p̂(x), ESS), each (G', B), from eps (G', B, N, L); eval mode."""
        flat, buffers = self._rows(rows)
        self.shell.eval()
        chunk = max(1, is_rows // len(flat))  # decoder rows per model and chunk
        with accel.exact_float32():
            return self._log_px(self._views(flat), buffers, x, eps, chunk)

    # -- per-model state, in the layout of a module and its torch.optim.Adam -----------------
    def _split(self, row: torch.Tensor) -> list[torch.Tensor]:
        return [row[o:o + n].view(shape) for _, o, n, shape in self._layout]

    @torch.no_grad()
    def export(self, g: int, model: nn.Module, optimizer: torch.optim.Adam) -> None:
        """Write model g's parameters, buffers and Adam state into model and optimizer."""
        params = list(model.parameters())
        for p, value in zip(params, self._split(self.flat[g])):
            p.copy_(value)
        for name, b in model.named_buffers():
            b.copy_(self.buffers[f"model.{name}"][g])
        state = self.optimizer.state.get(self.rows[g])
        if not state:  # no step yet: a fresh torch.optim.Adam has no state either
            for p in params:
                optimizer.state.pop(p, None)
            return
        for p, m, v in zip(params, self._split(state["exp_avg"]), self._split(state["exp_avg_sq"])):
            optimizer.state[p] = {"step": state["step"].clone(), "exp_avg": m.clone(),
                                  "exp_avg_sq": v.clone()}

    @torch.no_grad()
    def load(self, g: int, model: nn.Module, optimizer: torch.optim.Adam) -> None:
        """Set model g from a module and its torch.optim.Adam (e.g. restored from a resume file)."""
        self.flat[g] = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
        for name, b in model.named_buffers():
            self.buffers[f"model.{name}"][g] = b
        states = [optimizer.state.get(p, {}) for p in model.parameters()]
        self.optimizer.state.pop(self.rows[g], None)
        if states and "step" in states[0]:
            self.optimizer.state[self.rows[g]] = {
                "step": states[0]["step"].clone(),
                "exp_avg": torch.cat([s["exp_avg"].reshape(-1) for s in states]),
                "exp_avg_sq": torch.cat([s["exp_avg_sq"].reshape(-1) for s in states])}


#----------------------------------------------------------------------------

def _n_batches(n: int, batch: int) -> int:
    return -(-n // batch)


def train_plan(lengths: list[int], batch: int, device) -> list[tuple[int, int, list, object]]:
    """Training steps of one epoch: (start, batch size, models, their rows or None for all).

    Step s of every model starts at s·batch of its own order; models whose step s has the same
    size run together. Models without a step s left sit it out.
    """
    plan = []
    for s in range(max(_n_batches(n, batch) for n in lengths)):
        by_size: dict[int, list[int]] = {}
        for g, n in enumerate(lengths):
            b = min(batch, n - s * batch)
            if b > 0:
                by_size.setdefault(b, []).append(g)
        for b, rows in sorted(by_size.items(), reverse=True):
            rows_t = None if len(rows) == len(lengths) else torch.tensor(rows, device=device)
            plan.append((s * batch, b, rows, rows_t))
    return plan


def train_epoch(stack: StackedVAEs, images: torch.Tensor, orders: list[torch.Tensor],
                gens: list[torch.Generator], plan, hflip: bool, flip: str = "image") -> torch.Tensor:
    """One pass of every model over its examples `orders` (indices into images, in the order of
    visiting), as run_job's inner loop. Returns (G,) float64 loss totals, left on the device."""
    device = images.device
    order = nn.utils.rnn.pad_sequence(orders, batch_first=True)  # (G, max n)
    totals = torch.zeros(len(orders), device=device, dtype=torch.float64)
    with accel.training_precision(stack.speed):
        for start, b, active, rows in plan:
            idx = order[:, start:start + b] if rows is None else order[rows, start:start + b]
            batch = images[idx]                                    # (G', b, C, H, W) uint8
            xs, eps = [], []
            for i, g in enumerate(active):  # each model draws from its own stream, as run_job
                xs.append(preprocess.train_inputs(batch[i], stack.binary, hflip, gens[g], flip))
                eps.append(stack.noise(b, gens[g], device))
            loss = stack.train_step(torch.stack(xs), torch.stack(eps), rows, active)
            if rows is None:
                totals += loss.double()
            else:
                totals.index_add_(0, rows, loss.double())
    return totals


def _eval_steps(lengths: list[int], batch: int):
    """Evaluation steps: (start, [(member, size)]) with every member that has examples left."""
    for s in range(max([_n_batches(n, batch) for n in lengths] + [0])):
        yield s * batch, [(g, min(batch, n - s * batch)) for g, n in enumerate(lengths)
                          if n - s * batch > 0]


def _pad(t: torch.Tensor, size: int, zeros: bool = False) -> torch.Tensor:
    """Pad dim 0 to `size` with zeros or copies of the first row (their results are dropped)."""
    if len(t) == size:
        return t
    fill = t.new_zeros(size - len(t), *t.shape[1:]) if zeros else t[:1].expand(
        size - len(t), *t.shape[1:])
    return torch.cat([t, fill])


def _eval_inputs(binary: bool, seed: int, sources, start: int, parts, width: int,
                 noise_gens: list | None = None) -> torch.Tensor:
    """(G', width, C, H, W) evaluation inputs, padded to width: noise fixed per example, or
    fresh from noise_gens[g] of model g, drawn as evaluation.evaluate draws it.

    sources[i] = (images, image index, noise index) of the i-th model in parts."""
    if noise_gens is not None:
        return torch.stack([
            _pad(preprocess.eval_inputs(images[image_idx[start:start + b]], None, binary, seed,
                                        noise_gens[g]), width)
            for (images, image_idx, _), (g, b) in zip(sources, parts)])
    imgs, noise = [], []
    for (images, image_idx, noise_idx), (_, b) in zip(sources, parts):
        imgs.append(_pad(images[image_idx[start:start + b]], width))
        noise.append(_pad(noise_idx[start:start + b], width))
    imgs, noise = torch.stack(imgs), torch.stack(noise)
    x = preprocess.eval_inputs(imgs.flatten(0, 1), noise.flatten(), binary, seed)
    return x.view(*imgs.shape)


def _rows(stack: StackedVAEs, models: list[int]):
    return None if len(models) == stack.size else torch.tensor(models, device=stack.device)


@torch.no_grad()
def group_log_px(stack: StackedVAEs, images: torch.Tensor, indices: list[torch.Tensor],
                 gens: list[torch.Generator], n_is: int, seed: int, is_rows: int | None = None,
                 desc: str | None = None, noise_gens: list | None = None,
                 noise_indices: list[torch.Tensor] | None = None
                 ) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """IS (log p, ESS) of each model g on the examples indices[g] of images, as
    evaluation.evaluate: batches of EVAL_BATCH, eps from gens[g], input noise fixed by (seed,
    noise index: noise_indices[g], else the example's index) or fresh from noise_gens[g].
    Tensors are left on the device."""
    keys = indices if noise_indices is None else noise_indices
    is_rows = is_rows or IS_ROWS.get(images.device.type, IS_ROWS["cpu"])
    lps, esss = [[] for _ in indices], [[] for _ in indices]
    steps = list(_eval_steps([len(i) for i in indices], evaluation.EVAL_BATCH))
    for start, parts in tqdm(steps, desc=desc, leave=False,
                             disable=progress.disabled() if desc else True, file=sys.stderr):
        models = [g for g, _ in parts]
        width = max(b for _, b in parts)
        x = _eval_inputs(stack.binary, seed, [(images, indices[g], keys[g]) for g in models],
                         start, parts, width, noise_gens)
        eps = torch.stack([_pad(stack.noise((b, n_is), gens[g], images.device, torch.float32),
                                width, True) for g, b in parts])       # (G', width, N, L)
        lp, ess = stack.log_px(x, eps, _rows(stack, models), is_rows)
        for i, (g, b) in enumerate(parts):
            lps[g].append(lp[i, :b])
            esss[g].append(ess[i, :b])
    empty = torch.zeros(0, device=images.device)
    return [(torch.cat(lp) if lp else empty, torch.cat(ess) if ess else empty)
            for lp, ess in zip(lps, esss)]


@torch.no_grad()
def group_test_loss(stack: StackedVAEs, sources: list, gens: list[torch.Generator],
                    seed: int, noise_gens: list | None = None) -> list[torch.Tensor]:
    """Held-out negative ELBO totals (float64, on the device) of each model, as
    evaluation.test_loss: sources[g] = (images, image index, noise index)."""
    device = stack.device
    totals = [torch.zeros((), device=device, dtype=torch.float64) for _ in sources]
    for start, parts in _eval_steps([len(s[1]) for s in sources], evaluation.LOSS_BATCH):
        models = [g for g, _ in parts]
        width = max(b for _, b in parts)
        x = _eval_inputs(stack.binary, seed, [sources[g] for g in models], start, parts, width,
                         noise_gens)
        eps = torch.stack([_pad(stack.noise(b, gens[g], device), width, True)
                           for g, b in parts])
        loss = stack.loss(x, eps, _rows(stack, models))                    # (G', width)
        for i, (g, b) in enumerate(parts):
            totals[g] += loss[i, :b].sum().double()
    return totals


#----------------------------------------------------------------------------

class Group:
    """The trainer of several jobs of one experiment, trained together (see the module
    docstring); its members' models and optimizers hold their state only when saved."""

    def __init__(self, exp: Experiment, members: list[training.Member], jd: JobData,
                 speed: accel.Speed = accel.Speed(), is_rows: int | None = None):
        refuse_private(exp)
        models.refuse_group(exp.model)
        self.exp, self.members, self.jd, self.speed, self.is_rows = exp, members, jd, speed, is_rows
        device = jd.train.device
        self.plan = train_plan([len(m.train_idx) for m in members], exp.batch_size, device)

    def begin(self) -> None:
        self.stack = StackedVAEs([m.model for m in self.members], self.exp.lr, self.speed)
        for g, m in enumerate(self.members):
            self.stack.load(g, m.model, m.optimizer)

    def train_epoch(self) -> list[float]:
        device = self.stack.device
        gens = [m.gen for m in self.members]
        orders = [m.train_t[torch.randperm(len(m.train_t), device=device, generator=m.gen)]
                  for m in self.members]
        totals = train_epoch(self.stack, self.jd.train, orders, gens, self.plan, self.jd.hflip,
                             self.exp.flip)
        n_train = torch.tensor([len(m.train_idx) for m in self.members], dtype=torch.float64)
        return (totals.cpu() / n_train).tolist()  # the one host sync per epoch

    def heldout_losses(self, epoch: int) -> list[float | None]:
        device = self.stack.device
        sources = [evaluation.heldout_set(m.job, self.jd, m.test_t) for m in self.members]
        gens = [evaluation.generator(m.seed, epoch, evaluation.LOSS_SAMPLES, device)
                for m in self.members]
        noise = self._noise_gens(epoch, evaluation.LOSS_NOISE)
        totals = torch.stack(group_test_loss(self.stack, sources, gens, self.exp.seed,
                                             noise)).cpu()
        return [float(t) / len(s[1]) if len(s[1]) else None for t, s in zip(totals, sources)]

    def log_px(self, epoch: int, part: str) -> list[tuple[np.ndarray, np.ndarray]]:
        device = self.stack.device
        images, keys = self.jd.train, None
        if part == "control":
            images = self.jd.controls
            indices = [torch.arange(len(images), device=device)] * len(self.members)
            keys = [self.jd.control_noise_index] * len(self.members)
        else:
            indices = [m.train_t if part == "train" else m.test_t for m in self.members]
        gens = [evaluation.generator(m.seed, epoch, evaluation.LOG_PX_SAMPLES, device)
                for m in self.members]
        out = group_log_px(self.stack, images, indices, gens, self.exp.n_is,
                           self.exp.seed, self.is_rows,
                           desc=f"log p ({evaluation.PART_NAMES[part]})",
                           noise_gens=self._noise_gens(epoch, evaluation.LOG_PX_NOISE),
                           noise_indices=keys)
        return [(lp.double().cpu().numpy(), ess.double().cpu().numpy()) for lp, ess in out]

    def _noise_gens(self, epoch: int, offset: int) -> list | None:
        """Each member's fresh evaluation-noise generator, as evaluation's; None: fixed noise."""
        if self.exp.eval_noise == "fixed":
            return None
        return [evaluation.noise_generator(self.exp.eval_noise, m.seed, epoch, offset,
                                           self.stack.device) for m in self.members]

    def sync(self) -> None:
        for g, m in enumerate(self.members):
            self.stack.export(g, m.model, m.optimizer)


def run_group(exp: Experiment, jobs: list[Job], results_root="results", device="cpu",
              data_root=None, download: bool = False, jd: JobData | None = None,
              log=print, stop_after: int | None = None,
              is_rows: int | None = None,
              speed: accel.Speed = accel.Speed(), verbose: bool = False) -> list[dict] | None:
    """Train the jobs' models together and write each one's result file, as run_job would.

    Returns the result dicts in the order of `jobs`. stop_after=E: checkpoint after epoch E and
    return None without result files.
    """
    if not jobs:
        return []
    if len(set(jobs)) != len(jobs):
        raise ValueError(f"a job appears twice in the group: {[j.tag for j in jobs]}")
    refuse_private(exp)
    models.refuse_group(exp.model)
    device = torch.device(device)
    jd = jd or load_job_data(exp, device, any(j.full for j in jobs), data_root, download)
    members = [training.Member.of(exp, job, jd.train.shape[0], results_root, device)
               for job in jobs]
    return training.fit(Group(exp, members, jd, speed, is_rows), exp, jd, log, stop_after,
                        speed.describe(device), verbose)

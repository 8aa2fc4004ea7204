"""Train a group of models (e.g. the K folds of one repeat) as one vectorized computation.

`run_group(exp, jobs, ...)` gives every job exactly what `training.run_job` gives it, and writes
the same result files; only the arithmetic is batched over the group:

* each model is initialised from its own seed (`training.init_model`) and keeps its own
  torch.Generator, from which it draws - in the order and shapes `run_job` uses - its data order
  (randperm over its own in-fold indices), its flips and binarization/dequantization noise
  (`preprocess.train_inputs`) and its reparameterisation eps; its importance samples and held-out
  loss noise come from generators seeded as in `training.evaluate` / `training.test_loss`;
* the G models' parameters live in one (G, P) tensor and run through `torch.func.vmap` over
  `functional_call` of the very model classes of models.py, so each model keeps its own
  BatchNorm statistics and sees only its own batch;
* Adam is one elementwise update of (G, P) tensors with a step count per model (`StackedAdam`);
* folds of different sizes have different batch counts and last-batch sizes: a training step
  runs the models whose batch at that position has the same size together, the others do not
  step (so a model never takes an optimizer step it would not take alone). Evaluation is
  per-example (eval mode), so ragged evaluation batches are padded and the padding discarded.

Equal seeds give equal random numbers; the results then differ from one-at-a-time training
only by float rounding (batched matmuls/convolutions sum in another order), see
tests/test_ensemble.py for the tolerance.

Resume files are per model and in `run_job`'s format, so a group can be resumed one model at a
time and the other way round.
"""
from __future__ import annotations

import copy
import sys
import time
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn as nn
from torch.func import functional_call, vmap
from tqdm import tqdm

from . import estimator, objectives, preprocess, results, training
from .experiments import Experiment

IS_ROWS = 16384  # decoder rows alive at once in importance sampling, over the whole group


class _Bound(nn.Module):
    """forward(*args) = fn(model, *args): lets functional_call run a loss beside the model."""

    def __init__(self, model: nn.Module, fn):
        super().__init__()
        self.model, self.fn = model, fn

    def forward(self, *args):
        return self.fn(self.model, *args)


def _train_loss(model, x, eps):
    return objectives.neg_elbo(model, x, eps=eps)                      # (B,)


def _log_px(model, x, eps, chunk):
    return estimator.log_px(model, x, eps.shape[1], chunk=chunk, eps=eps)  # (B,), (B,)


#----------------------------------------------------------------------------

class StackedAdam:
    """G independent torch.optim.Adam (default betas, eps; no weight decay) over (G, P) tensors.

    The arithmetic follows torch.optim.Adam's single-tensor path; each model has its own step
    count, and `rows` restricts a step to some models (the others do not move at all).
    """

    def __init__(self, flat: torch.Tensor, lr: float, betas=(0.9, 0.999), eps: float = 1e-8):
        self.lr, (self.beta1, self.beta2), self.eps = lr, betas, eps
        self.exp_avg = torch.zeros_like(flat)
        self.exp_avg_sq = torch.zeros_like(flat)
        self.steps = torch.zeros(flat.shape[0], device=flat.device, dtype=torch.float64)

    @torch.no_grad()
    def step(self, flat: torch.Tensor, grad: torch.Tensor, rows: torch.Tensor | None = None):
        """Update flat (G, P) in place from grad (G', P), G' = len(rows) or G."""
        if rows is None:
            p, m, v, t = flat, self.exp_avg, self.exp_avg_sq, self.steps
        else:
            p, m, v, t = (a.index_select(0, rows)
                          for a in (flat, self.exp_avg, self.exp_avg_sq, self.steps))
        t += 1
        m.lerp_(grad, 1 - self.beta1)
        v.mul_(self.beta2).addcmul_(grad, grad, value=1 - self.beta2)
        # bias corrections in float64 like torch's Python floats, then cast to the param dtype
        neg_step = (-self.lr / (1 - self.beta1 ** t)).to(p.dtype)[:, None]    # (G', 1)
        bc2_sqrt = (1 - self.beta2 ** t).sqrt().to(p.dtype)[:, None]
        denom = (v.sqrt() / bc2_sqrt).add_(self.eps)
        p.addcdiv_(m * neg_step, denom)  # p + (-step_size·m)/denom, torch's CPU order
        if rows is not None:
            for full, part in ((flat, p), (self.exp_avg, m), (self.exp_avg_sq, v), (self.steps, t)):
                full.index_copy_(0, rows, part)


#----------------------------------------------------------------------------

class StackedVAEs:
    """G models of one architecture, stacked: parameters in one (G, P) tensor, each model's
    buffers (BatchNorm statistics) stacked as (G, ...), one Adam state per model."""

    def __init__(self, modules: list[nn.Module], lr: float):
        ref = modules[0]
        self.size = len(modules)
        self.binary = ref.binary
        self.latent_dim = ref.mu.out_features
        self.device = next(ref.parameters()).device
        named = list(ref.named_parameters())
        self._layout, offset = [], 0   # (prefixed name, offset, numel, shape) per parameter
        for name, p in named:
            self._layout.append((f"model.{name}", offset, p.numel(), tuple(p.shape)))
            offset += p.numel()
        self.flat = torch.stack([torch.cat([p.detach().reshape(-1) for p in m.parameters()])
                                 for m in modules])                            # (G, P)
        self.buffers = {f"model.{name}": torch.stack([dict(m.named_buffers())[name] for m in modules])
                        for name, _ in ref.named_buffers()}                    # name: (G, ...)
        self.adam = StackedAdam(self.flat, lr)
        self.shell = copy.deepcopy(ref).to("meta")  # architecture only; tensors come from the stack
        self._neg_elbo = vmap(self._call(_Bound(self.shell, _train_loss)))
        self._log_px = vmap(self._call(_Bound(self.shell, _log_px)), in_dims=(0, 0, 0, 0, None))

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

    def train_step(self, x: torch.Tensor, eps: torch.Tensor,
                   rows: torch.Tensor | None = None) -> torch.Tensor:
        """One Adam step of each model (or of `rows`) on its own batch.

        x (G', B, C, H, W) model inputs, eps (G', B, L) reparameterisation draws.
        Returns the (G',) batch losses, summed over each batch as in run_job (no sync).
        """
        flat, buffers = self._rows(rows)
        leaf = flat.detach().requires_grad_()
        params = self._views(leaf)
        self.shell.train()
        loss = self._neg_elbo(params, buffers, x, eps).sum(1)   # (G',) BN stats update in place
        grads = torch.autograd.grad(loss.sum(), list(params.values()))
        grad = torch.cat([g.reshape(len(leaf), -1) for g in grads], dim=1)   # (G', P)
        self.adam.step(self.flat, grad, rows)
        if rows is not None:  # the BatchNorm statistics were updated in a gathered copy
            for k, b in buffers.items():
                self.buffers[k].index_copy_(0, rows, b)
        return loss.detach()

    @torch.no_grad()
    def neg_elbo(self, x: torch.Tensor, eps: torch.Tensor, rows=None) -> torch.Tensor:
        """(G', B) negative ELBO in eval mode (BatchNorm running statistics)."""
        flat, buffers = self._rows(rows)
        self.shell.eval()
        return self._neg_elbo(self._views(flat), buffers, x, eps)

    @torch.no_grad()
    def log_px(self, x: torch.Tensor, eps: torch.Tensor, rows=None,
               is_rows: int = IS_ROWS) -> tuple[torch.Tensor, torch.Tensor]:
        """(log p̂(x), ESS), each (G', B), from eps (G', B, N, L); eval mode."""
        flat, buffers = self._rows(rows)
        self.shell.eval()
        chunk = max(1, is_rows // len(flat))  # decoder rows per model and chunk
        return self._log_px(self._views(flat), buffers, x, eps, chunk)

    # -- per-model state, in the layout of a module and a torch.optim.Adam ------------------
    @torch.no_grad()
    def export(self, g: int, model: nn.Module, optimizer: torch.optim.Adam) -> None:
        """Write model g's parameters, buffers and Adam state into model and optimizer."""
        params = list(model.parameters())
        for p, view in zip(params, self._views(self.flat).values()):
            p.copy_(view[g])
        for name, b in model.named_buffers():
            b.copy_(self.buffers[f"model.{name}"][g])
        step = float(self.adam.steps[g])
        m = self._views(self.adam.exp_avg).values()
        v = self._views(self.adam.exp_avg_sq).values()
        for p, m_p, v_p in zip(params, m, v):
            if step == 0:  # a fresh torch.optim.Adam has no state yet
                optimizer.state.pop(p, None)
            else:
                optimizer.state[p] = {"step": torch.tensor(step, dtype=torch.get_default_dtype()),
                                      "exp_avg": m_p[g].clone(), "exp_avg_sq": v_p[g].clone()}

    @torch.no_grad()
    def load(self, g: int, model: nn.Module, optimizer: torch.optim.Adam) -> None:
        """Set model g from a module and its torch.optim.Adam (e.g. restored from a resume file)."""
        self.flat[g] = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
        for name, b in model.named_buffers():
            self.buffers[f"model.{name}"][g] = b
        states = [optimizer.state.get(p, {}) for p in model.parameters()]
        if not states or "step" not in states[0]:
            return
        self.adam.exp_avg[g] = torch.cat([s["exp_avg"].reshape(-1) for s in states])
        self.adam.exp_avg_sq[g] = torch.cat([s["exp_avg_sq"].reshape(-1) for s in states])
        self.adam.steps[g] = float(states[0]["step"])


#----------------------------------------------------------------------------

@dataclass
class _Member:
    """One job of the group and what it owns."""
    job: results.Job
    train_idx: np.ndarray
    test_idx: np.ndarray
    seed: int
    model: nn.Module                 # its own module: initial weights, exports, meta
    optimizer: torch.optim.Adam      # only a container for resume files
    gen: torch.Generator             # its training stream, as in run_job
    resume: object                   # Path of its resume file
    train_t: torch.Tensor = None     # in-fold indices on the device
    test_t: torch.Tensor = None
    history: dict = field(default_factory=training.new_history)


def _sizes(n: int, batch: int) -> list[int]:
    return [min(batch, n - s) for s in range(0, n, batch)]


def _train_plan(lengths: list[int], batch: int, device) -> list[tuple[int, int, list, object]]:
    """Training steps of one epoch: (start, batch size, models, their rows or None for all).

    Step s of every model starts at s·batch of its own order; models whose step s has the same
    size run together. Models without a step s left sit it out.
    """
    plan = []
    for s in range(max(len(_sizes(n, batch)) for n in lengths)):
        by_size: dict[int, list[int]] = {}
        for g, n in enumerate(lengths):
            b = min(batch, n - s * batch)
            if b > 0:
                by_size.setdefault(b, []).append(g)
        for b, rows in sorted(by_size.items(), reverse=True):
            rows_t = None if len(rows) == len(lengths) else torch.tensor(rows, device=device)
            plan.append((s * batch, b, rows, rows_t))
    return plan


def _eval_steps(lengths: list[int], batch: int):
    """Evaluation steps: (start, [(member, size)]) with every member that has examples left."""
    for s in range(max([len(_sizes(n, batch)) for n in lengths] + [0])):
        yield s * batch, [(g, min(batch, n - s * batch)) for g, n in enumerate(lengths)
                          if n - s * batch > 0]


def _pad(t: torch.Tensor, size: int) -> torch.Tensor:
    """Pad dim 0 to `size` with copies of the first row (results for the padding are dropped)."""
    if len(t) == size:
        return t
    return torch.cat([t, t[:1].expand(size - len(t), *t.shape[1:])])


def _pad_zeros(t: torch.Tensor, size: int) -> torch.Tensor:
    if len(t) == size:
        return t
    return torch.cat([t, t.new_zeros(size - len(t), *t.shape[1:])])


#----------------------------------------------------------------------------

class _Group:
    """The state of one group run: members, stacked models, data."""

    def __init__(self, exp: Experiment, members: list[_Member], stack: StackedVAEs,
                 jd: training.JobData, device: torch.device, is_rows: int):
        self.exp, self.members, self.stack, self.jd = exp, members, stack, jd
        self.device, self.is_rows = device, is_rows
        self.all_rows = torch.arange(len(members), device=device)

    def _subset(self, active: list[int]):
        return None if len(active) == len(self.members) else self.all_rows[active]

    def train_epoch(self) -> list[float]:
        """One epoch of every model; the mean training loss per example of each."""
        exp, jd, stack, members = self.exp, self.jd, self.stack, self.members
        orders = [m.train_t[torch.randperm(len(m.train_t), device=self.device, generator=m.gen)]
                  for m in members]
        order = nn.utils.rnn.pad_sequence(orders, batch_first=True)  # (G, max n)
        totals = torch.zeros(len(members), device=self.device, dtype=torch.float64)
        for start, b, active, rows in self.plan:
            idx = order[:, start:start + b] if rows is None else order[rows, start:start + b]
            images = jd.train[idx]                                  # (G', b, C, H, W) uint8
            xs, eps = [], []
            for i, g in enumerate(active):  # each model draws from its own stream, run_job's order
                gen = members[g].gen
                xs.append(preprocess.train_inputs(images[i], stack.binary, jd.hflip, gen))
                eps.append(torch.randn((b, stack.latent_dim), device=self.device, generator=gen))
            loss = stack.train_step(torch.stack(xs), torch.stack(eps), rows)
            if rows is None:
                totals += loss.double()
            else:
                totals.index_add_(0, rows, loss.double())
        n_train = torch.tensor([len(m.train_idx) for m in members], dtype=torch.float64)
        return (totals.cpu() / n_train).tolist()  # the one host sync per epoch

    def _eval_inputs(self, sources, starts_sizes, width):
        """Padded (G', width, C, H, W) model inputs for evaluation, noise fixed per example."""
        imgs, noise = [], []
        for (images, image_idx, noise_idx), (start, b) in zip(sources, starts_sizes):
            imgs.append(_pad(images[image_idx[start:start + b]], width))
            noise.append(_pad(noise_idx[start:start + b], width))
        imgs, noise = torch.stack(imgs), torch.stack(noise)
        x = preprocess.eval_inputs(imgs.flatten(0, 1), noise.flatten(), self.stack.binary,
                                   self.exp.seed)
        return x.view(*imgs.shape)

    @torch.no_grad()
    def heldout_losses(self, epoch: int) -> list[float | None]:
        """Mean eval-mode negative ELBO on each model's held-out set (as training.test_loss)."""
        n, device = self.jd.train.shape[0], self.device
        sources = []
        for m in self.members:
            if m.job.full and self.jd.test is not None:  # test split; noise indices past D's
                k = torch.arange(len(self.jd.test), device=device)
                sources.append((self.jd.test, k, k + n))
            elif m.job.full:
                sources.append(None)
            else:
                sources.append((self.jd.train, m.test_t, m.test_t))
        have = [g for g, s in enumerate(sources) if s is not None]
        gens = {g: torch.Generator(device=device).manual_seed(
            training._eval_seed(self.members[g].seed, epoch) + 1) for g in have}
        totals = {g: torch.zeros((), device=device, dtype=torch.float64) for g in have}
        lengths = [len(sources[g][1]) for g in have]
        for start, parts in _eval_steps(lengths, training.LOSS_BATCH):
            active = [have[i] for i, _ in parts]
            width = max(b for _, b in parts)
            x = self._eval_inputs([sources[g] for g in active], [(start, b) for _, b in parts],
                                  width)
            eps = torch.stack([_pad_zeros(torch.randn((b, self.stack.latent_dim), device=device,
                                                      generator=gens[g]), width)
                               for g, (_, b) in zip(active, parts)])
            loss = self.stack.neg_elbo(x, eps, self._subset(active))       # (G', width)
            for i, (g, (_, b)) in enumerate(zip(active, parts)):
                totals[g] += loss[i, :b].sum().double()
        out = [None] * len(self.members)
        for g, length in zip(have, lengths):
            out[g] = float(totals[g]) / max(length, 1)
        return out

    @torch.no_grad()
    def log_px(self, epoch: int, part: str) -> list[tuple[np.ndarray, np.ndarray]]:
        """IS (log p, ESS) of every model's in-fold ("train") or held-out ("test") examples."""
        device, stack = self.device, self.stack
        index = [m.train_t if part == "train" else m.test_t for m in self.members]
        gens = [torch.Generator(device=device).manual_seed(training._eval_seed(m.seed, epoch))
                for m in self.members]
        lps = [[] for _ in self.members]
        esss = [[] for _ in self.members]
        steps = list(_eval_steps([len(i) for i in index], training.EVAL_BATCH))
        for start, parts in tqdm(steps, desc=f"log p ({'in' if part == 'train' else 'out'})",
                                 leave=False, disable=None, file=sys.stderr):
            active = [g for g, _ in parts]
            width = max(b for _, b in parts)
            x = self._eval_inputs([(self.jd.train, index[g], index[g]) for g in active],
                                  [(start, b) for _, b in parts], width)
            eps = torch.stack([_pad_zeros(estimator.sample_eps(
                b, self.exp.n_is, stack.latent_dim, gens[g], device, torch.float32), width)
                for g, b in parts])                                        # (G', width, N, L)
            lp, ess = stack.log_px(x, eps, self._subset(active), self.is_rows)
            for i, (g, b) in enumerate(parts):
                lps[g].append(lp[i, :b])
                esss[g].append(ess[i, :b])
        out = []
        for lp, ess in zip(lps, esss):
            if not lp:
                out.append((np.zeros(0), np.zeros(0)))
            else:
                out.append((torch.cat(lp).double().cpu().numpy(),
                            torch.cat(ess).double().cpu().numpy()))
        return out

    def checkpoint(self, epoch: int) -> None:
        for g, m in enumerate(self.members):
            self.stack.export(g, m.model, m.optimizer)
            training.save_resume(m.resume, m.model, m.optimizer, m.gen, m.history, epoch)


def _describe(exp: Experiment, jobs: list[results.Job]) -> str:
    tags = [j.tag for j in jobs]
    return f"{exp.name} {tags[0]}" if len(tags) == 1 else f"{exp.name} {tags[0]}..{tags[-1]}"


def run_group(exp: Experiment, jobs: list[results.Job], results_root="results", device="cpu",
              data_root=None, download: bool = False, jd: training.JobData | None = None,
              log=print, stop_after: int | None = None, is_rows: int = IS_ROWS) -> list[dict] | None:
    """Train the jobs' models together and write each one's result file, as run_job would.

    Returns the result dicts in the order of `jobs`. stop_after=E: checkpoint after epoch E and
    return None without result files.
    """
    if not jobs:
        return []
    if len(set(jobs)) != len(jobs):
        raise ValueError(f"a job appears twice in the group: {[j.tag for j in jobs]}")
    device = torch.device(device)
    jd = jd or training.load_job_data(exp, device, any(j.full for j in jobs), data_root, download)
    n, in_channels = jd.train.shape[0], jd.train.shape[1]
    name = _describe(exp, jobs)

    # Set up every member exactly as run_job would.
    members = []
    for job in jobs:
        train_idx, test_idx, seed = training.job_split(exp, job, n)
        model = training.init_model(exp, seed, in_channels, device)
        stem = results.stem(jd.dataset, exp.model, model.description, exp.seed, job)
        members.append(_Member(
            job, train_idx, test_idx, seed, model,
            torch.optim.Adam(model.parameters(), lr=exp.lr),
            torch.Generator(device=device).manual_seed(seed),
            results.resume_path(results_root, exp.name, stem),
            torch.as_tensor(train_idx, device=device), torch.as_tensor(test_idx, device=device)))

    # Resume only when every member has a resume file of the same epoch.
    start_epoch = 1
    have = [m.resume.exists() for m in members]
    if any(have):
        done = []
        if all(have):
            for m in members:
                m.history, epoch = training.load_resume(m.resume, m.model, m.optimizer, m.gen, device)
                done.append(epoch)
        if all(have) and len(set(done)) == 1:
            start_epoch = done[0] + 1
            log(f"[{name}] resuming after epoch {done[0]} from {len(members)} resume files")
        else:
            log(f"[{name}] resume files are missing or of different epochs; starting afresh")
            for g, job in enumerate(jobs):  # rebuild the untouched initial state
                m = members[g]
                m.model = training.init_model(exp, m.seed, in_channels, device)
                m.optimizer = torch.optim.Adam(m.model.parameters(), lr=exp.lr)
                m.gen = torch.Generator(device=device).manual_seed(m.seed)
                m.history = training.new_history()
    stack = StackedVAEs([m.model for m in members], exp.lr)
    for g, m in enumerate(members):
        stack.load(g, m.model, m.optimizer)
    group = _Group(exp, members, stack, jd, device, is_rows)
    group.plan = _train_plan([len(m.train_idx) for m in members], exp.batch_size, device)

    eval_epochs = set(exp.eval_epochs())
    for epoch in tqdm(range(start_epoch, exp.epochs + 1), desc=name, initial=start_epoch - 1,
                      total=exp.epochs, disable=None, file=sys.stderr):
        t0 = time.perf_counter()
        train = group.train_epoch()
        for m, loss in zip(members, train):
            training.check_train_loss(loss, epoch, f"{exp.name} {m.job.tag}")
            m.history["losses"]["train"].append(loss)
        for m, loss in zip(members, group.heldout_losses(epoch)):
            if loss is not None:
                m.history["losses"]["test"].append(loss)
        line = (f"[{name}] epoch {epoch}/{exp.epochs} loss train "
                f"{min(train):.3f}..{max(train):.3f}")
        if epoch in eval_epochs:
            ins, outs = group.log_px(epoch, "train"), group.log_px(epoch, "test")
            for m, (lp_tr, ess_tr), (lp_te, ess_te) in zip(members, ins, outs):
                training.record_log_px(m.history, epoch, m.train_idx, m.test_idx, lp_tr, ess_tr,
                                       lp_te, ess_te, f"{exp.name} {m.job.tag}")
            line += f" | mean log p in {np.mean([lp.mean() for lp, _ in ins]):.3f}"
        log(line + f" ({time.perf_counter() - t0:.1f} s, {len(members)} models)")
        stopping = stop_after is not None and epoch >= stop_after and epoch < exp.epochs
        if (epoch % exp.checkpoint_every == 0 and epoch < exp.epochs) or stopping:
            group.checkpoint(epoch)
        if stopping:
            return None

    out = []
    for g, m in enumerate(members):
        stack.export(g, m.model, m.optimizer)
        out.append(training.finish_job(exp, m.job, jd, m.model, m.history, results_root))
    return out

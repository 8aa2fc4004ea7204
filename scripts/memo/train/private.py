"""Differentially private training of one model: DP-SGD with Adam, through Opacus.

`PrivateModel` is the trainer of `training.fit` for an experiment with `dp` set
(docs/privacy.md). Per step:

    batch  = every in-fold example with probability q = B / n      (Poisson sampling)
    g_i    = ∇θ ℓ_i,  ℓ_i the example's negative ELBO (model.loss, summed: no mean)
    ĝ      = (Σ_i g_i · min(1, C / ‖g_i‖) + N(0, σ²C² I)) / B       (B: the expected batch size)
    θ      ← Adam(θ, ĝ)

with C = max_grad_norm and σ the smallest noise multiplier for which the RDP accountant gives
(ε, δ) after all the run's steps (n // B per epoch). The clipped sum comes from Opacus's ghost
clipping (GradSampleModuleFastGradientClipping, told the loss is a sum, so g_i is not
rescaled): a first backward pass gives every ‖g_i‖ without forming the g_i (for a linear layer
‖g_i‖² is ‖δ_i‖²‖a_i‖², from its input a_i and output gradient δ_i), and a second one the
gradient of Σ_i min(1, C/‖g_i‖) ℓ_i, which is Σ_i g_i min(1, C/‖g_i‖). Opacus's optimizer
(DPOptimizerFastGradientClipping with loss_reduction "mean": the division by B is all "mean"
does there) adds the noise, divides by B and counts the step (RDPAccountant). Measured on the
2-core build machine for the MLP VAE at batch 64: 17 ms a step, against 10 ms without privacy
and 230 ms with per-example gradients formed (Opacus's GradSampleModule). Held-out loss and log p(x) are computed exactly as
for a non-private model, on the plain module in eval mode.

Randomness: the member's training generator (seeded from the model's seed) draws the Poisson
masks, the input noise and the reparameterisation eps; a second generator, seeded from the
model's seed too, draws the DP noise. Both, and the accountant's history, are in the resume
file (Member.extra), so a resumed run equals an uninterrupted one and spends the same ε.
"""
from __future__ import annotations

import warnings

import numpy as np
import opacus
import torch
from opacus.accountants import RDPAccountant
from opacus.accountants.utils import get_noise_multiplier
from opacus.grad_sample import GradSampleModuleFastGradientClipping
from opacus.optimizers import DPOptimizerFastGradientClipping

from memo import models
from memo.data import preprocess
from memo.train import training
from memo.config.experiments import Experiment

ACCOUNTANT = "rdp"
_NOISE_STREAM = 0x4450  # key of the DP noise generator's seed, beside the model's seed


def noise_seed(model_seed: int) -> int:
    """The DP noise generator's seed: a function of the model's seed, apart from its own."""
    return int(np.random.SeedSequence([model_seed, _NOISE_STREAM]).generate_state(1)[0])


def schedule(n_train: int, batch_size: int) -> tuple[float, int]:
    """(sample rate q = B / n, steps per epoch n // B): Poisson batches of expected size B, one
    pass over the data per epoch in expectation, as Opacus's Poisson data loader does."""
    if batch_size > n_train:
        raise ValueError(f"batch_size = {batch_size} is larger than the {n_train} training "
                         f"examples of a model; private training samples each example with "
                         f"probability batch_size / n: lower batch_size to at most {n_train}")
    return batch_size / n_train, n_train // batch_size


def noise_multiplier(dp: dict, sample_rate: float, steps: int) -> float:
    """σ for (ε, δ) after `steps` steps at sample rate q, by the RDP accountant (Opacus)."""
    try:
        return float(get_noise_multiplier(target_epsilon=dp["epsilon"],
                                          target_delta=dp["delta"], sample_rate=sample_rate,
                                          steps=steps, accountant=ACCOUNTANT))
    except ValueError as e:
        raise ValueError(f"dp epsilon = {dp['epsilon']:g} at delta = {dp['delta']:g} cannot be "
                         f"reached in {steps} steps at sample rate {sample_rate:.4g} ({e}); "
                         f"raise epsilon, or train fewer epochs") from None


def opacus_problem(model: torch.nn.Module) -> str | None:
    """Why Opacus cannot form the model's per-example gradients, in one line (None: it can):
    parameters held by the model itself (Opacus's hooks sit on submodules called on the batch),
    or layers its validator refuses (BatchNorm mixes a batch's examples)."""
    own = [name for name, p in model.named_parameters(recurse=False) if p.requires_grad]
    if own:
        return (f"its parameters {', '.join(own)} belong to the model itself, where Opacus's "
                f"per-example gradient hooks do not reach: hold them in submodules that are "
                f"called on the batch")
    errors = opacus.validators.ModuleValidator.validate(model, strict=False)
    if errors:
        return "; ".join(dict.fromkeys(str(e).split(". ")[0] for e in errors))
    return None


class PrivateModel(training.OneModel):
    """The trainer of a single job under DP-SGD (module docstring); evaluation as OneModel's."""

    def __init__(self, exp: Experiment, member: training.Member, jd, speed):
        if exp.dp is None:
            raise ValueError(f"experiment {exp.name} has no dp setting; train it with OneModel")
        if speed.compile is not None:
            raise ValueError("--compile is not supported with dp (Opacus's per-example "
                             "gradient hooks); drop --compile")
        n = len(member.train_idx)
        if exp.dp["delta"] >= 1 / n:
            # δ is the chance the guarantee fails outright; at δ ≥ 1/n a mechanism that
            # publishes one random training example in full would meet it
            raise ValueError(f"dp delta = {exp.dp['delta']:g} is not below 1/n = {1 / n:.3g} "
                             f"for this model's {n} training examples; set \"delta\" in the "
                             f"experiment's dp below {1 / n:.3g}")
        super().__init__(exp, member, jd, speed)
        self.sample_rate, self.steps_per_epoch = schedule(n, exp.batch_size)
        self.steps = self.steps_per_epoch * exp.epochs
        self.sigma = noise_multiplier(exp.dp, self.sample_rate, self.steps)

    def begin(self) -> None:
        m, dp, device = self.members[0], self.exp.dp, self.jd.train.device
        problem = opacus_problem(m.model)
        if problem:
            raise ValueError(f"model {self.exp.model} of experiment {self.exp.name} cannot "
                             f"train with dp: {problem}")
        with warnings.catch_warnings():  # "secure RNG turned off": we want reproducible noise
            warnings.simplefilter("ignore")
            # hooks on m.model's layers; m.model itself stays the plain module (state_dict,
            # evaluation), and its hooks record nothing in eval mode or without gradients
            self.gsm = GradSampleModuleFastGradientClipping(
                m.model, batch_first=True, loss_reduction="sum",
                max_grad_norm=dp["max_grad_norm"], use_ghost_clipping=True)
        self.noise_gen = torch.Generator(device=device).manual_seed(noise_seed(m.seed))
        # loss_reduction "mean" divides the noised sum by expected_batch_size, nothing else
        self.optimizer = DPOptimizerFastGradientClipping(
            m.optimizer, noise_multiplier=self.sigma, max_grad_norm=dp["max_grad_norm"],
            expected_batch_size=self.exp.batch_size, loss_reduction="mean",
            generator=self.noise_gen)
        training.start_loss_sum(m, self.jd)
        self.accountant = RDPAccountant()
        self.optimizer.attach_step_hook(self.accountant.get_optimizer_hook_fn(self.sample_rate))
        if "accountant" in m.extra:  # resumed: the state of the epoch the file was written at
            self.accountant.history = [(float(s), float(q), int(k))
                                       for s, q, k in m.extra["accountant"]]
            self.noise_gen.set_state(m.extra["noise_generator"])

    def train_epoch(self) -> list[float]:
        m = self.members[0]
        device = m.train_t.device
        m.model.train()
        self.gsm.enable_hooks()
        total = torch.zeros((), device=device, dtype=torch.float64)
        count = 0
        for _ in range(self.steps_per_epoch):
            take = torch.rand(len(m.train_t), device=device, generator=m.gen) < self.sample_rate
            index = m.train_t[take]                      # (b,), b ~ Binomial(n, q)
            total += self.step(index)
            count += len(index)
        self.gsm.disable_hooks()
        return [float(total) / max(count, 1)]  # mean loss per example drawn this epoch

    def clipped_sum(self, x: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        """Σ_i g_i min(1, C/‖g_i‖) into each parameter's .grad, by ghost clipping (module
        docstring); the examples' losses ℓ_i (b,)."""
        losses = self.members[0].model.loss(x, eps)                         # (b,)
        with warnings.catch_warnings():
            # the first layer's input needs no gradient: its hook fires on its output's
            warnings.filterwarnings("ignore", message="Full backward hook is firing")
            losses.sum().backward(retain_graph=True)       # hooks: every ‖g_i‖
            coef = self.gsm.get_clipping_coef().to(losses.device)  # min(1, C/(‖g_i‖ + 1e-6))
            self.optimizer.zero_grad(set_to_none=True)
            self.gsm.disable_hooks()
            try:
                (coef.detach() * losses).sum().backward()
            finally:
                self.gsm.enable_hooks()
        return losses.detach()

    def step(self, index: torch.Tensor) -> torch.Tensor:
        """One DP-SGD step on the training images `index` (a Poisson batch, maybe empty):
        their summed loss, float64 on the device."""
        m, images = self.members[0], self.jd.train
        model = m.model
        self.optimizer.zero_grad(set_to_none=True)
        if len(index):
            x = preprocess.train_inputs(images[index], model.binary, self.jd.hflip, m.gen,
                                        self.exp.flip)
            eps = model.noise(len(index), m.gen, images.device)
            losses = self.clipped_sum(x, eps)
            loss = losses.sum()
            if m.history.get(training.LOSS_SUM) is not None:
                m.history[training.LOSS_SUM].index_add_(0, index, losses.double())
        else:  # an empty batch is still a step: noise alone, and the accountant counts it
            loss = torch.zeros((), device=images.device)
            for p in model.parameters():
                p.grad = torch.zeros_like(p)
        self.optimizer.step()  # add noise, divide by B, count the step, Adam
        return loss.double()

    def epsilon_spent(self) -> float:
        if not self.accountant.history:
            return 0.0
        return float(self.accountant.get_epsilon(delta=self.exp.dp["delta"]))

    def record(self) -> dict:
        """The result file's meta["privacy"]."""
        dp = self.exp.dp
        return {"target_epsilon": dp["epsilon"], "delta": dp["delta"],
                "max_grad_norm": dp["max_grad_norm"], "noise_multiplier": self.sigma,
                "sample_rate": self.sample_rate, "expected_batch_size": self.exp.batch_size,
                "steps": sum(k for _, _, k in self.accountant.history),
                "planned_steps": self.steps, "accountant": ACCOUNTANT,
                "epsilon_spent": self.epsilon_spent(), "sampling": "poisson",
                "norm": models.norm_layer_name(self.exp.model, self.exp.norm),
                "library": f"opacus {opacus.__version__}"}

    def sync(self) -> None:
        """The accountant, the noise generator and the privacy record into Member.extra,
        which the resume file and the result's meta take from."""
        m = self.members[0]
        m.extra = {"accountant": [[float(s), float(q), int(k)]
                                  for s, q, k in self.accountant.history],
                   "noise_generator": self.noise_gen.get_state(),
                   "privacy": self.record()}

"""K-fold splits and per-model seeds, keyed by identity so any job can run alone.

The permutation of repeat r depends only on (seed, r); fold k of that repeat is the
k-th contiguous block of it, the first n % K blocks one longer (as the authors' code). Two ways to
draw the permutation (the experiment's `splits`):

* "ours":    numpy's generator keyed by (seed, r), O(n);
* "authors": the authors' SyncRNG rule: one SyncRNG(seed) stream gives repeat r the seed of its
             (r+1)-th draw modulo 10,000, and SyncRNG(that seed).shuffle(range(n)) is the
             permutation; this reproduces their fold assignment exactly.
"""
from __future__ import annotations

import numpy as np

FULL_FOLD = -1  # fold index used for the model trained on all of D


METHODS = ("ours", "authors")


def permutation(n: int, seed: int, repeat: int, method: str = "ours") -> np.ndarray:
    if method == "ours":
        return np.random.default_rng([seed, repeat]).permutation(n)
    if method != "authors":
        raise ValueError(f"unknown splits {method!r}; valid choices: {', '.join(METHODS)}")
    from SyncRNG import SyncRNG  # the authors' generator (PyPI syncrng)
    stream = SyncRNG(seed=seed)
    for _ in range(repeat + 1):  # their repeats draw their seeds in order
        run_seed = stream.randi() % 10000
    return np.asarray(SyncRNG(seed=run_seed).shuffle(list(range(n))), dtype=np.int64)


def folds(n: int, n_folds: int, seed: int, repeat: int, method: str = "ours") -> list[np.ndarray]:
    """The K held-out folds of one repeat; sizes floor(n/K), the first n % K get one more."""
    if not 1 <= n_folds <= n:
        raise ValueError(f"cannot cut {n} examples into {n_folds} folds")
    return np.array_split(permutation(n, seed, repeat, method), n_folds)


def train_test_indices(n: int, n_folds: int, seed: int, repeat: int, fold: int,
                       method: str = "ours") -> tuple[np.ndarray, np.ndarray]:
    """(in-fold training indices, held-out indices), both sorted. fold=FULL_FOLD: all / none."""
    if fold == FULL_FOLD:
        return np.arange(n), np.arange(0)
    blocks = folds(n, n_folds, seed, repeat, method)
    if not 0 <= fold < n_folds:
        raise ValueError(f"fold {fold} outside 0..{n_folds - 1}")
    held_out = np.zeros(n, dtype=bool)
    held_out[blocks[fold]] = True
    return np.flatnonzero(~held_out), np.flatnonzero(held_out)


CONTROL_KEY = 0xC0  # keys the control images' draws apart from the training examples'


def control_choice(n_test: int, count: int, seed: int) -> np.ndarray:
    """The positions in a test split of an experiment's `count` control images (sorted): a
    permutation keyed by (seed, CONTROL_KEY), its first `count`; all when count >= n_test."""
    return np.sort(np.random.default_rng([seed, CONTROL_KEY]).permutation(n_test)[:count])


def control_held_out(n_controls: int, n_folds: int, seed: int, repeat: int) -> np.ndarray:
    """(n_controls,) the pseudo-fold of each control image in one repeat, cut by the rule of
    the training examples' folds (contiguous blocks of a permutation keyed by (seed, repeat),
    the first n % K one longer), from a permutation of their own. No model trains on a
    control: 'held out' names the model that plays the held-out one in the score."""
    held = np.full(n_controls, -1, dtype=np.int16)
    perm = np.random.default_rng([seed, repeat, CONTROL_KEY]).permutation(n_controls)
    for k, block in enumerate(np.array_split(perm, n_folds)):
        held[block] = k
    return held


def model_seed(seed: int, repeat: int, fold: int) -> int:
    """A seed of its own for every (repeat, fold) model, independent of run order."""
    return int(np.random.SeedSequence([seed, repeat, fold + 1]).generate_state(1)[0])


def job_split(exp, job, n: int) -> tuple[np.ndarray, np.ndarray, int]:
    """(in-fold indices, held-out indices, model seed) of a job (experiments.Job) of an
    experiment on a training set of n examples; the full model trains on all of D."""
    fold = FULL_FOLD if job.full else job.fold
    if not job.full and not (0 <= job.repeat < exp.repeats and 0 <= job.fold < exp.folds):
        raise ValueError(f"{job.tag} is outside this experiment's {exp.repeats} repeats "
                         f"x {exp.folds} folds")
    train_idx, test_idx = train_test_indices(n, exp.folds, exp.seed, job.repeat, fold, exp.splits)
    return train_idx, test_idx, model_seed(exp.seed, job.repeat, fold)

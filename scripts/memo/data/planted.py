"""The planted-memorization benchmark: Fashion-MNIST with memorization planted where we know it.

A measure of memorization should score an example high when the model fits it only because it
was trained on it. Two kinds of examples are planted among ordinary Fashion-MNIST images, where
the right answer is known in advance:

* singletons: single images of a class the rest of the set lacks ("Bag", withheld from every
  other example). Nothing else teaches the model to produce them, so a model that fits one has
  memorized it: a correct measure scores them high;
* duplicate groups: an ordinary image repeated GROUP_SIZE times. Leaving one copy out leaves the
  others in the training set, so the leave-fold-out likelihood hardly drops: a correct K-fold
  measure scores each copy low, while one-model measures that look only at fit (loss, samples
  that copy it) tend to score them high.

The set is built from the offline default data (Debian's Fashion-MNIST), deterministically:
the first N_REGULAR non-Bag training images, the next N_GROUPS non-Bag images as the duplicated
ones, the first N_SINGLETONS Bag images, shuffled together by a fixed seed. Its test split is
Fashion-MNIST's test split without Bags (held-out images of the same distribution).

This module needs only the labels (and images to copy): memo.data loads Fashion-MNIST and
builds the set through it (`memo.data.load("planted")`, `memo.data.planted_layout`).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

WITHHELD_CLASS = 8          # Fashion-MNIST's "Bag"
N_SINGLETONS = 20
N_GROUPS = 10               # duplicated images
GROUP_SIZE = 5              # copies of each
N_REGULAR = 1930
N = N_REGULAR + N_SINGLETONS + N_GROUPS * GROUP_SIZE   # 2000 examples
SHUFFLE_SEED = 20211206     # fixed: the set is the same everywhere

# roles
REGULAR, SINGLETON, DUPLICATE = 0, 1, 2
ROLE_NAMES = {REGULAR: "regular", SINGLETON: "singleton", DUPLICATE: "duplicate"}


@dataclass(frozen=True)
class Layout:
    """Where the planted examples are: per example of the built training set."""
    source: np.ndarray   # (N,) index into Fashion-MNIST's training split
    role: np.ndarray     # (N,) REGULAR, SINGLETON or DUPLICATE
    group: np.ndarray    # (N,) duplicate group 0..N_GROUPS-1, or -1


def layout(labels: np.ndarray) -> Layout:
    """The layout for Fashion-MNIST's training labels (the set depends on nothing else)."""
    labels = np.asarray(labels)
    others = np.flatnonzero(labels != WITHHELD_CLASS)
    withheld = np.flatnonzero(labels == WITHHELD_CLASS)
    if len(others) < N_REGULAR + N_GROUPS or len(withheld) < N_SINGLETONS:
        raise ValueError(f"the planted set needs {N_REGULAR + N_GROUPS} images outside class "
                         f"{WITHHELD_CLASS} and {N_SINGLETONS} of it; the training split has "
                         f"{len(others)} and {len(withheld)}")
    duplicated = others[N_REGULAR:N_REGULAR + N_GROUPS]
    source = np.concatenate([others[:N_REGULAR], withheld[:N_SINGLETONS],
                             np.repeat(duplicated, GROUP_SIZE)])
    role = np.concatenate([np.full(N_REGULAR, REGULAR), np.full(N_SINGLETONS, SINGLETON),
                           np.full(N_GROUPS * GROUP_SIZE, DUPLICATE)])
    group = np.concatenate([np.full(N_REGULAR + N_SINGLETONS, -1),
                            np.repeat(np.arange(N_GROUPS), GROUP_SIZE)])
    order = np.random.default_rng(SHUFFLE_SEED).permutation(N)
    return Layout(source[order].astype(np.int64), role[order].astype(np.int8),
                  group[order].astype(np.int64))


def indices(labels: np.ndarray, split: str) -> np.ndarray:
    """The positions in Fashion-MNIST's split of that name (its labels) of the planted set's
    examples, in order: the layout's sources for "train", every non-Bag image otherwise."""
    labels = np.asarray(labels)
    if split == "train":
        return layout(labels).source
    return np.flatnonzero(labels != WITHHELD_CLASS)


def build(images, labels, split: str):
    """(images, labels) of the planted set's split, from Fashion-MNIST's split of that name
    (arrays or CPU tensors: indexing by an index array gives new, contiguous ones)."""
    idx = indices(np.asarray(labels), split)
    return images[idx], labels[idx]

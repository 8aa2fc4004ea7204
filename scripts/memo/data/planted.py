"""The planted-memorization benchmark: Fashion-MNIST with memorization planted where we know it.

A measure of memorization should score an example high when the model fits it only because it
was trained on it. Three kinds of examples are planted among ordinary Fashion-MNIST images,
where the right answer is known in advance:

* one-offs: N_ONEOFFS synthetic images, each a random pattern of 7×7 black or white blocks of
  4×4 pixels (the 28×28 area Fashion-MNIST's images fill), drawn from a fixed seed. Each is
  unlike every other training image: `build` checks that its Euclidean distance to every other
  image of the set exceeds ONEOFF_MIN_DISTANCE (pixels in [0, 1]), farther than any ordinary
  image lies from its nearest neighbour (tests/test_measures_pipeline.py). Nothing but the
  example itself teaches the model to produce it: a correct measure scores them high;
* rare-class singletons: single images of a class the rest of the set lacks ("Bag", withheld
  from every other example). They are not one of a kind: a fold model that holds one out still
  trains on the other Bags (on average 15.2 of the other 19 at K = 5), so they test whether a
  measure finds a small, unusual class, which a one-off cannot;
* duplicate groups: an ordinary image repeated GROUP_SIZE times. Leaving one copy out leaves,
  at K = 5, on average 3.2 others in training (each of the other four lands in the held-out
  fold with probability (n/K − 1)/(n − 1) ≈ 1/5), so the leave-fold-out likelihood hardly
  drops: a correct K-fold measure does not score them high. One-model measures that look only
  at fit (losses, −log p) score them low too, as well-fitted images; none of them can tell
  repeated from easy.

The set is built from the offline default data (Debian's Fashion-MNIST), deterministically:
the first N_REGULAR non-Bag training images, the next N_GROUPS non-Bag images as the duplicated
ones, the first N_SINGLETONS Bag images and the N_ONEOFFS patterns, shuffled together by a
fixed seed. Its test split is Fashion-MNIST's test split without Bags (held-out images of the
same distribution).

This module needs only the labels (and images to copy): memo.data loads Fashion-MNIST and
builds the set through it (`memo.data.load("planted")`, `memo.data.planted_layout`).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

WITHHELD_CLASS = 8          # Fashion-MNIST's "Bag"
N_SINGLETONS = 20           # rare-class singletons (Bags)
N_ONEOFFS = 20              # synthetic one-of-a-kind images
N_GROUPS = 10               # duplicated images
GROUP_SIZE = 5              # copies of each
N_REGULAR = 1910
N = N_REGULAR + N_SINGLETONS + N_ONEOFFS + N_GROUPS * GROUP_SIZE   # 2000 examples
SHUFFLE_SEED = 20211206     # fixed: the set is the same everywhere
ONEOFF_SEED = 20211207
ONEOFF_GRID, ONEOFF_AREA = 7, 28     # 7×7 blocks over the central 28×28 pixels
ONEOFF_MIN_DISTANCE = 12.0  # pixels in [0, 1]; ordinary images lie within ~9 of a neighbour

# roles
REGULAR, SINGLETON, DUPLICATE, ONEOFF = 0, 1, 2, 3
ROLE_NAMES = {REGULAR: "regular", SINGLETON: "rare_singleton", DUPLICATE: "duplicate",
              ONEOFF: "one_off"}


@dataclass(frozen=True)
class Layout:
    """Where the planted examples are: per example of the built training set."""
    source: np.ndarray   # (N,) index into Fashion-MNIST's training split; -1 for a one-off
    role: np.ndarray     # (N,) REGULAR, SINGLETON, DUPLICATE or ONEOFF
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
                             np.full(N_ONEOFFS, -1), np.repeat(duplicated, GROUP_SIZE)])
    role = np.concatenate([np.full(N_REGULAR, REGULAR), np.full(N_SINGLETONS, SINGLETON),
                           np.full(N_ONEOFFS, ONEOFF),
                           np.full(N_GROUPS * GROUP_SIZE, DUPLICATE)])
    group = np.concatenate([np.full(N_REGULAR + N_SINGLETONS + N_ONEOFFS, -1),
                            np.repeat(np.arange(N_GROUPS), GROUP_SIZE)])
    order = np.random.default_rng(SHUFFLE_SEED).permutation(N)
    return Layout(source[order].astype(np.int64), role[order].astype(np.int8),
                  group[order].astype(np.int64))


def oneoff_images(shape: tuple[int, ...]) -> np.ndarray:
    """(N_ONEOFFS, *shape) uint8: the one-offs, 0 or 255 in blocks, centred in images of
    `shape` (C, H, W) (every channel alike; H, W at least ONEOFF_AREA)."""
    c, h, w = shape
    if h < ONEOFF_AREA or w < ONEOFF_AREA:
        raise ValueError(f"one-off images need at least {ONEOFF_AREA}×{ONEOFF_AREA} pixels; "
                         f"the images are {h}×{w}")
    step = ONEOFF_AREA // ONEOFF_GRID
    grid = np.random.default_rng(ONEOFF_SEED).integers(0, 2, (N_ONEOFFS, ONEOFF_GRID,
                                                              ONEOFF_GRID))
    blocks = (grid * 255).astype(np.uint8).repeat(step, 1).repeat(step, 2)
    out = np.zeros((N_ONEOFFS, c, h, w), np.uint8)
    top, left = (h - ONEOFF_AREA) // 2, (w - ONEOFF_AREA) // 2
    out[:, :, top:top + ONEOFF_AREA, left:left + ONEOFF_AREA] = blocks[:, None]
    return out


def oneoff_distances(images) -> np.ndarray:
    """(N_ONEOFFS,) each one-off's Euclidean distance (pixels / 255) to the nearest other
    image of a built training set (the one-offs among them, in the layout's order)."""
    x = np.asarray(images, dtype=np.float64).reshape(len(images), -1) / 255
    rows = np.flatnonzero(_roles(len(x)) == ONEOFF)
    sq = (x * x).sum(1)
    d2 = sq[rows, None] + sq[None, :] - 2 * x[rows] @ x.T
    d2[np.arange(len(rows)), rows] = np.inf
    return np.sqrt(np.maximum(d2, 0).min(1))


def _roles(n: int) -> np.ndarray:
    if n != N:
        raise ValueError(f"a planted training set has {N} images, not {n}")
    order = np.random.default_rng(SHUFFLE_SEED).permutation(N)
    role = np.concatenate([np.full(N_REGULAR, REGULAR), np.full(N_SINGLETONS, SINGLETON),
                           np.full(N_ONEOFFS, ONEOFF),
                           np.full(N_GROUPS * GROUP_SIZE, DUPLICATE)])
    return role[order]


def indices(labels: np.ndarray, split: str) -> np.ndarray:
    """The positions in Fashion-MNIST's split of that name (its labels) of the planted set's
    examples, in order: the layout's sources for "train" (-1 for a one-off), every non-Bag
    image otherwise."""
    labels = np.asarray(labels)
    if split == "train":
        return layout(labels).source
    return np.flatnonzero(labels != WITHHELD_CLASS)


def build(images, labels, split: str):
    """(images, labels) of the planted set's split, from Fashion-MNIST's split of that name
    (uint8 (N, C, H, W) arrays or CPU tensors: indexing by an index array gives new, contiguous
    ones). In "train" the one-offs get label -1, and ValueError if one lies within
    ONEOFF_MIN_DISTANCE of another image."""
    idx = indices(np.asarray(labels), split)
    if split != "train":
        return images[idx], labels[idx]
    x, y = images[np.maximum(idx, 0)], labels[np.maximum(idx, 0)]
    rows = np.flatnonzero(idx < 0)
    pats = oneoff_images(tuple(x.shape[1:]))
    if hasattr(x, "new_tensor"):                           # torch
        x[rows] = x.new_tensor(pats)
        y[rows] = -1
    else:
        x[rows], y[rows] = pats.astype(x.dtype), -1
    near = oneoff_distances(x)
    if near.min() <= ONEOFF_MIN_DISTANCE:
        raise ValueError(f"a planted one-off lies {near.min():.2f} from another training "
                         f"image, within {ONEOFF_MIN_DISTANCE}: the set is not as designed")
    return x, y

"""Data sets, each loaded once into memory as a uint8 tensor of shape (N, C, 32, 32) (the paper).

Specs accepted by ``load``:

* ``bmnist``  - MNIST through ``torchvision.datasets.MNIST`` (decompressed IDX files under
  ``<root>/MNIST/raw/``), padded 28 -> 32 with zeros. Binarization is done per batch elsewhere.
* ``fashion`` - Fashion-MNIST through ``torchvision.datasets.FashionMNIST`` (``<root>/FashionMNIST/raw/``);
  when those files are absent but Debian's ``dataset-fashion-mnist`` package is installed, its
  gzipped files are decompressed into that folder first. Padded like MNIST.
* ``cifar10`` - the standard ``<root>/cifar-10-batches-py/`` pickled batches, read by our own reader
  (torchvision's class insists on the MD5 sums of the original files), which lets a pickle name
  nothing but numpy's array rebuilders, so a planted batch cannot run code.
* ``celeba``  - the standard ``<root>/celeba/`` layout (``list_eval_partition.txt`` and
  ``img_align_celeba/*.jpg``), cropped to the box (15, 40, 163, 188) and resized to 32x32 with
  antialiased bilinear interpolation. The result is cached in ``<root>/celeba/cache_<split>_32x32.pt``.
* ``planted`` - the planted-memorization benchmark built from Fashion-MNIST (memo/data/planted.py):
  ordinary images with singletons of a withheld class and groups of exact duplicates planted.
* ``npz:PATH`` - a NumPy archive with uint8 ``x`` (N x H x W or N x H x W x C, C in {1, 3}), optional
  ``y``, and optional ``x_test``/``y_test`` for ``split="test"``.

``root`` defaults to the environment variable ``DATA_ROOT``, else ``./data``. Nothing is fetched
from the network unless ``download=True`` is passed (or ``download`` is called).
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch

from memo.config import naming, splits
from memo.data import celeba, cifar, mnist, npz, planted
from memo.data.images import DataMissingError, ImageData
from memo.fileio import one_line
from memo.config.experiments import DEFAULT_CONTROLS

DATA_ROOT_DEFAULT = "./data"


# ----------------------------------------------------------------------------------------------
# spec handling


def _root(root) -> Path:
    if root is None:
        root = os.environ.get("DATA_ROOT") or DATA_ROOT_DEFAULT
    return Path(root).expanduser()


def _check_split(kind: str, split: str) -> None:
    allowed = ("train", "valid", "test") if kind == "celeba" else ("train", "test")
    if split not in allowed:
        raise ValueError(f"split {split!r} is not valid for {kind}; choose one of {', '.join(allowed)}")


def load(spec: str, split: str = "train", root=None, download: bool = False) -> ImageData:
    """Load one split of a data set into memory as uint8 (N, C, 32, 32)."""
    kind, npz_path = naming.parse_spec(spec)
    _check_split(kind, split)
    root = _root(root)
    if kind == "bmnist":
        return mnist.load_mnist_like("MNIST", "bmnist", root, split, download)
    if kind == "fashion":
        return mnist.load_mnist_like("FashionMNIST", "fashion", root, split, download)
    if kind == "cifar10":
        return cifar.load_cifar10(root, split, download)
    if kind == "celeba":
        return celeba.load_celeba(root, split, download)
    if kind == "planted":
        fashion = mnist.load_mnist_like("FashionMNIST", "fashion", root, split, download)
        images, labels = planted.build(fashion.images, fashion.labels, split)
        return ImageData(naming.DATASET_NAMES[kind], images, labels, hflip=False)
    return npz.load_npz(Path(npz_path).expanduser(), split)


def planted_layout(root=None) -> planted.Layout:
    """Where the planted examples are (memo/data/planted.py), from the Fashion-MNIST training
    labels under root (default: as `load`'s)."""
    return planted.layout(load("fashion", "train", root=root).labels.numpy())


def check_device(name: str) -> torch.device:
    """The torch device of that name, usable here; ValueError (one line) otherwise."""
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError) as e:
        raise ValueError(f"unknown device {name!r} ({one_line(e)}); use cpu or "
                         "cuda") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {name!r}: no CUDA GPU is available here; use --device cpu "
                         "(or DEVICE=cpu with make)")
    return device


def download(spec: str, root=None) -> None:
    """Fetch a data set into root with torchvision's downloaders (network access)."""
    kind, _ = naming.parse_spec(spec)
    if kind == "npz":
        raise ValueError(f"{spec!r} is a local file; there is nothing to download")
    _fetch(kind, _root(root))


@dataclass
class JobData:
    """The images a training job needs, resident on its device as uint8."""
    train: torch.Tensor          # (n, C, 32, 32): the training set D (or its first `subset`)
    test: torch.Tensor | None    # the official test split, for the full-data model's loss
    hflip: bool                  # random horizontal flips in training
    dataset: str                 # display name, as in result file names
    # control images (memo/config/splits.py control_choice): test-split images no model trains
    # on, scored like training examples; None when the experiment has none
    controls: torch.Tensor | None = None
    control_index: torch.Tensor | None = None   # (C,) their positions in the test split

    def test_noise_index(self, positions: torch.Tensor) -> torch.Tensor:
        """The keys of test-split images' fixed evaluation noise: past D's, so that one test
        image has one binarization, whether the full model's test loss or a control uses it."""
        return positions + self.train.shape[0]

    @property
    def control_noise_index(self) -> torch.Tensor:
        return self.test_noise_index(self.control_index)


class NoControlsError(DataMissingError):
    """An experiment asks for control images but its data set has no test split."""


def training_images(exp, root=None, download: bool = False) -> torch.Tensor:
    """D of an experiment: its data set's training split, or the first `subset` of it."""
    images = load(exp.data, "train", root=root, download=download).images
    return images[: exp.subset] if exp.subset else images


def load_job_data(exp, device: torch.device, full: bool, root=None,
                  download: bool = False) -> JobData:
    """The data of an experiment (experiments.Experiment) on `device`; full: also the test
    split, when the data set has one. Every job also gets the experiment's control images."""
    train = load(exp.data, "train", root=root, download=download)
    images = train.images[: exp.subset] if exp.subset else train.images   # training_images
    test = None
    if full or exp.controls != 0:
        try:
            test = load(exp.data, "test", root=root, download=download).images.to(device)
        except DataMissingError:
            if not exp.data.startswith("npz:"):  # a standard data set's test split must be there
                raise
            if exp.controls:  # asked for by number; the default takes none from such data
                raise NoControlsError(
                    f"experiment {exp.name} asks for {exp.controls} control images, but "
                    f"{exp.data} has no test split to take them from: add x_test to the npz "
                    f"(images no model trains on), or set \"controls\": 0 in the experiment "
                    f"(no measured false-positive rate)") from None
            # npz data without x_test: the full model reports no test loss
    hflip = train.hflip if exp.hflip is None else exp.hflip
    jd = JobData(images.to(device), test if full else None, hflip, naming.dataset_name(exp.data))
    count = naming.controls_count(exp, 0 if test is None else len(test))
    if test is not None and count > len(test):
        raise NoControlsError(
            f"experiment {exp.name} asks for {count} control images but the test split of "
            f"{exp.data} has {len(test)}: set \"controls\" to at most {len(test)}, or to null "
            f"(the default: up to {DEFAULT_CONTROLS})")
    if count:
        index = torch.from_numpy(splits.control_choice(len(test), count, exp.seed))
        jd.control_index = index.to(device)
        jd.controls = test[jd.control_index]
    return jd


def _fetch(kind: str, root: Path) -> None:
    """Download a standard data set into root with torchvision (network access)."""
    root.mkdir(parents=True, exist_ok=True)
    if kind == "cifar10":
        cifar.fetch(root)
    elif kind == "celeba":
        celeba.fetch(root)
    else:   # bmnist, fashion, planted (built from Fashion-MNIST)
        mnist.fetch(kind, root)


# ----------------------------------------------------------------------------------------------
# MNIST and Fashion-MNIST


# ----------------------------------------------------------------------------------------------
# CIFAR-10


# ----------------------------------------------------------------------------------------------
# CelebA


# ----------------------------------------------------------------------------------------------
# npz

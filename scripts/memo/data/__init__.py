"""Data sets, each loaded once into memory as a uint8 tensor of shape (N, C, 32, 32) (PAPER.md §3).

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

import gzip
import os
import pickle
import re
import shutil
import sys
import threading
import warnings
from dataclasses import dataclass
from pathlib import Path
from queue import Full, Queue

import numpy as np
import torch
import torch.nn.functional as F

from memo.config import naming, splits
from memo.data import planted
from memo.config.experiments import DEFAULT_CONTROLS
from memo.fileio import one_line, torch_refusal
from memo.errors import MemoError

DATA_ROOT_DEFAULT = "./data"
FASHION_DEBIAN_DIR = "/usr/share/datasets/fashion-mnist"

SIZE = 32
# IDX files as torchvision's MNIST-style classes expect them in <root>/<Class>/raw/.
_IDX_FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)
CIFAR_DIR = "cifar-10-batches-py"
CIFAR_TRAIN = tuple(f"data_batch_{i}" for i in range(1, 6))
CIFAR_TEST = ("test_batch",)
CELEBA_DIR = "celeba"
CELEBA_PARTITION = "list_eval_partition.txt"
CELEBA_IMAGES = "img_align_celeba"
CELEBA_BOX = (15, 40, 163, 188)  # left, top, right, bottom (148 x 148)
CELEBA_SPLITS = {"train": 0, "valid": 1, "test": 2}
_CELEBA_CACHE_VERSION = 1
_CELEBA_BATCH = 512  # JPEGs read and decoded per batch


@dataclass
class ImageData:
    name: str                          # "BinarizedMNIST", "FashionMNIST", "CIFAR10", "CelebA", or "npz"
    images: torch.Tensor               # uint8, (N, C, 32, 32), contiguous, CPU
    labels: torch.Tensor | None        # int64 (N,) or None
    hflip: bool                        # default for random horizontal flips in training

    @property
    def n(self) -> int:
        return int(self.images.shape[0])


class DataMissingError(MemoError):
    """A data set's files are not where they are expected; the message says how to get them."""



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
        return _load_mnist_like("MNIST", "bmnist", root, split, download)
    if kind == "fashion":
        return _load_mnist_like("FashionMNIST", "fashion", root, split, download)
    if kind == "cifar10":
        return _load_cifar10(root, split, download)
    if kind == "celeba":
        return _load_celeba(root, split, download)
    if kind == "planted":
        fashion = _load_mnist_like("FashionMNIST", "fashion", root, split, download)
        images, labels = planted.build(fashion.images, fashion.labels, split)
        return ImageData(naming.DATASET_NAMES[kind], images, labels, hflip=False)
    return _load_npz(Path(npz_path).expanduser(), split)


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

    @property
    def control_noise_index(self) -> torch.Tensor:
        """The keys of the controls' fixed evaluation noise: past D's, as the full model's test
        images (memo/train/evaluation.py heldout_set), so one test image has one binarization."""
        return self.control_index + self.train.shape[0]


def n_controls(setting: int | None, n_test: int | None) -> int:
    """The number of control images an experiment asks for (Experiment.controls): its own
    number, or by default DEFAULT_CONTROLS capped at the test split (none without one)."""
    if setting is None:
        return min(DEFAULT_CONTROLS, n_test or 0)
    return setting


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
    count = n_controls(exp.controls, None if test is None else len(test))
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
    import torchvision.datasets as tvd

    root.mkdir(parents=True, exist_ok=True)
    if kind == "bmnist":
        tvd.MNIST(str(root), train=True, download=True)
    elif kind in ("fashion", "planted"):
        if not _idx_missing(root / "FashionMNIST" / "raw") or _fashion_from_debian(root):
            return
        tvd.FashionMNIST(str(root), train=True, download=True)
    elif kind == "cifar10":
        tvd.CIFAR10(str(root), train=True, download=True)
    elif kind == "celeba":
        tvd.CelebA(str(root), split="all", target_type=[], download=True)


# ----------------------------------------------------------------------------------------------
# shared array helpers


def _pad_to(images: torch.Tensor, size: int = SIZE) -> torch.Tensor:
    """Zero-pad (N, C, H, W) to (N, C, size, size), centred (odd leftovers go bottom/right)."""
    h, w = images.shape[-2:]
    top, left = (size - h) // 2, (size - w) // 2
    return F.pad(images, (left, size - w - left, top, size - h - top)).contiguous()


def _resize_uint8(images: torch.Tensor, size: int = SIZE, chunk_bytes: int = 1 << 23) -> torch.Tensor:
    """Antialiased bilinear resize of uint8 (N, C, H, W) to (N, C, size, size).

    Chunks of ~8 MB of float input stay in cache (about 3x faster here than whole batches).
    """
    n, c, h, w = images.shape
    out = torch.empty((n, c, size, size), dtype=torch.uint8)
    step = max(1, chunk_bytes // (4 * c * h * w))
    for i in range(0, n, step):
        out[i:i + step] = _resize_batch(images[i:i + step], size)
    return out


def _resize_batch(images: torch.Tensor, size: int) -> torch.Tensor:
    x = F.interpolate(images.float(), size=(size, size), mode="bilinear",
                      align_corners=False, antialias=True)
    return x.round_().clamp_(0, 255).to(torch.uint8)


def _labels(values, n: int, where: str) -> torch.Tensor:
    y = torch.as_tensor(np.asarray(values)).reshape(-1)
    if y.numel() != n:
        raise ValueError(f"{where}: {y.numel()} labels for {n} images")
    return y.to(torch.int64).contiguous()


# ----------------------------------------------------------------------------------------------
# MNIST and Fashion-MNIST


def _idx_missing(raw: Path) -> list[str]:
    return [f for f in _IDX_FILES if not (raw / f).is_file()]


def _fashion_from_debian(root: Path) -> bool:
    """Decompress Debian's gzipped Fashion-MNIST into <root>/FashionMNIST/raw/; False if absent."""
    src = Path(FASHION_DEBIAN_DIR)
    if not all((src / f"{f}.gz").is_file() for f in _IDX_FILES):
        return False
    raw = root / "FashionMNIST" / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    for f in _IDX_FILES:
        dest = raw / f
        if dest.is_file():
            continue
        tmp = raw / f"{f}.tmp{os.getpid()}"
        try:
            with gzip.open(src / f"{f}.gz", "rb") as fin, open(tmp, "wb") as fout:
                shutil.copyfileobj(fin, fout, 1 << 20)
            os.replace(tmp, dest)
        finally:
            if tmp.exists():
                tmp.unlink()
    return True


def _load_mnist_like(cls_name: str, spec: str, root: Path, split: str, download: bool) -> ImageData:
    import torchvision.datasets as tvd

    raw = root / cls_name / "raw"
    processed = root / cls_name / "processed"
    legacy = (processed / "training.pt").is_file() and (processed / "test.pt").is_file()
    missing = [] if legacy else _idx_missing(raw)
    if missing and spec == "fashion" and _fashion_from_debian(root):
        missing = []
    if spec == "fashion":
        how = (f"install Debian's package (`apt-get install dataset-fashion-mnist`, which puts the "
               f".gz files in {FASHION_DEBIAN_DIR}, decompressed here automatically), or pass "
               f"--download (torchvision fetches them), or `make data DATA=fashion`")
    else:
        how = (f"run `make data DATA={spec}` or pass --download (torchvision fetches them), or copy "
               f"the standard decompressed IDX files there")
    if missing and not download:
        raise DataMissingError(
            f"{cls_name} not found: expected {', '.join(_IDX_FILES)} in directory {raw} "
            f"(missing: {', '.join(missing)}). To get them: {how}."
        )
    # torchvision reads IDX files as raw bytes, and legacy processed/*.pt files with
    # torch.load(weights_only=True): neither can run code, but a damaged file fails in many ways.
    if legacy:
        where = str(processed / ("training.pt" if split == "train" else "test.pt"))
    else:
        pair = _IDX_FILES[:2] if split == "train" else _IDX_FILES[2:]
        where = " and ".join(str(raw / f) for f in pair)
    try:
        ds = getattr(tvd, cls_name)(str(root), train=(split == "train"), download=download)
        if not (isinstance(ds.data, torch.Tensor) and ds.data.dim() == 3
                and max(ds.data.shape[1:]) <= SIZE):
            raise ValueError("images are not an N x H x W tensor of at most 32 x 32")
        images = _pad_to(ds.data.to(torch.uint8).unsqueeze(1))
        labels = _labels(ds.targets, images.shape[0], str(raw))
    except OSError:
        raise  # unreadable: the OS error names the file
    except Exception as e:
        if missing:
            raise  # a failed download: torchvision's own message
        why = (torch_refusal(e) if isinstance(e, pickle.UnpicklingError)
               else f"{type(e).__name__}: {one_line(e, 100)}".rstrip(": "))
        fix = (f"Delete training.pt and test.pt in {processed} (torchvision's old format) to read the "
               f"IDX files in {raw} instead" if legacy
               else f"To get the real files into {raw}: delete them and {how}")
        raise ValueError(f"{where}: not {cls_name} data in the standard format ({why}). "
                         f"{fix}.") from None
    return ImageData(naming.DATASET_NAMES[spec], images, labels, hflip=naming.FACTS[spec].hflip)


# ----------------------------------------------------------------------------------------------
# CIFAR-10


class _Refused(pickle.UnpicklingError):
    """A name a CIFAR-10 batch never holds, refused before anything uses it."""

    def __init__(self, what: str):
        super().__init__(what)
        self.what = what


def _latin1_bytes(text, encoding="latin1"):
    """Python 3 writes bytes at pickle protocol 2 as _codecs.encode(text, "latin1"); nothing else."""
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise _Refused(f"_codecs.encode({type(text).__name__}, {encoding!r})")
    return text.encode("latin1")


def _empty_bytes(*args):
    """Python 3 writes b"" at pickle protocol 2 as bytes(); nothing else."""
    if args:
        raise _Refused(f"bytes() with {len(args)} argument(s)")
    return b""


def _numpy_globals() -> dict:
    # numpy's own array and scalar rebuilders, taken from what this numpy pickles (their module
    # moved from numpy.core to numpy._core in numpy 2); batches written by either name them so.
    rebuild = {"_reconstruct": np.zeros(1).__reduce__()[0],         # protocols 2 to 4
               "scalar": np.uint8(0).__reduce__()[0],               # a numpy scalar, e.g. a label
               "_frombuffer": np.zeros(1).__reduce_ex__(5)[0]}      # protocol 5
    table = {("numpy", "ndarray"): np.ndarray, ("numpy", "dtype"): np.dtype}
    for pkg in ("numpy.core", "numpy._core"):
        table[(f"{pkg}.multiarray", "_reconstruct")] = rebuild["_reconstruct"]
        table[(f"{pkg}.multiarray", "scalar")] = rebuild["scalar"]
        table[(f"{pkg}.numeric", "_frombuffer")] = rebuild["_frombuffer"]
    return table


# Everything a CIFAR-10 batch pickle may name: the original files (Python 2, numpy 1) name only
# numpy's array rebuilders; batches re-saved by Python 3 add the two bytes helpers above. Any
# other name could be a callable that runs code when unpickled, so it is refused before use.
_CIFAR_GLOBALS = {
    **_numpy_globals(),
    ("_codecs", "encode"): _latin1_bytes,
    ("__builtin__", "bytes"): _empty_bytes,
    ("builtins", "bytes"): _empty_bytes,
}


class _CifarUnpickler(pickle.Unpickler):
    """Unpickles a CIFAR-10 batch; every global the stream names must be in _CIFAR_GLOBALS."""

    def find_class(self, module, name):
        try:
            return _CIFAR_GLOBALS[(module, name)]
        except (KeyError, TypeError):
            raise _Refused(f"{module}.{name}") from None

    def persistent_load(self, pid):
        raise _Refused(f"persistent id {pid!r}")


def _batch_entry(batch: dict, key: str):
    # The original files are read with bytes keys; a batch re-saved from Python 3 has str keys.
    return batch[key.encode()] if key.encode() in batch else batch.get(key)


def _read_cifar_batch(path: Path, root: Path) -> tuple[np.ndarray, np.ndarray]:
    """(uint8 (N, 3072), int64 (N,)) from one batch file; ValueError naming the file otherwise."""
    def bad(why: str) -> ValueError:
        return ValueError(
            f"{path}: not a CIFAR-10 batch: {why}. To get the real one: delete it and run `make data "
            f"DATA=cifar10` or pass --download, or unpack the standard python-version archive "
            f"(cifar-10-python.tar.gz) into {root}.")

    try:
        with open(path, "rb") as fh:
            # The original files are Python 2 pickles: their str keys and pixel bytes stay bytes.
            batch = _CifarUnpickler(fh, encoding="bytes").load()
    except _Refused as e:
        raise bad(f"its pickle asks to load {one_line(e.what, 100)!r}, which a batch never holds "
                  f"(refused, nothing in the file was run)") from None
    except Exception as e:  # truncated or not a pickle at all
        raise bad(f"it does not unpickle ({type(e).__name__}: {one_line(e, 100)})") from None
    if not isinstance(batch, dict):
        raise bad(f"it holds a {type(batch).__name__}, not a dict")
    x, y = _batch_entry(batch, "data"), _batch_entry(batch, "labels")
    if x is None or y is None:
        keys = one_line(", ".join(repr(k) for k in list(batch)[:8]), 100)
        raise bad(f"it has no b'data' and b'labels' entries (keys: {keys or 'none'})")
    if (not isinstance(x, np.ndarray) or x.dtype != np.uint8 or x.ndim != 2
            or x.shape[1] != 3 * SIZE * SIZE):
        got = f"{x.dtype} array of shape {x.shape}" if isinstance(x, np.ndarray) else type(x).__name__
        raise bad(f"b'data' must be a uint8 array of shape (N, 3072), got a {got}")
    try:
        y = np.asarray(y)
    except Exception:  # ragged or otherwise not an array
        y = None
    if y is None or y.ndim != 1 or not (y.dtype.kind in "iu" or y.size == 0):
        got = f"{y.dtype} of shape {y.shape}" if y is not None else "not an array"
        raise bad(f"b'labels' must be a list of N integers, got {got}")
    if y.shape[0] != x.shape[0]:
        raise bad(f"{y.shape[0]} labels for {x.shape[0]} images")
    return x, y.astype(np.int64)


def _load_cifar10(root: Path, split: str, download: bool) -> ImageData:
    folder = root / CIFAR_DIR
    files = CIFAR_TRAIN if split == "train" else CIFAR_TEST
    missing = [f for f in CIFAR_TRAIN + CIFAR_TEST if not (folder / f).is_file()]
    if missing and download:
        _fetch("cifar10", root)
    missing = [f for f in files if not (folder / f).is_file()]
    if missing:
        raise DataMissingError(
            f"CIFAR-10 not found: expected {', '.join(CIFAR_TRAIN + CIFAR_TEST)} in directory {folder} "
            f"(missing: {', '.join(missing)}). To get them: run `make data DATA=cifar10` or pass "
            f"--download (torchvision fetches and unpacks cifar-10-python.tar.gz), or unpack the "
            f"standard python-version archive into {root}."
        )
    data, labels = [], []
    for f in files:
        x, y = _read_cifar_batch(folder / f, root)
        data.append(x)
        labels.append(y)
    x = np.concatenate(data) if len(data) > 1 else data[0]
    images = torch.from_numpy(np.ascontiguousarray(x)).reshape(-1, 3, SIZE, SIZE)
    return ImageData("CIFAR10", images, torch.from_numpy(np.concatenate(labels)),
                     hflip=naming.FACTS["cifar10"].hflip)


# ----------------------------------------------------------------------------------------------
# CelebA


def _celeba_missing_error(folder: Path, missing: list[str]) -> DataMissingError:
    return DataMissingError(
        f"CelebA not found: expected {CELEBA_PARTITION} and {CELEBA_IMAGES}/ (the 178x218 aligned "
        f"JPEGs, e.g. {CELEBA_IMAGES}/000001.jpg) in directory {folder} (missing: {', '.join(missing)}). "
        f"To get them: download 'Align&Cropped Images' (img_align_celeba.zip) and the evaluation "
        f"partition list_eval_partition.txt from the CelebA site "
        f"(https://mmlab.ie.cuhk.edu.hk/projects/CelebA.html) and unzip into {folder}/; or pass "
        f"--download (torchvision fetches them from Google Drive), or `make data DATA=celeba`."
    )


def _read_partition(path: Path, split: str) -> list[str]:
    want = CELEBA_SPLITS[split]
    names = []
    with open(path, "r") as fh:
        for lineno, line in enumerate(fh, 1):
            parts = line.split()
            if not parts:
                continue
            if len(parts) != 2 or parts[1] not in ("0", "1", "2"):
                raise ValueError(f"{path}:{lineno}: expected '<file> <0|1|2>', got {line.strip()!r}")
            if int(parts[1]) == want:
                names.append(parts[0])
    return names


def _load_celeba(root: Path, split: str, download: bool) -> ImageData:
    folder = root / CELEBA_DIR
    part = folder / CELEBA_PARTITION
    imgdir = folder / CELEBA_IMAGES
    if not part.is_file() and download:
        _fetch("celeba", root)
    if not part.is_file():
        missing = [CELEBA_PARTITION] + ([] if imgdir.is_dir() else [CELEBA_IMAGES + "/"])
        raise _celeba_missing_error(folder, missing)

    st = part.stat()
    stamp = {"version": _CELEBA_CACHE_VERSION, "split": split, "size": SIZE,
             "partition_size": int(st.st_size), "partition_mtime_ns": int(st.st_mtime_ns)}
    cache = folder / f"cache_{split}_{SIZE}x{SIZE}.pt"
    images = _read_celeba_cache(cache, stamp)
    if images is None:
        if not imgdir.is_dir():
            raise _celeba_missing_error(folder, [CELEBA_IMAGES + "/"])
        names = _read_partition(part, split)
        images = _decode_celeba(imgdir, names, split)
        _write_celeba_cache(cache, stamp, images)
    return ImageData("CelebA", images, None, hflip=naming.FACTS["celeba"].hflip)


def _read_celeba_cache(cache: Path, stamp: dict) -> torch.Tensor | None:
    if not cache.is_file():
        return None
    try:
        # weights_only: tensors and plain containers only, so a planted file cannot run code.
        blob = torch.load(cache, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:  # refused an object this pipeline never writes there
        warnings.warn(f"{cache}: not a CelebA cache of this pipeline, ignored without loading it "
                      f"({torch_refusal(e)}); it is rebuilt from the JPEGs")
        return None
    except Exception:  # stale or damaged: rebuilt from the JPEGs
        return None
    if not isinstance(blob, dict) or any(blob.get(k) != v for k, v in stamp.items()):
        return None
    images = blob.get("images")
    if not isinstance(images, torch.Tensor) or images.dtype != torch.uint8 or images.dim() != 4:
        return None
    return images.contiguous()


def _write_celeba_cache(cache: Path, stamp: dict, images: torch.Tensor) -> None:
    tmp = cache.with_name(f"{cache.name}.tmp{os.getpid()}")
    try:
        torch.save({**stamp, "images": images}, tmp)
        os.replace(tmp, cache)
    except OSError as e:  # a read-only data directory still loads, just without a cache
        warnings.warn(f"could not write CelebA cache {cache}: {e}")
    finally:
        if tmp.exists():
            tmp.unlink()


def _decode_celeba(imgdir: Path, names: list[str], split: str) -> torch.Tensor:
    """Read, decode, crop and resize JPEGs in batches; file reading runs one batch ahead."""
    from tqdm import tqdm

    left, top, right, bottom = CELEBA_BOX
    n = len(names)
    out = torch.empty((n, 3, SIZE, SIZE), dtype=torch.uint8)
    starts = list(range(0, n, _CELEBA_BATCH))
    queue: Queue = Queue(maxsize=2)
    stop = threading.Event()

    def put(item) -> bool:
        while not stop.is_set():
            try:
                queue.put(item, timeout=0.2)
                return True
            except Full:
                pass
        return False

    def reader():
        try:
            for s in starts:
                batch = []
                for name in names[s:s + _CELEBA_BATCH]:
                    with open(imgdir / name, "rb") as fh:
                        batch.append(torch.frombuffer(bytearray(fh.read()), dtype=torch.uint8))
                if not put((s, batch)):
                    return
        except BaseException as e:  # hand the error to the consumer
            put((None, e))

    thread = threading.Thread(target=reader, daemon=True)
    thread.start()
    interval = 0.5 if sys.stderr.isatty() else 15.0  # fewer lines in batch-job logs
    try:
        with tqdm(total=n, desc=f"CelebA {split} (once; cached)", unit="img",
                  mininterval=interval) as bar:
            for _ in starts:
                s, batch = queue.get()
                if s is None:
                    if isinstance(batch, FileNotFoundError):
                        raise DataMissingError(
                            f"CelebA image missing: {batch.filename} (listed in {CELEBA_PARTITION}; "
                            f"expected under {imgdir})") from batch
                    raise batch
                decoded = _decode_batch(batch, names[s:s + len(batch)], imgdir)
                for j, img in enumerate(decoded):
                    if img.shape[1] < bottom or img.shape[2] < right:
                        raise ValueError(f"{imgdir / names[s + j]}: {img.shape[2]}x{img.shape[1]} image "
                                         f"is smaller than the crop box {CELEBA_BOX} (expected 178x218)")
                crops = torch.stack([img[:, top:bottom, left:right] for img in decoded])
                out[s:s + crops.shape[0]] = _resize_uint8(crops, SIZE)
                bar.update(crops.shape[0])
    finally:
        stop.set()
        thread.join()
    return out


def _decode_batch(batch: list[torch.Tensor], names: list[str], imgdir: Path) -> list[torch.Tensor]:
    """decode_jpeg on a list of encoded files (RGB); a failure is retried per file to name it."""
    from torchvision.io import ImageReadMode, decode_jpeg

    with warnings.catch_warnings():  # torchvision 0.29 marks its image codecs deprecated
        warnings.filterwarnings("ignore", category=DeprecationWarning, module="torchvision")
        try:
            return decode_jpeg(batch, mode=ImageReadMode.RGB)
        except RuntimeError:
            for name, data in zip(names, batch):
                try:
                    decode_jpeg(data, mode=ImageReadMode.RGB)
                except RuntimeError as e:
                    raise ValueError(f"{imgdir / name}: not a decodable JPEG ({e})") from e
            raise


# ----------------------------------------------------------------------------------------------
# npz


def _npz_images(x: np.ndarray, path: Path, key: str) -> torch.Tensor:
    """uint8 (N, H, W[, C]) -> (N, C, 32, 32): zero-pad when both sides <= 32, else resize.

    Larger images are resized straight to 32x32, so non-square inputs are stretched to square.
    """
    if x.dtype != np.uint8:
        raise ValueError(f"{path}: array '{key}' has dtype {x.dtype}; expected uint8 pixel values "
                         f"0..255 (convert with e.g. (x * 255).round().astype(np.uint8))")
    if x.ndim == 3:
        x = x[:, None]
    elif x.ndim == 4:
        if x.shape[3] not in (1, 3):
            raise ValueError(f"{path}: array '{key}' has shape {x.shape}; expected channels last, "
                             f"N x H x W x C with C in (1, 3)")
        x = x.transpose(0, 3, 1, 2)
    else:
        raise ValueError(f"{path}: array '{key}' has shape {x.shape} (ndim {x.ndim}); expected "
                         f"N x H x W or N x H x W x C with C in (1, 3)")
    images = torch.from_numpy(np.ascontiguousarray(x))
    h, w = images.shape[-2:]
    if h <= SIZE and w <= SIZE:
        return _pad_to(images)
    return _resize_uint8(images)


def _npz_member_dtype(z, key: str) -> np.dtype | None:
    """The dtype in the header of array `key` (nothing else is read), or None if unreadable."""
    try:
        with z.zip.open(f"{key}.npy") as fh:
            major, _ = np.lib.format.read_magic(fh)
            fmt = np.lib.format
            read = fmt.read_array_header_1_0 if major == 1 else fmt.read_array_header_2_0
            return np.dtype(read(fh)[2])
    except Exception:
        return None


def _npz_array(z, path: Path, key: str) -> np.ndarray:
    try:
        return z[key]
    except Exception as e:
        dtype = _npz_member_dtype(z, key)
        if dtype is not None and dtype.hasobject:
            why = (f"it holds Python objects (dtype {dtype}), which are never unpickled because that "
                   f"could run code")
        else:
            why = f"it cannot be read ({type(e).__name__}: {one_line(e, 100)})"
        want = ("a numeric uint8 array of images" if key.startswith("x")
                else "a numeric array of integer labels")
        raise ValueError(f"{path}: array '{key}': {why}; it must be {want}, e.g. "
                         f"np.savez(path, x=images.astype(np.uint8), y=labels)") from None


def _load_npz(path: Path, split: str) -> ImageData:
    if not path.is_file():
        raise DataMissingError(
            f"npz file not found: expected {path.name} in directory {path.parent.resolve()}; it must "
            f"hold a uint8 array 'x' (N x H x W or N x H x W x C), optionally 'y', 'x_test', 'y_test'.")
    xkey, ykey = ("x", "y") if split == "train" else ("x_test", "y_test")
    fix = "write it with np.savez(path, x=images, y=labels)"
    with open(path, "rb") as fh:
        head = fh.read(6)
    if head == b"\x93NUMPY":
        raise ValueError(f"{path}: a single .npy array, not an .npz archive; {fix}")
    if not head.startswith(b"PK"):  # np.load would take it for a pickle and refuse it unclearly
        raise ValueError(f"{path}: not a NumPy .npz archive (not a zip file); {fix}")
    try:
        # allow_pickle=False: an object array is a pickle, and unpickling it could run code.
        z = np.load(path, allow_pickle=False)
    except Exception as e:  # a damaged zip
        raise ValueError(f"{path}: not a NumPy .npz archive ({type(e).__name__}: "
                         f"{one_line(e, 100)}); {fix}") from None
    if not isinstance(z, np.lib.npyio.NpzFile):
        raise ValueError(f"{path}: not a NumPy .npz archive; {fix}")
    with z:
        if xkey not in z.files:
            if split == "test":
                raise DataMissingError(
                    f"{path} has no array 'x_test', so it has no test split (arrays present: "
                    f"{', '.join(z.files)}); add 'x_test' (and optionally 'y_test') to the file.")
            raise ValueError(f"{path}: no array 'x' (arrays present: {', '.join(z.files)}); expected a "
                             f"uint8 array 'x' of N x H x W or N x H x W x C images")
        images = _npz_images(_npz_array(z, path, xkey), path, xkey)
        labels = (_labels(_npz_array(z, path, ykey), images.shape[0], f"{path} '{ykey}'")
                  if ykey in z.files else None)
    return ImageData("npz", images, labels, hflip=False)

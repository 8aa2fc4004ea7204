"""CIFAR-10 from the standard cifar-10-batches-py/ pickles, read by an unpickler that may build
nothing but numpy arrays, so that a planted batch cannot run code."""
from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import torch

from memo.config import naming
from memo.data.images import SIZE, DataMissingError, ImageData
from memo.fileio import one_line


CIFAR_DIR = "cifar-10-batches-py"


CIFAR_TRAIN = tuple(f"data_batch_{i}" for i in range(1, 6))


CIFAR_TEST = ("test_batch",)


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


def load_cifar10(root: Path, split: str, download: bool) -> ImageData:
    folder = root / CIFAR_DIR
    files = CIFAR_TRAIN if split == "train" else CIFAR_TEST
    missing = [f for f in CIFAR_TRAIN + CIFAR_TEST if not (folder / f).is_file()]
    if missing and download:
        fetch(root)
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


def fetch(root: Path) -> None:
    """CIFAR-10 into root by torchvision's download (network access)."""
    import torchvision.datasets as tvd   # torchvision deferred: only a download needs it
    root.mkdir(parents=True, exist_ok=True)
    tvd.CIFAR10(str(root), train=True, download=True)

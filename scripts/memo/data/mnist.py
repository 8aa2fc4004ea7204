"""MNIST and Fashion-MNIST: the decompressed IDX files that torchvision's classes read from
<root>/<Class>/raw/ (Fashion-MNIST also from Debian's dataset-fashion-mnist), padded 28 -> 32."""
from __future__ import annotations

import gzip
import os
import pickle
import shutil
from pathlib import Path

import torch

from memo.config import naming
from memo.data.images import SIZE, DataMissingError, ImageData, checked_labels, pad_to
from memo.fileio import one_line, torch_refusal


FASHION_DEBIAN_DIR = "/usr/share/datasets/fashion-mnist"


# IDX files as torchvision's MNIST-style classes expect them in <root>/<Class>/raw/.
IDX_FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)


def idx_missing(raw: Path) -> list[str]:
    return [f for f in IDX_FILES if not (raw / f).is_file()]


def fashion_from_debian(root: Path) -> bool:
    """Decompress Debian's gzipped Fashion-MNIST into <root>/FashionMNIST/raw/; False if absent."""
    src = Path(FASHION_DEBIAN_DIR)
    if not all((src / f"{f}.gz").is_file() for f in IDX_FILES):
        return False
    raw = root / "FashionMNIST" / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    for f in IDX_FILES:
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


def load_mnist_like(cls_name: str, spec: str, root: Path, split: str, download: bool) -> ImageData:
    import torchvision.datasets as tvd

    raw = root / cls_name / "raw"
    processed = root / cls_name / "processed"
    legacy = (processed / "training.pt").is_file() and (processed / "test.pt").is_file()
    missing = [] if legacy else idx_missing(raw)
    if missing and spec == "fashion" and fashion_from_debian(root):
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
            f"{cls_name} not found: expected {', '.join(IDX_FILES)} in directory {raw} "
            f"(missing: {', '.join(missing)}). To get them: {how}."
        )
    # torchvision reads IDX files as raw bytes, and legacy processed/*.pt files with
    # torch.load(weights_only=True): neither can run code, but a damaged file fails in many ways.
    if legacy:
        where = str(processed / ("training.pt" if split == "train" else "test.pt"))
    else:
        pair = IDX_FILES[:2] if split == "train" else IDX_FILES[2:]
        where = " and ".join(str(raw / f) for f in pair)
    try:
        ds = getattr(tvd, cls_name)(str(root), train=(split == "train"), download=download)
        if not (isinstance(ds.data, torch.Tensor) and ds.data.dim() == 3
                and max(ds.data.shape[1:]) <= SIZE):
            raise ValueError("images are not an N x H x W tensor of at most 32 x 32")
        images = pad_to(ds.data.to(torch.uint8).unsqueeze(1))
        labels = checked_labels(ds.targets, images.shape[0], str(raw))
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


def fetch(kind: str, root: Path) -> None:
    """MNIST (bmnist) or Fashion-MNIST (fashion, planted) into root: Debian's files when
    installed, else torchvision's download (network access)."""
    import torchvision.datasets as tvd   # torchvision deferred: only a download needs it
    if kind == "bmnist":
        tvd.MNIST(str(root), train=True, download=True)
    elif idx_missing(root / "FashionMNIST" / "raw") and not fashion_from_debian(root):
        tvd.FashionMNIST(str(root), train=True, download=True)

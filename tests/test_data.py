"""Loaders read tiny files written in the real on-disk formats (all offline)."""
from __future__ import annotations

import gzip
import os
import pickle
import struct

import numpy as np
import pytest
import torch

from memo import data
from memo.data import celeba, mnist
from memo.config import naming

IDX_NAMES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


# ---------------------------------------------------------------------------------------------
# writers of the real formats


def idx_bytes(arr: np.ndarray) -> bytes:
    """IDX file: 0x0000, type code 0x08 (ubyte), ndim, big-endian int32 dims, raw data."""
    arr = np.ascontiguousarray(arr, dtype=np.uint8)
    head = struct.pack(">HBB", 0, 0x08, arr.ndim) + struct.pack(f">{arr.ndim}i", *arr.shape)
    return head + arr.tobytes()


def mnist_arrays(n: int, seed: int):
    rng = np.random.default_rng(seed)
    x = rng.integers(1, 256, size=(n, 28, 28), dtype=np.uint8)  # no zeros: border check is exact
    y = rng.integers(0, 10, size=n, dtype=np.uint8)
    return x, y


def write_idx_dir(raw, sets, gz=False):
    raw.mkdir(parents=True, exist_ok=True)
    for split, (x, y) in sets.items():
        for name, arr in zip(IDX_NAMES[split], (x, y)):
            blob = idx_bytes(arr)
            if gz:
                (raw / f"{name}.gz").write_bytes(gzip.compress(blob))
            else:
                (raw / name).write_bytes(blob)


def write_cifar(root, n_per_batch=(3, 2, 4, 1, 2), n_test=3, seed=0):
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    out = {}
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    for name, n in zip(names, list(n_per_batch) + [n_test]):
        x = rng.integers(0, 256, size=(n, 3072), dtype=np.uint8)
        y = [int(v) for v in rng.integers(0, 10, size=n)]
        d = {b"batch_label": name.encode(), b"labels": y, b"data": x,
             b"filenames": [f"{name}_{i}.png".encode() for i in range(n)]}
        with open(folder / name, "wb") as fh:
            pickle.dump(d, fh, protocol=2)
        out[name] = (x, y)
    return out


INSIDE = (200, 40, 90)
OUTSIDE = (10, 230, 20)


def celeba_jpeg(path, inside=INSIDE, outside=OUTSIDE):
    """178x218 JPEG whose crop box is one colour and everything outside another."""
    from PIL import Image

    a = np.empty((218, 178, 3), dtype=np.uint8)
    a[:] = outside
    left, top, right, bottom = 15, 40, 163, 188  # the paper (written out: an off-by-one fails)
    a[top:bottom, left:right] = inside
    Image.fromarray(a).save(path, quality=100, subsampling=0)  # 4:4:4: no chroma bleed


def write_celeba(root, parts):
    folder = root / "celeba"
    img = folder / "img_align_celeba"
    img.mkdir(parents=True)
    lines = []
    for i, p in enumerate(parts):
        name = f"{i + 1:06d}.jpg"
        celeba_jpeg(img / name, inside=(INSIDE if p != 1 else (60, 60, 200)))
        lines.append(f"{name} {p}\n")
    (folder / "list_eval_partition.txt").write_text("".join(lines))
    return folder


# ---------------------------------------------------------------------------------------------
# names and specs


def test_dataset_name_and_unknown_spec():
    assert naming.dataset_name("bmnist") == "BinarizedMNIST"
    assert naming.dataset_name("fashion") == "FashionMNIST"
    assert naming.dataset_name("cifar10") == "CIFAR10"
    assert naming.dataset_name("celeba") == "CelebA"
    assert naming.dataset_name("npz:/x/y.npz") == "npz"
    for bad in ("mnist", "npz:", "CIFAR10"):
        with pytest.raises(ValueError) as e:
            naming.dataset_name(bad)
        if bad != "npz:":
            for choice in ("bmnist", "fashion", "cifar10", "celeba", "npz:PATH"):
                assert choice in str(e.value)
    with pytest.raises(ValueError, match="valid choices"):
        data.load("svhn")


def test_bad_split(tmp_path):
    with pytest.raises(ValueError, match="valid"):
        data.load("cifar10", split="valid", root=tmp_path)


# ---------------------------------------------------------------------------------------------
# MNIST / Fashion-MNIST


@pytest.mark.parametrize("spec,cls", [("bmnist", "MNIST"), ("fashion", "FashionMNIST")])
def test_mnist_like_idx(tmp_path, monkeypatch, spec, cls):
    monkeypatch.setattr(mnist, "FASHION_DEBIAN_DIR", str(tmp_path / "no-debian"))
    xtr, ytr = mnist_arrays(7, 1)
    xte, yte = mnist_arrays(4, 2)
    write_idx_dir(tmp_path / cls / "raw", {"train": (xtr, ytr), "test": (xte, yte)})
    for split, x, y in (("train", xtr, ytr), ("test", xte, yte)):
        d = data.load(spec, split=split, root=tmp_path)
        assert d.name == naming.DATASET_NAMES[spec]
        assert d.images.shape == (len(x), 1, 32, 32) and d.images.dtype == torch.uint8
        assert d.images.is_contiguous() and d.images.device.type == "cpu"
        assert d.n == len(x) and d.hflip is False
        img = d.images[:, 0]
        assert (img[:, :2] == 0).all() and (img[:, -2:] == 0).all()
        assert (img[:, :, :2] == 0).all() and (img[:, :, -2:] == 0).all()
        assert np.array_equal(img[:, 2:30, 2:30].numpy(), x)
        assert d.labels.dtype == torch.int64 and d.labels.tolist() == y.tolist()


def test_data_root_env(tmp_path, monkeypatch):
    xtr, ytr = mnist_arrays(3, 5)
    write_idx_dir(tmp_path / "MNIST" / "raw", {"train": (xtr, ytr), "test": (xtr, ytr)})
    monkeypatch.setenv("DATA_ROOT", str(tmp_path))
    assert data.load("bmnist").n == 3


def test_fashion_from_debian_gz(tmp_path, monkeypatch):
    deb = tmp_path / "debian"
    xtr, ytr = mnist_arrays(5, 3)
    xte, yte = mnist_arrays(2, 4)
    write_idx_dir(deb, {"train": (xtr, ytr), "test": (xte, yte)}, gz=True)
    monkeypatch.setattr(mnist, "FASHION_DEBIAN_DIR", str(deb))
    root = tmp_path / "root"
    d = data.load("fashion", split="train", root=root)
    raw = root / "FashionMNIST" / "raw"
    assert sorted(os.listdir(raw)) == sorted(n for pair in IDX_NAMES.values() for n in pair)
    assert d.images.shape == (5, 1, 32, 32)
    assert np.array_equal(d.images[:, 0, 2:30, 2:30].numpy(), xtr)
    assert d.labels.tolist() == ytr.tolist()
    t = data.load("fashion", split="test", root=root)
    assert np.array_equal(t.images[:, 0, 2:30, 2:30].numpy(), xte)


def test_mnist_missing(tmp_path, monkeypatch):
    monkeypatch.setattr(mnist, "FASHION_DEBIAN_DIR", str(tmp_path / "no-debian"))
    with pytest.raises(data.DataMissingError) as e:
        data.load("bmnist", root=tmp_path)
    msg = str(e.value)
    assert str(tmp_path / "MNIST" / "raw") in msg
    assert "train-images-idx3-ubyte" in msg and "t10k-labels-idx1-ubyte" in msg
    assert "make data DATA=bmnist" in msg and "--download" in msg
    with pytest.raises(data.DataMissingError) as e:
        data.load("fashion", root=tmp_path)
    assert str(tmp_path / "FashionMNIST" / "raw") in str(e.value)
    assert "apt-get install dataset-fashion-mnist" in str(e.value)


# ---------------------------------------------------------------------------------------------
# CIFAR-10


def test_cifar10_batches(tmp_path):
    written = write_cifar(tmp_path)
    d = data.load("cifar10", split="train", root=tmp_path)
    x = np.concatenate([written[f"data_batch_{i}"][0] for i in range(1, 6)])
    y = sum((written[f"data_batch_{i}"][1] for i in range(1, 6)), [])
    assert d.name == "CIFAR10" and d.hflip is True
    assert d.images.shape == (12, 3, 32, 32) and d.images.dtype == torch.uint8
    assert d.images.is_contiguous()
    assert d.labels.dtype == torch.int64 and d.labels.tolist() == y
    # pixel (channel c, row r, column k) of image i sits at flat index c*1024 + r*32 + k
    for i, c, r, k in ((0, 0, 0, 0), (3, 1, 5, 7), (11, 2, 31, 30), (6, 2, 17, 0)):
        assert int(d.images[i, c, r, k]) == int(x[i, c * 1024 + r * 32 + k])
    assert np.array_equal(d.images.reshape(12, -1).numpy(), x)
    t = data.load("cifar10", split="test", root=tmp_path)
    assert t.n == 3 and np.array_equal(t.images.reshape(3, -1).numpy(), written["test_batch"][0])
    assert t.labels.tolist() == written["test_batch"][1]


def test_cifar10_missing(tmp_path):
    with pytest.raises(data.DataMissingError) as e:
        data.load("cifar10", root=tmp_path)
    msg = str(e.value)
    assert str(tmp_path / "cifar-10-batches-py") in msg
    assert "data_batch_1" in msg and "test_batch" in msg and "make data DATA=cifar10" in msg


# ---------------------------------------------------------------------------------------------
# CelebA


def test_celeba_splits_crop_and_cache(tmp_path):
    parts = [0, 0, 1, 2, 0, 1, 2, 2]
    folder = write_celeba(tmp_path, parts)
    d = data.load("celeba", split="train", root=tmp_path)
    assert d.name == "CelebA" and d.hflip is True and d.labels is None
    assert d.images.shape == (3, 3, 32, 32) and d.images.dtype == torch.uint8
    # only the crop box's colour survives crop + resize (JPEG tolerance)
    diff = (d.images.to(torch.int16) - torch.tensor(INSIDE, dtype=torch.int16)[None, :, None, None])
    assert diff.abs().max() <= 8  # measured 1; a box shifted by one pixel gives >= 28
    v = data.load("celeba", split="valid", root=tmp_path)
    assert v.n == 2
    assert (v.images.float().mean(dim=(0, 2, 3)) - torch.tensor([60.0, 60.0, 200.0])).abs().max() < 6
    assert data.load("celeba", split="test", root=tmp_path).n == 3

    cache = folder / "cache_train_32x32.pt"
    assert cache.is_file()
    # reused: the JPEGs are no longer needed once cached
    for f in (folder / "img_align_celeba").iterdir():
        f.unlink()
    again = data.load("celeba", split="train", root=tmp_path)
    assert torch.equal(again.images, d.images)
    # invalidated when the partition file changes
    (folder / "list_eval_partition.txt").write_text("000001.jpg 0\n")
    celeba_jpeg(folder / "img_align_celeba" / "000001.jpg", inside=(0, 0, 0), outside=(255, 255, 255))
    fresh = data.load("celeba", split="train", root=tmp_path)
    assert fresh.n == 1 and int(fresh.images.max()) <= 12


def test_celeba_missing(tmp_path):
    with pytest.raises(data.DataMissingError) as e:
        data.load("celeba", split="valid", root=tmp_path)
    msg = str(e.value)
    assert str(tmp_path / "celeba") in msg
    assert "list_eval_partition.txt" in msg and "img_align_celeba" in msg and "--download" in msg


# ---------------------------------------------------------------------------------------------
# npz


def test_npz_pad_and_labels(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.integers(1, 256, size=(6, 28, 28), dtype=np.uint8)
    y = np.arange(6)
    xt = rng.integers(1, 256, size=(2, 28, 28, 1), dtype=np.uint8)  # channels last, as x's 1
    p = tmp_path / "mine.npz"
    np.savez(p, x=x, y=y, x_test=xt, y_test=np.array([4, 5]))
    d = data.load(f"npz:{p}", root=tmp_path / "unused")
    assert d.name == "npz" and d.hflip is False
    assert d.images.shape == (6, 1, 32, 32) and d.images.dtype == torch.uint8
    assert np.array_equal(d.images[:, 0, 2:30, 2:30].numpy(), x)
    assert d.images[:, :, :2].sum() == 0 and d.images[:, :, :, -2:].sum() == 0
    assert d.labels.dtype == torch.int64 and d.labels.tolist() == list(range(6))
    t = data.load(f"npz:{p}", split="test")
    assert t.images.shape == (2, 1, 32, 32)
    assert np.array_equal(t.images[:, :, 2:30, 2:30].permute(0, 2, 3, 1).numpy(), xt)
    assert t.labels.tolist() == [4, 5]


def test_npz_resize_and_odd_sizes(tmp_path):
    x = np.zeros((3, 64, 64, 3), dtype=np.uint8)
    x[:, :32] = (100, 150, 250)  # top half one colour, bottom half black
    p = tmp_path / "big.npz"
    np.savez(p, x=x)
    d = data.load(f"npz:{p}")
    assert d.images.shape == (3, 3, 32, 32) and d.labels is None
    assert d.images[:, :, :15].tolist() == torch.tensor([100, 150, 250], dtype=torch.uint8)[
        None, :, None, None].expand(3, 3, 15, 32).tolist()
    assert d.images[:, :, 17:].sum() == 0
    q = tmp_path / "small.npz"
    np.savez(q, x=np.full((2, 5, 30, 1), 9, dtype=np.uint8))
    s = data.load(f"npz:{q}")
    assert s.images.shape == (2, 1, 32, 32) and int(s.images.sum()) == 2 * 5 * 30 * 9
    assert (s.images[:, 0, 13:18, 1:31] == 9).all()


def test_npz_errors(tmp_path):
    p = tmp_path / "floaty.npz"
    np.savez(p, x=np.zeros((2, 28, 28), dtype=np.float32))
    with pytest.raises(ValueError) as e:
        data.load(f"npz:{p}")
    assert str(p) in str(e.value) and "float32" in str(e.value) and "uint8" in str(e.value)
    with pytest.raises(data.DataMissingError, match="x_test"):
        data.load(f"npz:{p}", split="test")
    q = tmp_path / "flat.npz"
    np.savez(q, x=np.zeros((2, 784), dtype=np.uint8))
    with pytest.raises(ValueError, match="N x H x W"):
        data.load(f"npz:{q}")
    r = tmp_path / "chw.npz"
    np.savez(r, x=np.zeros((2, 3, 8, 8), dtype=np.uint8))
    with pytest.raises(ValueError, match="channels last"):
        data.load(f"npz:{r}")
    with pytest.raises(data.DataMissingError) as e:
        data.load(f"npz:{tmp_path / 'nope.npz'}")
    assert "nope.npz" in str(e.value) and str(tmp_path) in str(e.value)


def test_celeba_bad_images_named(tmp_path):
    folder = write_celeba(tmp_path, [0, 0, 0])
    (folder / "img_align_celeba" / "000002.jpg").unlink()
    with pytest.raises(data.DataMissingError, match="000002.jpg"):
        data.load("celeba", root=tmp_path)
    (folder / "img_align_celeba" / "000002.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    with pytest.raises(ValueError, match="000002.jpg"):
        data.load("celeba", root=tmp_path)
    assert not (folder / "cache_train_32x32.pt").exists()


def test_celeba_order_across_batches(tmp_path, monkeypatch):
    monkeypatch.setattr(celeba, "_CELEBA_BATCH", 2)
    folder = tmp_path / "celeba"
    (folder / "img_align_celeba").mkdir(parents=True)
    greys = [20, 60, 100, 140, 180]
    for i, g in enumerate(greys):
        celeba_jpeg(folder / "img_align_celeba" / f"{i + 1:06d}.jpg", inside=(g, g, g), outside=(0, 0, 0))
    (folder / "list_eval_partition.txt").write_text("".join(f"{i + 1:06d}.jpg 2\n" for i in range(5)))
    d = data.load("celeba", split="test", root=tmp_path)
    means = d.images.float().mean(dim=(1, 2, 3))
    assert (means - torch.tensor(greys, dtype=torch.float32)).abs().max() < 3

"""No data file the loaders read can run code, and a bad one gives one line naming it.

Each planted file carries a working payload: loading the same bytes the unsafe way (plain pickle,
torch.load without weights_only, np.load with allow_pickle) creates a marker file, which the
controls check first, so no test here can pass because its payload was broken.
"""
from __future__ import annotations

import builtins
import os
import pickle
import pickletools
import shlex
import struct
import subprocess
import sys

import numpy as np
import pytest
import torch

from memo import data
from memo.data import cifar, mnist
from test_data import mnist_arrays, write_celeba, write_cifar


# ---------------------------------------------------------------------------------------------
# payloads: each creates `marker` when unpickled


class Shell:
    """os.system("touch MARKER")."""

    def __init__(self, marker):
        self.cmd = f"touch {shlex.quote(str(marker))}"

    def __reduce__(self):
        return os.system, (self.cmd,)


class Exec:
    """builtins.exec of Python that writes MARKER."""

    def __init__(self, marker):
        self.code = f"open({str(marker)!r}, 'w').close()"

    def __reduce__(self):
        return builtins.exec, (self.code,)


class Stealthy:
    """Writes MARKER, then is a valid uint8 (n, 3072) pixel array: the batch loads as usual."""

    def __init__(self, marker, n):
        self.expr = (f"open({str(marker)!r}, 'w').close() or "
                     f"__import__('numpy').zeros(({n}, 3072), 'uint8')")

    def __reduce__(self):
        return builtins.eval, (self.expr,)


class NumpyLoad:
    """numpy.load(PATH, allow_pickle=True) of a second file holding a payload: a numpy callable
    that is not an array rebuilder is refused too."""

    def __init__(self, inner):
        self.inner = str(inner)

    def __reduce__(self):
        return np.load, (self.inner, None, True)


UNSAFE_LOADERS = {
    "pickle": "import pickle, sys; pickle.load(open(sys.argv[1], 'rb'), encoding='bytes')",
    "torch": "import sys, torch; torch.load(sys.argv[1], weights_only=False)",
    "numpy": "import sys, numpy as np; z = np.load(sys.argv[1], allow_pickle=True); "
             "[z[k] for k in z.files] if hasattr(z, 'files') else z",
}


def unsafe_load_makes_marker(how, path, marker) -> bool:
    """Control: load `path` the unsafe way in a child process; True if the marker appeared."""
    assert not marker.exists()
    subprocess.run([sys.executable, "-c", UNSAFE_LOADERS[how], str(path)], cwd=path.parent,
                   capture_output=True, timeout=120)
    made = marker.exists()
    if made:
        marker.unlink()
    return made


def one_line_naming(msg: str, path) -> None:
    assert "\n" not in msg and "\r" not in msg, msg
    assert str(path) in msg, msg


def batch_dict(n, seed=0, data=None):
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 256, size=(n, 3072), dtype=np.uint8) if data is None else data
    return {b"batch_label": b"planted", b"labels": [int(v) for v in rng.integers(0, 10, n)],
            b"data": x, b"filenames": [f"f{i}.png".encode() for i in range(n)]}


# ---------------------------------------------------------------------------------------------
# the real CIFAR-10 format still loads


def py2_batch_pickle(x: np.ndarray, labels, batch_label: bytes, filenames) -> bytes:
    """A batch as Python 2's cPickle wrote the original files (protocol 2, numpy 1.x): str as
    SHORT_BINSTRING/BINSTRING, the array via numpy.core.multiarray._reconstruct and BUILD."""
    def s(b: bytes) -> bytes:
        return (b"U" + bytes([len(b)]) + b) if len(b) < 256 else (b"T" + struct.pack("<i", len(b)) + b)

    def i(v: int) -> bytes:
        return b"J" + struct.pack("<i", v)

    def lst(items) -> bytes:
        return b"](" + b"".join(items) + b"e"

    dtype = (b"cnumpy\ndtype\n" + s(b"u1") + i(0) + i(1) + b"\x87R"
             + b"(" + i(3) + s(b"|") + b"NNN" + i(-1) + i(-1) + i(0) + b"tb")
    array = (b"cnumpy.core.multiarray\n_reconstruct\n" + b"cnumpy\nndarray\n" + i(0) + b"\x85"
             + s(b"b") + b"\x87R"
             + b"(" + i(1) + i(x.shape[0]) + i(x.shape[1]) + b"\x86" + dtype + b"\x89"
             + s(x.tobytes()) + b"tb")
    return (b"\x80\x02}(" + s(b"batch_label") + s(batch_label) + s(b"labels")
            + lst(i(v) for v in labels) + s(b"data") + array + s(b"filenames")
            + lst(s(f) for f in filenames) + b"u.")


def globals_named(blob: bytes) -> set[str]:
    return {arg.replace(" ", ".") for op, arg, _ in pickletools.genops(blob) if op.name == "GLOBAL"}


def test_python2_original_format_loads(tmp_path):
    written = write_cifar(tmp_path, n_per_batch=(2, 2, 2, 2, 2), n_test=3)
    folder = tmp_path / "cifar-10-batches-py"
    x, y = written["test_batch"]
    blob = py2_batch_pickle(x, y, b"testing batch 1 of 1", [b"a.png", b"b.png", b"c.png"])
    # what the original files reference, and nothing else
    assert globals_named(blob) == {"numpy.core.multiarray._reconstruct", "numpy.ndarray",
                                   "numpy.dtype"}
    plain = pickle.loads(blob, encoding="bytes")
    assert np.array_equal(plain[b"data"], x) and plain[b"labels"] == y
    (folder / "test_batch").write_bytes(blob)
    t = data.load("cifar10", split="test", root=tmp_path)
    assert np.array_equal(t.images.reshape(3, -1).numpy(), x) and t.labels.tolist() == y


@pytest.mark.parametrize("protocol", [2, 3, 4, 5])
def test_python3_resaved_batches_load(tmp_path, protocol):
    written = write_cifar(tmp_path)
    folder = tmp_path / "cifar-10-batches-py"
    x, y = written["test_batch"]
    d = {b"batch_label": b"", b"labels": [np.int64(v) for v in y], b"data": x,  # numpy scalars
         b"filenames": []}
    (folder / "test_batch").write_bytes(pickle.dumps(d, protocol=protocol))
    t = data.load("cifar10", split="test", root=tmp_path)
    assert np.array_equal(t.images.reshape(3, -1).numpy(), x) and t.labels.tolist() == y
    # str keys, as a batch re-saved after reading it with encoding="latin1"
    (folder / "test_batch").write_bytes(pickle.dumps({"data": x, "labels": y}, protocol=protocol))
    assert data.load("cifar10", split="test", root=tmp_path).labels.tolist() == y


# ---------------------------------------------------------------------------------------------
# CIFAR-10 batches with payloads


def cifar_payloads(tmp_path, marker):
    inner = tmp_path / "inner.pkl"
    inner.write_bytes(pickle.dumps(Exec(marker), protocol=2))
    return {
        "shell": (Shell(marker), "posix.system" if os.name == "posix" else "system"),
        "exec": (Exec(marker), "exec"),
        "stealthy": (batch_dict(3, data=Stealthy(marker, 3)), "eval"),
        "stealthy_extra_key": ({**batch_dict(3), b"extra": Exec(marker)}, "exec"),
        "numpy_load": (NumpyLoad(inner), "numpy.load"),
    }


@pytest.mark.parametrize("protocol", [2, 4])
@pytest.mark.parametrize("kind", ["shell", "exec", "stealthy", "stealthy_extra_key", "numpy_load"])
def test_cifar_batch_payload_never_runs(tmp_path, monkeypatch, kind, protocol):
    write_cifar(tmp_path)
    marker = tmp_path / "MARKER"
    obj, named = cifar_payloads(tmp_path, marker)[kind]
    batch = tmp_path / "cifar-10-batches-py" / "data_batch_3"
    batch.write_bytes(pickle.dumps(obj, protocol=protocol))
    assert unsafe_load_makes_marker("pickle", batch, marker)  # the payload works
    if kind == "stealthy":  # ... and the unsafe reader would have used the batch without a sign
        monkeypatch.setattr(cifar, "_CifarUnpickler", pickle.Unpickler)
        assert data.load("cifar10", root=tmp_path).n == 11 and marker.exists()  # 3+2+3+1+2
        marker.unlink()
        monkeypatch.undo()

    monkeypatch.chdir(tmp_path)
    with pytest.raises(ValueError) as e:
        data.load("cifar10", split="train", root=tmp_path)
    assert not marker.exists()
    msg = str(e.value)
    one_line_naming(msg, batch)
    assert "not a CIFAR-10 batch" in msg and named in msg and "nothing in the file was run" in msg
    assert "make data DATA=cifar10" in msg and "cifar-10-python.tar.gz" in msg
    data.load("cifar10", split="test", root=tmp_path)  # the other split is untouched
    assert not marker.exists()


def test_cifar_batch_bad_content_is_one_line(tmp_path):
    write_cifar(tmp_path)
    batch = tmp_path / "cifar-10-batches-py" / "test_batch"
    good = batch.read_bytes()
    cases = {
        "truncated": (good[: len(good) // 2], "does not unpickle"),
        "not a pickle": (b"hello, world\n", "does not unpickle"),
        "a list": (pickle.dumps([1, 2, 3], protocol=2), "holds a list, not a dict"),
        "no labels": (pickle.dumps({b"data": np.zeros((2, 3072), np.uint8)}, 2), "no b'data'"),
        "floats": (pickle.dumps(batch_dict(2, data=np.zeros((2, 3072))), 2), "float64"),
        "28x28": (pickle.dumps(batch_dict(2, data=np.zeros((2, 784), np.uint8)), 2), "(2, 784)"),
        "labels count": (pickle.dumps({**batch_dict(2), b"labels": [1, 2, 3]}, 2), "3 labels for 2"),
        "labels text": (pickle.dumps({**batch_dict(2), b"labels": [b"cat", b"dog"]}, 2),
                        "list of N integers"),
        "bytes codec": (pickle.dumps(batch_dict(1), 2).replace(b"latin1", b"rot_13"), "rot_13"),
    }
    for name, (blob, expect) in cases.items():
        batch.write_bytes(blob)
        with pytest.raises(ValueError) as e:
            data.load("cifar10", split="test", root=tmp_path)
        msg = str(e.value)
        one_line_naming(msg, batch)
        assert "not a CIFAR-10 batch" in msg and expect in msg, (name, msg)


# ---------------------------------------------------------------------------------------------
# CelebA cache


def test_celeba_cache_payload_never_runs(tmp_path, monkeypatch):
    folder = write_celeba(tmp_path, [0, 0, 2])
    first = data.load("celeba", split="train", root=tmp_path)
    cache = folder / "cache_train_32x32.pt"
    blob = torch.load(cache, weights_only=True)
    marker = tmp_path / "MARKER"
    torch.save({**blob, "note": Exec(marker)}, cache)  # valid in every other way
    assert unsafe_load_makes_marker("torch", cache, marker)

    monkeypatch.chdir(tmp_path)
    with pytest.warns(UserWarning) as w:
        again = data.load("celeba", split="train", root=tmp_path)
    assert not marker.exists()
    msgs = [str(r.message) for r in w if "CelebA cache" in str(r.message)]
    assert len(msgs) == 1
    one_line_naming(msgs[0], cache)
    assert "ignored without loading it" in msgs[0] and "exec" in msgs[0]
    assert torch.equal(again.images, first.images)  # rebuilt from the JPEGs
    assert "note" not in torch.load(cache, weights_only=True)  # and the cache rewritten clean


# ---------------------------------------------------------------------------------------------
# MNIST: IDX files are raw bytes; torchvision's legacy processed/*.pt files are torch.load-ed


def test_mnist_legacy_file_payload_never_runs(tmp_path, monkeypatch):
    processed = tmp_path / "MNIST" / "processed"
    processed.mkdir(parents=True)
    x, y = mnist_arrays(4, 0)
    marker = tmp_path / "MARKER"
    for name in ("training.pt", "test.pt"):
        torch.save((torch.from_numpy(x), torch.from_numpy(y).long(), Exec(marker)), processed / name)
    assert unsafe_load_makes_marker("torch", processed / "training.pt", marker)

    monkeypatch.chdir(tmp_path)
    with pytest.raises(ValueError) as e:
        data.load("bmnist", root=tmp_path)
    assert not marker.exists()
    msg = str(e.value)
    one_line_naming(msg, processed / "training.pt")
    assert "not MNIST data" in msg and "exec" in msg and "Delete training.pt and test.pt" in msg


def test_mnist_bad_idx_is_one_line(tmp_path):
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for name in mnist.IDX_FILES:
        (raw / name).write_bytes(b"\x00\x00\x08\x03" + b"\x00" * 5)  # header cut short
    with pytest.raises(ValueError) as e:
        data.load("bmnist", root=tmp_path)
    one_line_naming(str(e.value), raw / "train-images-idx3-ubyte")
    assert "not MNIST data in the standard format" in str(e.value)


# ---------------------------------------------------------------------------------------------
# npz


@pytest.mark.parametrize("key", ["x", "y"])
def test_npz_object_array_payload_never_runs(tmp_path, monkeypatch, key):
    marker = tmp_path / "MARKER"
    p = tmp_path / "mine.npz"
    arrays = {"x": np.zeros((2, 28, 28), np.uint8), "y": np.array([0, 1])}
    arrays[key] = np.array([Exec(marker), 1], dtype=object)
    np.savez(p, **arrays)
    assert unsafe_load_makes_marker("numpy", p, marker)

    monkeypatch.chdir(tmp_path)
    with pytest.raises(ValueError) as e:
        data.load(f"npz:{p}")
    assert not marker.exists()
    msg = str(e.value)
    one_line_naming(msg, p)
    assert f"array '{key}'" in msg and "Python objects" in msg and "numeric" in msg
    assert ("must be a numeric uint8 array" in msg if key == "x" else
            "must be a numeric array of integer labels" in msg)


def test_npz_that_is_a_pickle_never_runs(tmp_path, monkeypatch):
    marker = tmp_path / "MARKER"
    p = tmp_path / "mine.npz"
    p.write_bytes(pickle.dumps(Exec(marker)))
    assert unsafe_load_makes_marker("numpy", p, marker)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ValueError) as e:
        data.load(f"npz:{p}")
    assert not marker.exists()
    one_line_naming(str(e.value), p)
    assert "not a NumPy .npz archive" in str(e.value)


def test_npz_damaged_files_are_one_line(tmp_path):
    p = tmp_path / "mine.npz"
    np.savez(p, x=np.zeros((2, 28, 28), np.uint8))
    good = p.read_bytes()
    q = tmp_path / "one.npz"
    np.save(tmp_path / "one.npy", np.zeros((2, 28, 28), np.uint8))
    os.replace(tmp_path / "one.npy", q)
    for path, blob, expect in ((p, good[:40], "not a NumPy .npz archive"),
                               (q, None, "a single .npy array")):
        if blob is not None:
            path.write_bytes(blob)
        with pytest.raises(ValueError) as e:
            data.load(f"npz:{path}")
        one_line_naming(str(e.value), path)
        assert expect in str(e.value)

"""A user's own images: an npz with uint8 x (and optionally y, x_test, y_test), read without
pickles, checked, padded or resized to 32x32."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from memo.data.images import SIZE, DataMissingError, ImageData, checked_labels, pad_to, resize_uint8
from memo import fileio
from memo.fileio import one_line


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
        return pad_to(images)
    return resize_uint8(images)


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


def _check_headers(path: Path, z, xkey: str, ykey: str) -> None:
    """The arrays' headers checked before any is inflated: images of uint8 and at least one,
    as many labels as images, labels of integers, and the test images with the training
    images' channels."""
    fix = "write it with np.savez(path, x=images, y=labels)"
    shapes = {}
    for key in ("x", xkey, ykey):
        head = fileio.npz_member(path, key) if key in z.files else None
        if head is None:
            continue
        shape, dtype, _ = head
        if dtype.hasobject:
            continue  # refused when read, with its reason (_npz_array)
        shapes[key] = shape
        if key.startswith("x") and (len(shape) not in (3, 4) or shape[0] == 0):
            raise ValueError(f"{path}: array '{key}' has shape {shape}; expected at least one "
                             f"image, N x H x W or N x H x W x C; {fix}")
        if key.startswith("y") and dtype.kind not in "iub":
            raise ValueError(f"{path}: array '{key}' has dtype {dtype}; labels must be integers "
                             f"(no strings, no NaN); {fix}")
    if ykey in shapes and xkey in shapes and int(np.prod(shapes[ykey])) != shapes[xkey][0]:
        raise ValueError(f"{path}: {int(np.prod(shapes[ykey]))} labels in '{ykey}' for "
                         f"{shapes[xkey][0]} images in '{xkey}'; {fix}")
    if xkey != "x" and "x" in shapes and xkey in shapes:
        channels = [s[3] if len(s) == 4 else 1 for s in (shapes["x"], shapes[xkey])]
        if channels[0] != channels[1]:
            raise ValueError(f"{path}: 'x' has {channels[0]} channel(s) but '{xkey}' has "
                             f"{channels[1]}; the test images must be like the training images")


def _too_large(path: Path, z, key: str) -> str:
    """Why images that inflate past the memory at hand are refused, with their sizes."""
    info = z.zip.getinfo(f"{key}.npy")
    shape = fileio.npz_member(path, key)[0]
    return (f"{path}: array '{key}' holds {shape[0]} images of {'x'.join(map(str, shape[1:]))}, "
            f"{info.file_size / 2**30:.1f} GiB once inflated (from {info.compress_size / 2**20:.1f}"
            f" MiB in the file), which with their 32x32 copy do not fit in this process's memory; "
            f"use fewer images or a machine with more memory")


def _needed_bytes(path: Path, key: str) -> int:
    """What loading array `key` costs, from its header alone: the inflated array and its
    32x32 copy (images are kept as uint8)."""
    shape, _, inflated = fileio.npz_member(path, key)
    channels = shape[3] if len(shape) == 4 else 1
    return inflated + shape[0] * channels * SIZE * SIZE


def load_npz(path: Path, split: str) -> ImageData:
    if path.is_dir():
        raise ValueError(f"{path} is a directory; npz:PATH names an .npz file holding a uint8 "
                         "array 'x'")
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
        _check_headers(path, z, xkey, ykey)
        if xkey not in z.files:
            if split == "test":
                raise DataMissingError(
                    f"{path} has no array 'x_test', so it has no test split (arrays present: "
                    f"{', '.join(z.files)}); add 'x_test' (and optionally 'y_test') to the file.")
            raise ValueError(f"{path}: no array 'x' (arrays present: {', '.join(z.files)}); expected a "
                             f"uint8 array 'x' of N x H x W or N x H x W x C images")
        # checked before inflating: a small crafted file (or a data set too large for this
        # machine) is one line, and the memory is never taken
        at_hand = fileio.memory_at_hand()
        if at_hand is not None and _needed_bytes(path, xkey) > at_hand:
            raise ValueError(_too_large(path, z, xkey))
        try:
            images = _npz_images(_npz_array(z, path, xkey), path, xkey)
        except (MemoryError, RuntimeError) as e:  # torch's allocator fails with RuntimeError
            if isinstance(e, RuntimeError) and "allocate" not in str(e):
                raise
            raise ValueError(_too_large(path, z, xkey)) from None
        labels = (checked_labels(_npz_array(z, path, ykey), images.shape[0], f"{path} '{ykey}'")
                  if ykey in z.files else None)
    return ImageData("npz", images, labels, hflip=False)

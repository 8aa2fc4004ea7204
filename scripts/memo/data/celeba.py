"""CelebA from the standard celeba/ layout (partition file and JPEGs): cropped, resized to
32x32, cached as a tensor file that is read without running code."""
from __future__ import annotations

import os
import pickle
import sys
import threading
import warnings
from pathlib import Path
from queue import Full, Queue

import torch

from memo.config import naming
from memo.data.images import SIZE, DataMissingError, ImageData, resize_uint8
from memo.fileio import torch_refusal


CELEBA_DIR = "celeba"


CELEBA_PARTITION = "list_eval_partition.txt"


CELEBA_IMAGES = "img_align_celeba"


CELEBA_BOX = (15, 40, 163, 188)  # left, top, right, bottom (148 x 148)


CELEBA_SPLITS = {"train": 0, "valid": 1, "test": 2}


_CELEBA_CACHE_VERSION = 1


_CELEBA_BATCH = 512  # JPEGs read and decoded per batch


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


def load_celeba(root: Path, split: str, download: bool) -> ImageData:
    folder = root / CELEBA_DIR
    part = folder / CELEBA_PARTITION
    imgdir = folder / CELEBA_IMAGES
    if not part.is_file() and download:
        fetch(root)
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
                out[s:s + crops.shape[0]] = resize_uint8(crops, SIZE)
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


def fetch(root: Path) -> None:
    """CelebA into root by torchvision's Google-Drive download (network access; often refused)."""
    import torchvision.datasets as tvd   # torchvision deferred: only a download needs it
    root.mkdir(parents=True, exist_ok=True)
    tvd.CelebA(str(root), split="all", target_type=[], download=True)

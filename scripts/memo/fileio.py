"""Files: writes that leave a file whole (a temporary name, then a rename), NumPy archives
written that way and without pickles, and one-line reports of a file that could not be read."""
from __future__ import annotations

import glob
import io
import os
import re
import secrets
from pathlib import Path

import numpy as np

TMP_SUFFIX = ".tmp"


def temporary_name(path: Path) -> Path:
    """A hidden name of its own beside `path` (the rename stays on one file system)."""
    return path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}{TMP_SUFFIX}")


def atomic_write_bytes(path: str | os.PathLike, blob: bytes) -> None:
    """Write blob to path: a reader sees the old file or the new one, never a part."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_name(path)
    try:
        # O_EXCL: never through someone else's file; mode 0o666 less the umask, as open() gives
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        with os.fdopen(fd, "wb") as f:
            f.write(blob)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write_npz(path: str | os.PathLike, arrays: dict, compress: bool = True) -> None:
    """Write arrays as one .npz file (zip-compressed unless compress=False), whole
    (`atomic_write_bytes`). Only plain arrays are written: one holding Python objects, which
    only a pickle could store, is refused (ValueError), so readers never need allow_pickle."""
    arrays = {k: np.asarray(v) for k, v in arrays.items()}
    objects = [k for k, v in arrays.items() if v.dtype.hasobject]
    if objects:
        raise ValueError(f"{path}: arrays {objects} hold Python objects; an .npz of this "
                         "pipeline holds plain arrays only (no pickles)")
    buf = io.BytesIO()
    (np.savez_compressed if compress else np.savez)(buf, **arrays)
    atomic_write_bytes(path, buf.getvalue())


def remove_orphans(path: str | os.PathLike) -> list[Path]:
    """Remove the temporary files of writes to `path` that were killed before their rename.
    Call it only where no other process writes `path` at the same time."""
    path = Path(path)
    if not path.parent.is_dir():
        return []
    gone = sorted(path.parent.glob(f".{glob.escape(path.name)}.*{TMP_SUFFIX}"))
    for tmp in gone:
        tmp.unlink(missing_ok=True)
    return gone


def one_line(text, limit: int = 160) -> str:
    """A message part on one line: whitespace collapsed, cut to `limit` characters; an
    exception without a message gives its type's name."""
    line = " ".join(str(text).split())
    if not line and isinstance(text, BaseException):
        line = type(text).__name__
    return line if len(line) <= limit else line[: limit - 3] + "..."


def torch_refusal(e: Exception) -> str:
    """The one line that matters in torch.load's many-line weights_only refusal."""
    m = re.search(r"WeightsUnpickler error: ([^\n]*)", str(e))
    return one_line((m.group(1) if m else str(e)).split(". ")[0], 120)

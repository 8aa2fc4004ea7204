"""Files: writes that leave a file whole (a temporary name, then a rename), NumPy archives
written that way and without pickles, one lock per job (one process at a time writes its
files), and one-line reports of a file that could not be read."""
from __future__ import annotations

import contextlib
import fcntl
import glob
import io
import os
import re
import resource
import secrets
from pathlib import Path

import numpy as np

from memo.errors import OutsideRootError

TMP_SUFFIX = ".tmp"


def temporary_name(path: Path) -> Path:
    """A hidden name of its own beside `path` (the rename stays on one file system)."""
    return path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}{TMP_SUFFIX}")


def inside(path: str | os.PathLike, root: str | os.PathLike | None = None) -> Path:
    """`path`, after checking that it resolves inside `root` (default: the folder holding it).
    The folder a user names may itself be a link (analysis/ on a bigger disk); what is refused
    is a link below it that redirects the write, e.g. analysis/<exp>.npz or output/<exp>
    unpacked from an archive as a link to somewhere else. OutsideRootError (one line)."""
    path = Path(path)
    root = Path(root) if root is not None else path.parent
    real, real_root = path.resolve(), root.resolve()
    if not real.is_relative_to(real_root):
        raise OutsideRootError(f"{path} leads to {real}, outside {real_root}; writes stay "
                               f"inside {root}: replace the link with a file or folder of its own")
    return path


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
    except BaseException as e:
        tmp.unlink(missing_ok=True)
        if isinstance(e, OSError) and e.filename is None:  # a full disk: say which file
            raise OSError(e.errno, f"{e.strerror}: writing {path}") from None
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


def writer_pid(tmp: Path, prefix: str) -> int | None:
    """The process id in a temporary name `<prefix><pid>.<...>` (temporary_name's form)."""
    head = tmp.name[len(prefix):].split(".", 1)[0].split("-", 1)[0]
    return int(head) if head.isdigit() else None


def process_gone(pid: int | None) -> bool:
    """Whether no process `pid` runs (this one counts as gone: none of its own writes to a
    path is in flight when it cleans up before writing it). A name without a pid: gone."""
    if pid is None or pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # another user's live process
        return False
    return False


def remove_orphans(path: str | os.PathLike) -> list[Path]:
    """Remove the temporary files of writes to `path` whose process is gone (killed before
    its rename); those of a running process are left alone."""
    path = Path(path)
    if not path.parent.is_dir():
        return []
    prefix = f".{path.name}."
    gone = [tmp for tmp in sorted(path.parent.glob(f"{glob.escape(prefix)}*{TMP_SUFFIX}"))
            if process_gone(writer_pid(tmp, prefix))]
    for tmp in gone:
        tmp.unlink(missing_ok=True)
    return gone


def remove_stale_dirs(folder: str | os.PathLike, prefix: str) -> list[Path]:
    """Remove the temporary folders `<prefix><pid>-...` in `folder` (tempfile.mkdtemp's, named
    with the pid) of processes that are gone."""
    import shutil
    folder = Path(folder)
    if not folder.is_dir():
        return []
    gone = [d for d in sorted(folder.glob(f"{glob.escape(prefix)}*")) if d.is_dir()
            and writer_pid(d, prefix) is not None and process_gone(writer_pid(d, prefix))]
    for d in gone:
        shutil.rmtree(d, ignore_errors=True)
    return gone


def lock_path(path: str | os.PathLike) -> Path:
    """The lock file of the job that writes `path`: hidden, beside it."""
    path = Path(path)
    return path.with_name(f".{path.name}.lock")


@contextlib.contextmanager
def exclusive(paths, say=None):
    """Hold the lock of every path in `paths` (fcntl.flock on lock_path(path)), for one process
    at a time: a second one says in one line (`say`) that it waits for the process holding it,
    and waits. The locks are taken in one order, so two processes with overlapping paths never
    wait on each other; the kernel drops them when the process ends, however it ends.
    Yields whether it had to wait (the other process may have done the work meanwhile)."""
    locks = sorted({lock_path(p).resolve() for p in paths})
    fds, waited = [], False
    try:
        for lock in locks:
            lock.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o666)
            fds.append(fd)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.pread(fd, 32, 0).decode("ascii", "replace").strip() or "unknown"
                if say is not None:
                    say(f"waiting for process {holder}, which runs the same job "
                        f"(lock {lock.parent.name}/{lock.name})")
                fcntl.flock(fd, fcntl.LOCK_EX)
                waited = True
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield waited
    finally:
        for fd in fds:
            os.close(fd)


def npz_member(path: str | os.PathLike, key: str) -> tuple[tuple, np.dtype, int] | None:
    """(shape, dtype, inflated bytes) of array `key` in the .npz archive at `path`, from the
    zip member's header and the .npy header alone (nothing is inflated past the header); None
    when the archive has no such member. ValueError (one line) for a damaged header, or one
    whose shape does not fit the member's inflated size (a crafted archive)."""
    import zipfile
    try:
        with zipfile.ZipFile(path) as z:
            try:
                info = z.getinfo(f"{key}.npy")
            except KeyError:
                return None
            with z.open(info) as fh:
                version = np.lib.format.read_magic(fh)
                read = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                        else np.lib.format.read_array_header_2_0)
                shape, _, dtype = read(fh, max_header_size=10000)
                header = fh.tell()
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as e:
        raise ValueError(f"{path}: array '{key}' has an unreadable header ({one_line(e, 80)})"
                         ) from None
    if dtype.hasobject:
        return shape, dtype, info.file_size
    size = int(np.prod(shape, dtype=object)) * dtype.itemsize
    if header + size != info.file_size:
        raise ValueError(f"{path}: array '{key}' claims shape {shape} of {dtype} "
                         f"({size} bytes) but its member inflates to {info.file_size} bytes; "
                         "the archive is damaged or crafted: write it again with np.savez")
    return shape, dtype, info.file_size


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


def memory_at_hand() -> int | None:
    """Bytes this process can still allocate: the smaller of the free memory the kernel reports
    (MemAvailable) and what its address-space limit leaves; None where neither is known."""
    limits = []
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    limits.append(int(line.split()[1]) * 1024)
        soft, _ = resource.getrlimit(resource.RLIMIT_AS)
        if soft != resource.RLIM_INFINITY:
            with open("/proc/self/status") as fh:
                used = next(int(l.split()[1]) * 1024 for l in fh if l.startswith("VmSize:"))
            limits.append(soft - used)
    except (OSError, ValueError, StopIteration):
        pass
    return min(limits) if limits else None

"""What the command-line scripts share: the common options, each with one help text, and one
way of ending on an error.

An error ends a script with one line on standard error, `<script>: error: <message>`, and one
exit status for each kind:

  2    the command line is wrong, and nothing was started: argparse's usage errors, an unknown
       experiment, an invalid setting (also one in EXPERIMENTS_FILE), an unknown device, data
       set or model, an option out of its range or one that contradicts another (UsageError,
       UnknownExperimentError, SettingsError, and whatever a script checks inside `usage()`)
  1    the command was valid but could not be carried out: every other error of the library
       (memo.errors.MemoError: a missing, truncated or mismatched file, data not found, results
       made under other settings, a diverged training run, a failed compilation; a ValueError
       about a file's contents), or of the system (OSError: a full disk, a folder that cannot
       be written)
  130  interrupted (Ctrl-C)

memorization.py also exits with 3 when it stopped after --stop-after, to be run again.
Nothing here imports torch: --help stays fast.
"""
from __future__ import annotations

import argparse
import contextlib
import errno
import sys
from pathlib import Path

from memo import fileio
from memo.config.experiments import SettingsError, UnknownExperimentError
from memo.errors import MemoError

USAGE, FAILURE, INTERRUPTED = 2, 1, 130


class UsageError(ValueError, MemoError):
    """The command line is wrong (exit status 2)."""


def parser(script: str, description: str, **kwargs) -> argparse.ArgumentParser:
    """The parser of `script` (its __file__): usage errors name the script however it is run."""
    return argparse.ArgumentParser(prog=Path(script).name, description=description, **kwargs)


# ----------------------------------------------------------------------------------------------
# the shared options

def add_results_dir(p: argparse.ArgumentParser) -> None:
    p.add_argument("--results-dir", default="results",
                   help="root of the result files (default: results)")


def add_data_root(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data-root", default=None,
                   help="data directory (default: $DATA_ROOT, else ./data)")


def add_device(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default=None,
                   help="torch device: cpu, cuda, cuda:1, ... (default: cuda when available)")


def add_output(p: argparse.ArgumentParser, what: str, default: str | None = None,
               required: bool = False) -> None:
    """-o/--output, the file a script writes (`what` it holds); `default` is said in the help
    (the script fills it in when the option is not given)."""
    p.add_argument("-o", "--output", type=Path, required=required, default=None,
                   help=f"output file: {what}" + (f" (default: {default})" if default else ""))


def device_name(name: str | None) -> str:
    """--device as given, or cuda when available, else cpu (torch is imported here, after the
    command line is read)."""
    if name:
        return name
    import torch
    return "cuda" if torch.cuda.is_available() else "cpu"


def device(name: str | None):
    """The torch.device of --device, usable here; UsageError (one line) otherwise."""
    from memo.data import check_device
    with usage():
        return check_device(device_name(name))


# ----------------------------------------------------------------------------------------------
# errors

@contextlib.contextmanager
def usage():
    """What goes wrong inside is the command line's fault: exit status 2."""
    try:
        yield
    except UsageError:
        raise
    except (MemoError, ValueError) as e:
        raise UsageError(message(e)) from e


# what to do about the system errors a write meets
OS_FIXES = {
    errno.ENOSPC: "free space on that disk, or write elsewhere",
    errno.EDQUOT: "free space within the disk quota, or write elsewhere",
    errno.EROFS: "write elsewhere (-o/--out, or RESULTS= and ANALYSIS= for make)",
    errno.EACCES: "make it writable, or write elsewhere (-o/--out, or RESULTS= and ANALYSIS= "
                  "for make)",
}


def message(e: BaseException) -> str:
    """An error as one line: its lines joined; an OSError as its reason and file, and what to
    do about it where that is known (OS_FIXES)."""
    if isinstance(e, OSError) and e.strerror:
        text = f"{e.strerror}: {e.filename}" if e.filename else e.strerror
        if e.errno in OS_FIXES:
            text += f"; {OS_FIXES[e.errno]}"
    else:
        text = str(e)
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return "; ".join(lines) or type(e).__name__


def output(path) -> Path:
    """Where a script writes (a file or a folder), refused in one line when a symbolic link
    there leads outside the folder that holds it (fileio.inside): every script checks the
    paths it writes here, once it has decided them."""
    return fileio.inside(path)


class AlreadyWritten(Exception):
    """The process a script waited for wrote every one of its outputs: nothing is left to do
    (`run` ends it with 0 and one line)."""


def _identity(path: Path) -> tuple[int, int] | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return st.st_ino, st.st_mtime_ns


@contextlib.contextmanager
def one_writer(script: str, outputs):
    """One process at a time writes `outputs` (each checked by `output`; a lock on the first,
    fileio.exclusive): a second run says that it waits for the first; temporary files that
    processes now gone left beside them are removed. Yields whether it waited.

    A run that waited and finds every output written anew meanwhile (a rename gives a new
    inode) stops with AlreadyWritten: the other process ran the same job (two `make` at once
    both decided the file was out of date), and doing it again would only repeat its work."""
    outputs = [output(o) for o in outputs]
    before = [_identity(o) for o in outputs]
    with fileio.exclusive(outputs[:1], lambda line: say(script, line)) as waited:
        if waited and all(_identity(o) not in (None, b) for o, b in zip(outputs, before)):
            raise AlreadyWritten(f"{outputs[0]} already written by the process waited for; "
                                 f"nothing to do")
        for out in outputs:
            fileio.remove_orphans(out)
        yield waited


def say(script: str, text: str) -> None:
    """One line `<script>: <text>` on standard error."""
    print(f"{Path(script).name}: {text}", file=sys.stderr, flush=True)


def run(script: str, fn, *args, interrupted: str = "interrupted; nothing written",
        failures: tuple[type[BaseException], ...] = ()) -> int:
    """fn(*args), with the library's errors reported as one line and one exit status (see
    above): fn's return value when it is an exit status (an int), else 0. failures: further
    exception types that end it with 1 (e.g. RuntimeError where a script runs LaTeX)."""
    try:
        rc = fn(*args)
        return rc if isinstance(rc, int) else 0
    except AlreadyWritten as e:
        say(script, str(e))
        return 0
    except (UsageError, UnknownExperimentError, SettingsError) as e:
        say(script, f"error: {message(e)}")
        return USAGE
    except (MemoError, ValueError, OSError, *failures) as e:
        say(script, f"error: {message(e)}")
        return FAILURE
    except MemoryError:  # an input larger than the memory at hand: one line, not a traceback
        say(script, "error: out of memory (MemoryError); the inputs are larger than this "
                    "process may allocate: use smaller inputs or a machine with more memory")
        return FAILURE
    except KeyboardInterrupt:
        say(script, interrupted)
        return INTERRUPTED

"""The library's errors. Every error the user can do something about derives from MemoError:
its message names the file, setting or name at fault and how to fix it, and the command-line
scripts print it as one line (scripts/cli.py). Each class keeps its other base (ValueError,
RuntimeError, ...), so `except ValueError` still catches what it caught before."""
from __future__ import annotations


class MemoError(Exception):
    """A problem with the inputs or the state of the pipeline, told in one message."""


class FileFormatError(ValueError, MemoError):
    """A file of the pipeline (the nearest-neighbour, sweep or measures file) that is missing,
    truncated or not of its kind; the message names it and how to make it again."""


class OutsideRootError(ValueError, MemoError):
    """A write whose target, through a symbolic link, lies outside the folder it was meant for;
    the message names the link, where it leads and the fix."""

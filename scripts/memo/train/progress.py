"""Progress bars of training and evaluation: one bar per model on a terminal; none in a log
file (SLURM, a redirect) nor where several jobs of `make -j N` share one terminal, whose bars
would overwrite one another. There each model's one result line shows the progress."""
from __future__ import annotations

import os
import re


def make_jobs() -> int | None:
    """N of the `make -j N` this process runs under: 0 for a bare -j (no limit), None outside
    make or without -j."""
    m = re.search(r"(?:^|\s)-j\s*(\d*)", os.environ.get("MAKEFLAGS", ""))
    return None if not m else int(m.group(1) or 0)


def disabled() -> bool | None:
    """tqdm's `disable`: True beside other jobs, else None (a bar only when stderr is a
    terminal)."""
    jobs = make_jobs()
    return True if jobs is not None and jobs != 1 else None

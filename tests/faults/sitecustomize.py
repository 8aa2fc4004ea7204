"""Fault injection for tests/test_faults.py: SIGKILL a training process at a chosen point.

Python imports this module at start-up when tests/faults is on PYTHONPATH; it does nothing
unless a fault is asked for, so the product code has no test hooks. Only the training CLI
(scripts/memorization.py) is hit: Make's other Python commands see the same environment.

MEMO_FAULT_<job tag> (for `--job <tag>`), else MEMO_FAULT, is KIND[:ARG[:N]]:

  mid_epoch[:E]              in epoch E's training steps (E counted in this process, default 2),
                             after its first Adam step
  before_rename[:MATCH[:N]]  at the rename of memo.fileio.atomic_write_bytes (os.replace of its
                             written, synced temporary file) for the N-th write (default 1) to
                             a path containing MATCH (default ".json.gz", result files): the
                             temporary file is left behind
  after_rename[:MATCH[:N]]   right after that rename: the new file is whole and in place
  at_exit                    when the process exits normally (every file written, resume
                             files removed)

SIGKILL, as the out-of-memory killer or a cluster's preemption does: no handler or clean-up runs.
"""
import os
import sys


def _spec() -> list[str]:
    if not sys.argv[0].endswith("memorization.py"):
        return []
    args = sys.argv[1:]
    job = args[args.index("--job") + 1] if "--job" in args[:-1] else None
    spec = (job and os.environ.get(f"MEMO_FAULT_{job}")) or os.environ.get("MEMO_FAULT", "")
    return spec.split(":") if spec else []


def _die():
    import signal
    os.kill(os.getpid(), signal.SIGKILL)


def _patch_replace(kind: str, match: str = ".json.gz", nth: str = "1"):
    # memo.fileio.atomic_write_bytes renames its written, synced temporary file with os.replace
    seen = [0]
    real_replace = os.replace

    def replace(src, dst, **kwargs):
        hit = match in os.fspath(dst) and os.fspath(src).endswith(".tmp")
        seen[0] += hit
        if hit and seen[0] == int(nth) and kind == "before_rename":
            _die()
        real_replace(src, dst, **kwargs)
        if hit and seen[0] == int(nth) and kind == "after_rename":
            _die()

    os.replace = replace


def _patch_training(training, epoch: int):
    calls = [0]
    real_steps = training.train_steps

    def train_steps(model, optimizer, batch_loss, *args, **kwargs):
        calls[0] += 1
        if calls[0] == epoch:
            steps = [0]

            def loss_then_die(*a, **k):
                steps[0] += 1
                if steps[0] == 2:  # one Adam step of this epoch is done, the second begins
                    _die()
                return batch_loss(*a, **k)
            return real_steps(model, optimizer, loss_then_die, *args, **kwargs)
        return real_steps(model, optimizer, batch_loss, *args, **kwargs)

    training.train_steps = train_steps


def _patch_on_import(name, patch):
    """Call patch(module) right after module `name` is executed, before anyone uses it."""
    import importlib.abc
    import importlib.machinery

    class Finder(importlib.abc.MetaPathFinder):
        def find_spec(self, fullname, path, target=None):
            if fullname != name:
                return None
            spec = importlib.machinery.PathFinder.find_spec(fullname, path)
            if spec is None:
                return None
            real_exec = spec.loader.exec_module

            def exec_module(module):
                real_exec(module)
                patch(module)
            spec.loader.exec_module = exec_module
            return spec

    sys.meta_path.insert(0, Finder())


def _install(kind: str = "", *args: str):
    if kind == "at_exit":
        import atexit
        atexit.register(_die)
    elif kind == "mid_epoch":
        epoch = int(args[0]) if args else 2
        _patch_on_import("memo.train.training", lambda m: _patch_training(m, epoch))
    elif kind in ("before_rename", "after_rename"):
        _patch_replace(kind, *args)
    elif kind:
        raise SystemExit(f"sitecustomize: unknown fault {kind!r}")


_install(*_spec())

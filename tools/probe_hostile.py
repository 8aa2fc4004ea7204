#!/usr/bin/env python3
"""Hostile inputs, one at a time: what each command prints, its exit status and its peak memory.

Every case builds tiny files in the real formats (a 200-image npz experiment, K = 2, L = 1, and
result files in the authors' format, from the test suite's builders) in a temporary folder, then
runs the real command on them (scripts/summarize.py, memorization.py, nearest_neighbours.py,
analysis.py or make) in a fresh process under an address-space cap, and records the first line
it printed (standard output and error together), its exit status and its peak resident memory
(os.wait4's rusage of the process and the children it waited for).

    python tools/probe_hostile.py --out table.md [--save after.json] [--before before.json]
    python tools/probe_hostile.py --repo /path/to/an/older/checkout --save before.json

--repo runs another checkout's scripts on the same files (to compare with an older commit; the
files are always built by this checkout). --before adds the columns of an earlier --save. Cases
on a read-only or full disk mount a small tmpfs and need root; without it they are "n/a".
"""
from __future__ import annotations

import argparse
import gzip
import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(HERE / "scripts"), str(HERE / "tests")]

import hostile                                       # noqa: E402  (the tests' builders)
from conftest import TINY, write_tiny_npz            # noqa: E402
from hostile import EDITS, content, first, part, write  # noqa: E402
from test_results_summary import make_experiment     # noqa: E402

N, K, L = 200, 2, 1           # the probes' experiment: 200 images, K = 2 folds, L = 1 repeat
SPEC = dict(TINY, folds=K, repeats=L, epochs=2, eval_every=2)


@dataclass
class Probe:
    """The commands of one case (run at once when several) and what to check afterwards."""
    cmds: list[list[str]]
    env: dict = field(default_factory=dict)
    cwd: Path | None = None
    after: object = None      # () -> str: a note on the files (e.g. what a link's target got)
    na: str = ""              # why the case cannot run here


class Work:
    """One case's temporary folder and the commands of the checkout under test."""

    def __init__(self, folder: Path, repo: Path, python: str):
        self.dir, self.repo, self.python = folder, repo, python
        self.results = folder / "results"

    def script(self, name: str, *args) -> list[str]:
        return [self.python, str(self.repo / "scripts" / name), *map(str, args)]

    # -- result files (authors' format) and the summary
    def result_files(self) -> list[Path]:
        paths, _ = make_experiment(self.dir, n=N, folds=K, repeats=L)
        return paths

    def summarize(self, paths, out: Path | None = None, *extra) -> list[str]:
        out = out or self.dir / "analysis" / "exp.npz"
        return self.script("summarize.py", "--result-files", *paths, "-o", out, "--n-boot", 10,
                           "--n-perm", 0, "--data-root", self.dir / "nodata", *extra)

    # -- an experiment of our own on npz data
    def npz(self, name="tiny.npz") -> Path:
        return write_tiny_npz(self.dir / name, n=N, n_test=50)

    def experiments(self, specs: dict) -> dict:
        f = self.dir / "experiments.json"
        f.write_text(json.dumps(specs))
        return {"EXPERIMENTS_FILE": str(f)}

    def tiny(self, data: str | None = None, name: str = "tiny", **over) -> dict:
        return self.experiments({name: dict(SPEC, data=data or f"npz:{self.npz()}", **over)})

    def train(self, name: str = "tiny", job: str = "cv_repeat0_fold0",
              results: Path | None = None) -> list[str]:
        return self.script("memorization.py", "--experiment", name, "--job", job,
                           "--results-dir", results or self.results, "--device", "cpu",
                           "--threads", 1)

    def full_checkpoint(self, env: dict) -> Path:
        """Where the checkpoint of the tiny experiment's full model lies, as the checkout
        under test names it."""
        code = ("import sys; sys.path.insert(0, 'scripts')\n"
                "try:\n    from memo.files import results; from memo.config import experiments\n"
                "except ImportError:\n    from memo import results, experiments\n"
                "e = experiments.get('tiny')\n"
                f"print(results.job_files(e, experiments.FULL_JOB, {str(self.results)!r})"
                ".checkpoint)")
        out = subprocess.run([self.python, "-c", code], cwd=self.repo, env={**os.environ, **env},
                             capture_output=True, text=True, check=True)
        return Path(out.stdout.strip())


def npz_zeros_bomb(path: Path, images: int) -> None:
    """An npz whose 'x' holds `images` zero 28x28 images: 2 MB that inflate to ~2 GB,
    written in blocks (never held in memory)."""
    header = {"descr": "|u1", "fortran_order": False, "shape": (images, 28, 28)}
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED, compresslevel=9) as z:
        with z.open("x.npy", "w", force_zip64=True) as f:
            np.lib.format.write_array_header_1_0(f, header)
            left, block = images * 28 * 28, bytes(16 << 20)
            while left:
                f.write(block[: min(left, len(block))])
                left -= min(left, len(block))


def zip_bomb_checkpoint(path: Path, inflated: int) -> None:
    """A torch-style zip whose one member inflates to `inflated` bytes of zeros."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
        with z.open("archive/data/0", "w", force_zip64=True) as member:
            block = bytes(16 << 20)
            for _ in range(inflated // len(block)):
                member.write(block)


def mount_tmpfs(folder: Path, size: str, read_only: bool = False) -> str:
    """A small tmpfs at folder ('' when mounted, else why not)."""
    folder.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0:
        return "needs root to mount a small file system"
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)],
                          capture_output=True, text=True)
    if done.returncode:
        return f"mount failed: {done.stderr.strip()}"
    (folder / "analysis").mkdir()
    if read_only:
        subprocess.run(["mount", "-o", "remount,ro", str(folder)], check=True)
    return ""


# ----------------------------------------------------------------------------------------------
# the cases: name -> builder(work) -> Probe

def result_case(case: str):
    """A summary of the K x L result files with one (or, where they must agree, every) file
    given the edit `case` of tests/hostile.py."""
    def build(w: Work) -> Probe:
        paths = w.result_files()
        for p in paths if case in hostile.EVERY_FILE else paths[:1]:
            hostile.mutate(p, EDITS[case])
        return Probe([w.summarize(paths)])
    return build


def text_case(fn):
    """A summary with one result file replaced by fn(its JSON text)."""
    def build(w: Work) -> Probe:
        paths = w.result_files()
        write(paths[0], fn(json.dumps(content(paths[0]))))
        return Probe([w.summarize(paths)])
    return build


def inflating(size: int):
    def build(w: Work) -> Probe:
        paths = w.result_files()
        hostile.bomb(paths[0], size)
        return Probe([w.summarize(paths)])
    return build


def long_loss_list(w: Work) -> Probe:
    """A loss list of 10^8 zeros (gzip members one after another: small to write)."""
    paths = w.result_files()
    c = content(paths[0])
    c["results"]["losses"]["train"] = "@"
    head, tail = json.dumps(c).split('"@"')
    chunk = gzip.compress(b",0" * (1 << 20), mtime=0)
    with open(paths[0], "wb") as f:
        f.write(gzip.compress((head + "[0").encode(), mtime=0))
        for _ in range(10**8 // (1 << 20)):
            f.write(chunk)
        f.write(gzip.compress(("]" + tail).encode(), mtime=0))
    return Probe([w.summarize(paths)])


def data_spec_bomb(w: Work) -> Probe:
    bomb = w.dir / "bomb.npz"
    npz_zeros_bomb(bomb, 2_700_000)
    paths = w.result_files()
    for p in paths:
        hostile.mutate(p, lambda c: c["meta"].update(dataset="npz", data_spec=f"npz:{bomb}"))
    return Probe([w.summarize(paths)[:-2]])   # no --data-root: the labels are looked for


def claims_demo(w: Work) -> Probe:
    paths = w.result_files()
    for p in paths:
        hostile.mutate(p, lambda c: c["meta"].update(experiment="fashion_demo"))
    return Probe([w.summarize(paths, w.dir / "analysis" / "tiny.npz")])


def two_runs(w: Work) -> Probe:
    env = w.tiny()
    return Probe([w.train(), w.train()], env,
                 after=lambda: f"result files: {len(list(w.results.rglob('*.json.gz')))}")


def npz_case(arrays=None, folder=False):
    """Training on npz data with these arrays (or an npz: naming a folder)."""
    def build(w: Work) -> Probe:
        if folder:
            path = w.dir / "data_folder"
            path.mkdir()
        else:
            path = w.dir / "user.npz"
            np.savez(path, **arrays)
        return Probe([w.train()], w.tiny(data=f"npz:{path}"))
    return build


def npz_bomb_data(w: Work) -> Probe:
    bomb = w.dir / "bomb.npz"
    npz_zeros_bomb(bomb, 2_700_000)
    return Probe([w.train()], w.tiny(data=f"npz:{bomb}"))


def setting(**over):
    def build(w: Work) -> Probe:
        return Probe([w.train()], w.tiny(**over))
    return build


def named(name: str, **over):
    def build(w: Work) -> Probe:
        return Probe([w.train(name=name)], w.tiny(name=name, **over))
    return build


def experiments_file_path(char: str):
    def build(w: Work) -> Probe:
        folder = w.dir / f"my{char}files"
        folder.mkdir()
        f = folder / "experiments.json"
        f.write_text(json.dumps({"tiny": dict(SPEC, data=f"npz:{w.npz()}")}))
        env = {"EXPERIMENTS_FILE": str(f)}
        return Probe([["make", "-n", "--no-print-directory", "-C", str(w.repo),
                       f"RESULTS={w.results}", "memorization-tiny"]], env)
    return build


def full_model_case(kind: str):
    """nearest_neighbours.py on a full-model checkpoint that is a zip bomb or all NaN."""
    def build(w: Work) -> Probe:
        env = w.tiny()
        path = w.full_checkpoint(env)
        if kind == "bomb":
            zip_bomb_checkpoint(path, 2 << 30)
        else:
            import torch
            from memo import models
            from memo.config import experiments
            from memo.train import checkpoints
            exp = experiments.load_user_experiments(Path(env["EXPERIMENTS_FILE"]))["tiny"]
            model = models.of_experiment(exp, 1)
            with torch.no_grad():
                for t in model.parameters():
                    t.fill_(float("nan"))
            path.parent.mkdir(parents=True, exist_ok=True)
            checkpoints.save_weights(path, model)
        return Probe([w.script("nearest_neighbours.py", "--experiment", "tiny", "--results-dir",
                               w.results, "--device", "cpu", "-o", w.dir / "analysis" / "nn.npz")],
                     env)
    return build


def linked_checkpoints(w: Work) -> Probe:
    env = w.tiny()
    elsewhere = w.dir / "elsewhere"
    elsewhere.mkdir()
    (w.results / "tiny").mkdir(parents=True)
    (w.results / "tiny" / "checkpoints").symlink_to(elsewhere)
    return Probe([w.train()], env,
                 after=lambda: f"files written through the link: {len(list(elsewhere.iterdir()))}")


def linked_summary(w: Work) -> Probe:
    elsewhere = w.dir / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "exp.npz").write_bytes(b"not yours")
    out = w.dir / "analysis" / "exp.npz"
    out.parent.mkdir()
    out.symlink_to(elsewhere / "exp.npz")
    return Probe([w.summarize(w.result_files(), out)],
                 after=lambda: f"files beside the link's target: {len(list(elsewhere.iterdir()))}")


def linked_figures(w: Work) -> Probe:
    paths = w.result_files()
    subprocess.run(w.summarize(paths), capture_output=True, cwd=w.repo, check=True)
    elsewhere = w.dir / "elsewhere"
    elsewhere.mkdir()
    (w.dir / "output").mkdir()
    (w.dir / "output" / "exp").symlink_to(elsewhere)
    return Probe([w.script("analysis.py", "quantiles", w.dir / "analysis" / "exp.npz",
                           "--no-latex")], cwd=w.dir,
                 after=lambda: f"files written through the link: {len(list(elsewhere.iterdir()))}")


def read_only(w: Work) -> Probe:
    why = mount_tmpfs(w.dir / "ro", "1m", read_only=True)
    return Probe([w.summarize(w.result_files(), w.dir / "ro" / "analysis" / "exp.npz")], na=why)


def disk_full(w: Work) -> Probe:
    why = mount_tmpfs(w.dir / "full", "64k")
    return Probe([w.train(results=w.dir / "full")], w.tiny(), na=why)


X = np.zeros((4, 28, 28), np.uint8)
CASES = {
    "two runs of one job": two_runs,
    "1.1 MB result file inflating to 1 GB JSON": inflating(1 << 30),
    "8 MB result file inflating to 8 GB JSON": inflating(8 << 30),
    "loss list of 1e8 zeros (~220 KB)": long_loss_list,
    "meta.repeats = 1e8": result_case("repeats 1e8"),
    "data_spec pointing at a 2 MB npz bomb": data_spec_bomb,
    "npz data: 2 MB inflating to 2.7 M images": npz_bomb_data,
    ".params of 5 MB inflating to 2 GiB": full_model_case("bomb"),
    "index twice: '5' and '05'": result_case("index twice: 5 and 05"),
    "duplicate key": text_case(lambda t: hostile.duplicate_key(t, first(part(json.loads(t))))),
    "one example in train and test": result_case("in train and test"),
    "log p the string '-1e-300'": result_case("log p a string"),
    "log p true": result_case("log p true"),
    "meta.learning_rate 0.5, settings.lr 0.001": result_case(
        "learning rate contradicts settings"),
    "every file claims experiment fashion_demo": claims_demo,
    "experiment named tiny_nn": named("tiny_nn"),
    "user experiment named fashion_demo": named("fashion_demo"),
    "experiment name ending in a newline": named("tiny\n"),
    "results_dir ending in a newline": named("tiny", results_dir="tiny\n"),
    "EXPERIMENTS_FILE path with a space": experiments_file_path(" "),
    "EXPERIMENTS_FILE path with a quote": experiments_file_path("'"),
    "epoch key '02'": result_case("epoch key 02"),
    "JSON nested 200000 deep": text_case(hostile.deep),
    "log p 1e308": result_case("log p 1e308"),
    "losses as strings": result_case("loss a string"),
    "meta.n = 1e11 (every file)": result_case("n 1e11"),
    "meta.n = 'abc'": result_case("n abc"),
    "meta.n = -5": result_case("n -5"),
    "meta.run = 'zero'": result_case("run zero"),
    "meta.num_folds = 1e6 (every file)": result_case("num_folds 1e6"),
    "npz labels as strings": npz_case(dict(x=X, y=np.array(["a", "b", "c", "d"]))),
    "npz labels NaN": npz_case(dict(x=X, y=np.array([0, 1, np.nan, 2]))),
    "npz with 0 images": npz_case(dict(x=np.zeros((0, 28, 28), np.uint8))),
    "npz RGB train, grey test": npz_case(dict(x=np.zeros((4, 28, 28, 3), np.uint8), x_test=X)),
    "npz: naming a directory": npz_case(folder=True),
    "epochs 1e9": setting(epochs=10**9),
    "n_is 1e7": setting(n_is=10**7),
    "latent_dim 1e7": setting(latent_dim=10**7),
    "ANALYSIS on a read-only disk": read_only,
    "full disk (ENOSPC) while training writes": disk_full,
    "all-NaN full-model weights": full_model_case("nan"),
    "checkpoints/ a link leading elsewhere": linked_checkpoints,
    "analysis/<exp>.npz a link leading elsewhere": linked_summary,
    "output/<exp> a link leading elsewhere": linked_figures,
}


# ----------------------------------------------------------------------------------------------
# running a case

def run_case(name: str, build, repo: Path, python: str, mem: int, timeout: float) -> dict:
    folder = Path(tempfile.mkdtemp(prefix="probe-"))
    w = Work(folder, repo, python)
    mounts = []
    try:
        probe = build(w)
        mounts = [m for m in (folder / "ro", folder / "full") if os.path.ismount(m)]
        if probe.na:
            return {"case": name, "first": "n/a: " + probe.na, "rc": "", "peak_mib": None}
        env = {k: v for k, v in os.environ.items()
               if k not in ("EXPERIMENTS_FILE", "MAKEFLAGS", "MFLAGS", "MAKELEVEL")}
        env.update(MPLBACKEND="Agg", OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1", **probe.env)

        def cap():
            resource.setrlimit(resource.RLIMIT_AS, (mem, mem))
        procs, logs = [], []
        for cmd in probe.cmds:
            log = open(folder / f"out{len(logs)}.txt", "w+")
            logs.append(log)
            procs.append(subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT,
                                          cwd=probe.cwd or repo, env=env, preexec_fn=cap))
            time.sleep(0.5 if len(probe.cmds) > 1 else 0)   # the first takes the job's lock
        # os.kill, not Popen.kill: that polls first, which reaps the child os.wait4 waits for
        timers = [threading.Timer(timeout, os.kill, (p.pid, signal.SIGKILL)) for p in procs]
        for t in timers:
            t.start()
        rcs, peak, killed = [], 0, False
        for p in procs:
            _, status, usage = os.wait4(p.pid, 0)
            p.returncode = os.waitstatus_to_exitcode(status)
            killed |= p.returncode == -9
            rcs.append(p.returncode)
            peak = max(peak, usage.ru_maxrss)     # KiB on Linux
        for t in timers:
            t.cancel()
        texts = []
        for log in logs:
            log.seek(0)
            texts.append(log.read())
            log.close()
        # the temporary folder and the checkout as short names, so the line fits a table cell
        texts = [t.replace(str(folder), "$TMP").replace(str(repo), "$REPO") for t in texts]
        lines = [x for x in texts[-1].splitlines() if x.strip()]
        row = {"case": name, "first": lines[0].strip() if lines else "(nothing)",
               "rc": ", ".join(map(str, rcs)) + (f" (killed after {timeout:g} s)" if killed
                                                 else ""),
               "peak_mib": round(peak / 1024), "lines": len(lines),
               "traceback": any("Traceback" in t for t in texts)}
        if probe.after:
            row["note"] = probe.after()
        return row
    except subprocess.CalledProcessError as e:
        return {"case": name, "first": f"n/a: the case could not be built here "
                                        f"({(e.stderr or '').strip().splitlines()[-1:]})",
                "rc": "", "peak_mib": None}
    finally:
        for m in mounts:
            subprocess.run(["umount", str(m)], capture_output=True)
        shutil.rmtree(folder, ignore_errors=True)


def cell(text: str, limit: int = 200) -> str:
    text = text.replace("|", "\\|").replace("\n", " ")
    return text if len(text) <= limit else text[: limit - 3] + "..."


def table(rows: list[dict], before: dict | None) -> str:
    def describe(r):
        if r is None:
            return ["n/a", "", ""]
        extra = []
        if r.get("lines", 1) > 1:
            extra.append(f"{r['lines']} lines")
        if r.get("traceback"):
            extra.append("traceback")
        if r.get("note"):
            extra.append(r["note"])
        first = "`" + cell(r["first"]) + "`" + (f" ({'; '.join(extra)})" if extra else "")
        peak = "" if r.get("peak_mib") is None else str(r["peak_mib"])
        return [first, str(r["rc"]), peak]
    head = ["case"] + (["before: first line", "rc", "peak MiB"] if before is not None else []) \
        + ["first line", "rc", "peak MiB"]
    out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cols = [r["case"]] + (describe(before.get(r["case"])) if before is not None else []) \
            + describe(r)
        out.append("| " + " | ".join(cols) + " |")
    return "\n".join(out) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="probe_hostile.py", description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, help="write the table (Markdown) here")
    p.add_argument("--save", type=Path, help="write the rows as JSON here")
    p.add_argument("--before", type=Path, help="rows of an earlier --save: before/after columns")
    p.add_argument("--repo", type=Path, default=HERE, help="checkout whose scripts run")
    p.add_argument("--python", default=sys.executable, help="its Python")
    p.add_argument("--only", nargs="+", help="cases whose name contains one of these")
    p.add_argument("--mem-gib", type=float, default=6, help="address-space cap per process")
    p.add_argument("--timeout", type=float, default=150, help="seconds per case")
    args = p.parse_args(argv)
    rows = []
    for name, build in CASES.items():
        if args.only and not any(o in name for o in args.only):
            continue
        t0 = time.monotonic()
        rows.append(run_case(name, build, args.repo.resolve(), args.python,
                             int(args.mem_gib * (1 << 30)), args.timeout))
        print(f"{time.monotonic() - t0:6.1f} s  {name}: rc {rows[-1]['rc']}  "
              f"{cell(rows[-1]['first'], 100)}", file=sys.stderr, flush=True)
    before = None
    if args.before:
        before = {r["case"]: r for r in json.loads(args.before.read_text())}
    text = table(rows, before)
    if args.save:
        args.save.write_text(json.dumps(rows, indent=1) + "\n")
    if args.out:
        args.out.write_text(text)
    else:
        print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())

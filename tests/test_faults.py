"""Training jobs killed at any point, then `make` again: the same bytes as runs never killed.

Faults come from tests/faults/sitecustomize.py (on PYTHONPATH; MEMO_FAULT_<job> chooses one per
job): SIGKILL mid-epoch, at the rename of a resume or result file, just after a result file's
rename, and at exit. Make must never delete a finished result file (they are .PRECIOUS), and
nothing finished is trained again. One make run kills five jobs of the tiny experiment at once,
each at its own point, to keep this fast.
"""
import json
import os
import re
import subprocess
from pathlib import Path

import pytest

from conftest import TINY, write_tiny_npz
from memo.config import experiments
from memo.files import results

ROOT = Path(__file__).resolve().parents[1]
FAULTS = ROOT / "tests" / "faults"

# job -> (fault, what the killed run leaves, what the next run logs for it)
SCENARIOS = {
    "cv_repeat0_fold0": ("mid_epoch:2", "resume", "resuming after epoch 1"),
    "cv_repeat0_fold1": ("before_rename:_resume.pt:2", "resume+orphan", "resuming after epoch 1"),
    "cv_repeat0_fold2": ("before_rename", "resume+orphan", "resuming after epoch 2"),
    "cv_repeat1_fold0": ("after_rename", "result", None),
    "cv_repeat1_fold1": ("at_exit", "result", None),
}
GROUP = ["cv_repeat0_fold0", "cv_repeat0_fold1", "cv_repeat0_fold2"]  # GROUP=3: one process


class Project:
    """The tiny experiment, and make on one result tree of it."""

    def __init__(self, root: Path):
        self.root = root
        npz = write_tiny_npz(root / "tiny.npz")
        self.exp_file = root / "experiments.json"
        self.exp_file.write_text(json.dumps({"tiny": dict(TINY, data=f"npz:{npz}")}))
        self.exp = experiments.load_user_experiments(self.exp_file)["tiny"]

    def files(self, tree: str, job: str) -> results.JobFiles:
        return results.job_files(self.exp, experiments.Job.parse(job), self.root / tree)

    def targets(self, tree: str, jobs) -> list[str]:
        return [str(self.files(tree, job).result) for job in jobs]

    def make(self, tree: str, *args, faults: dict | None = None) -> tuple[int, str]:
        env = {k: v for k, v in os.environ.items()
               if not k.startswith("MEMO_FAULT") and k not in ("MAKEFLAGS", "MFLAGS", "MAKELEVEL")}
        env["EXPERIMENTS_FILE"] = str(self.exp_file)
        if faults:
            env.update(PYTHONPATH=str(FAULTS), **faults)
        p = subprocess.run(
            ["make", "--no-print-directory", *args, f"RESULTS={self.root / tree}",
             f"ANALYSIS={self.root / 'analysis'}", f"EXPERIMENTS_FILE={self.exp_file}",
             f"PLAN={self.root / 'build' / 'experiments.mk'}"],
            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
            timeout=300)
        return p.returncode, p.stdout


def orphans(files: results.JobFiles) -> list[Path]:
    """Temporary files of killed writes beside the job's files: .<name>.<pid>.<hex>.tmp."""
    return sorted(p for f in (files.result, files.resume) if f.parent.is_dir()
                  for p in f.parent.glob(f".{f.name}.*.tmp"))


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    return Project(tmp_path_factory.mktemp("faults"))


@pytest.fixture(scope="module")
def runs(project):
    """Reference run; the same jobs killed; make again; make once more. What each left."""
    jobs = list(SCENARIOS)
    rc, out = project.make("reference", "-j2", *project.targets("reference", jobs))
    assert rc == 0, out
    reference = {job: project.files("reference", job).result.read_bytes() for job in jobs}

    faults = {f"MEMO_FAULT_{job}": spec for job, (spec, _, _) in SCENARIOS.items()}
    rc, killed = project.make("killed", "-k", "-j2", *project.targets("killed", jobs),
                              faults=faults)
    assert rc != 0, killed
    after_kill = {}
    for job in jobs:
        f = project.files("killed", job)
        after_kill[job] = {"result": f.result.read_bytes() if f.result.exists() else None,
                           "mtime": f.result.stat().st_mtime_ns if f.result.exists() else None,
                           # the latest resume file, or the one before while the next is written
                           "resume": f.resume.exists() or f.resume_previous.exists(),
                           "orphans": orphans(f)}
    rc, rerun = project.make("killed", "-j2", *project.targets("killed", jobs))
    assert rc == 0, rerun
    rc, again = project.make("killed", *project.targets("killed", jobs))
    assert rc == 0, again
    return dict(reference=reference, killed=killed, after_kill=after_kill, rerun=rerun,
                again=again)


def test_make_deletes_no_result_file_of_a_killed_job(runs):
    assert runs["killed"].count("Killed") == len(SCENARIOS), runs["killed"]
    assert "Deleting file" not in runs["killed"], runs["killed"]
    assert "memorization.py" not in runs["again"], runs["again"]   # everything is finished
    assert runs["again"].count("is up to date") == len(SCENARIOS), runs["again"]


@pytest.mark.parametrize("job", list(SCENARIOS))
def test_killed_job_then_make_gives_the_uninterrupted_result(project, runs, job):
    spec, left, resumed = SCENARIOS[job]
    state, files = runs["after_kill"][job], project.files("killed", job)
    ran = re.findall(r"--job (\S+)", runs["rerun"])
    if left == "result":
        # killed after the rename: the result file is finished work, kept whole, not retrained
        assert state["result"] == runs["reference"][job]
        # killed before the job removed its resume file, it stays (unused: the result exists)
        assert state["resume"] == (spec != "at_exit")
        assert job not in ran
        assert files.result.stat().st_mtime_ns == state["mtime"]
    else:
        assert state["result"] is None and state["resume"]
        assert bool(state["orphans"]) == (left == "resume+orphan")
        assert ran.count(job) == 1
        assert re.search(rf"\[tiny {job}\] {resumed}\b", runs["rerun"]), runs["rerun"]
    assert files.result.read_bytes() == runs["reference"][job]
    if left != "result":
        assert not files.resume.exists() and not files.resume_previous.exists()
    # A job's next run removes the temporary files of its killed writes (memo.training at the
    # start of a job, memo.fileio.remove_orphans): this checks that clean-up, not Make.
    assert orphans(files) == []


def test_make_keeps_the_finished_files_of_a_killed_group(project):
    """GROUP=3: one process writes three result files (a grouped target); killed after the
    second rename, Make keeps the two finished files; the next run completes the group."""
    files = project.targets("group", GROUP)
    rc, out = project.make("group", *files, "GROUP=3",
                           faults={"MEMO_FAULT": "after_rename:.json.gz:2"})
    assert rc != 0 and "Killed" in out and "Deleting file" not in out, out
    kept = {f: Path(f).read_bytes() for f in files[:2]}
    assert not Path(files[2]).exists()
    rc, out = project.make("group", *files, "GROUP=3")
    assert rc == 0 and out.count("--jobs") == 1, out
    # the group starts afresh (its members' resume files are not all there) with the same seeds
    for f, blob in kept.items():
        assert Path(f).read_bytes() == blob
    assert Path(files[2]).exists()

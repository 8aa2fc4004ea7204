"""One process per job: a second run of a job waits for the running one and trains nothing;
clean-up at start removes only the temporary files and folders of processes that are gone."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

from conftest import ROOT, TINY, write_tiny_npz
from memo import fileio
from memo.config import experiments
from memo.files import results


def _train(tmp_path, env):
    cmd = [sys.executable, str(ROOT / "scripts" / "memorization.py"), "--experiment", "tiny",
           "--job", "cv_repeat0_fold1", "--results-dir", str(tmp_path / "res"), "--device", "cpu",
           "--threads", "1"]
    return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)


def test_a_second_run_of_a_job_waits_for_the_first_and_trains_nothing(tmp_path, monkeypatch):
    npz = write_tiny_npz(tmp_path / "tiny.npz")
    spec = dict(TINY, data=f"npz:{npz}", epochs=4, eval_every=4)
    exp_file = tmp_path / "experiments.json"
    exp_file.write_text(json.dumps({"tiny": spec}))
    monkeypatch.setenv("EXPERIMENTS_FILE", str(exp_file))
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    result = results.job_files(experiments.get("tiny"), experiments.Job(0, 1),
                               tmp_path / "res").result
    lock = fileio.lock_path(result)

    first = _train(tmp_path, env)
    deadline = time.monotonic() + 120
    while not (lock.exists() and lock.read_text().strip() == str(first.pid)):
        assert first.poll() is None and time.monotonic() < deadline, first.communicate()
        time.sleep(0.02)
    first.send_signal(signal.SIGSTOP)  # holding the lock: the second run must find it taken
    try:
        second = _train(tmp_path, env)
        waiting = second.stderr.readline()
    finally:
        first.send_signal(signal.SIGCONT)
    out1, err1 = first.communicate(timeout=120)
    out2, err2 = second.communicate(timeout=120)
    assert first.returncode == 0 and second.returncode == 0, (err1, waiting + err2)
    assert waiting.startswith(f"memorization.py: waiting for process {first.pid}, ")
    assert "epoch 4/4" in out1 and "epoch" not in out2 + err2   # one of them trained
    assert "nothing to train" in out2 and "wrote" in out1
    assert not [p for p in result.parent.iterdir() if p.name.endswith(fileio.TMP_SUFFIX)]


def _dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def test_clean_up_spares_the_files_of_live_processes(tmp_path):
    target = tmp_path / "analysis" / "x.npz"
    target.parent.mkdir()
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        dead = _dead_pid()
        mine = fileio.temporary_name(target)
        theirs = target.with_name(f".{target.name}.{live.pid}.0a1b2c3d{fileio.TMP_SUFFIX}")
        gone = target.with_name(f".{target.name}.{dead}.0a1b2c3d{fileio.TMP_SUFFIX}")
        for p in (mine, theirs, gone):
            p.write_bytes(b"partial")
        assert fileio.remove_orphans(target) == sorted([mine, gone])
        assert theirs.exists() and not mine.exists() and not gone.exists()
        # temporary folders named with their pid (figures, report)
        folders = {pid: tmp_path / "analysis" / f".fig-{pid}-abc" for pid in (live.pid, dead)}
        for d in folders.values():
            (d / "sub").mkdir(parents=True)
        assert fileio.remove_stale_dirs(tmp_path / "analysis", ".fig-") == [folders[dead]]
        assert folders[live.pid].is_dir()
    finally:
        live.kill()
        live.wait()


def test_the_next_summary_removes_the_temporary_file_of_a_killed_one(tmp_path):
    """A summary killed mid-write leaves analysis/.<name>.npz.<pid>.<...>.tmp: the next run
    removes it (its pid is gone) and keeps one of a process still running."""
    import summarize
    from test_results_summary import make_experiment
    paths, _ = make_experiment(tmp_path)
    out = tmp_path / "analysis" / "exp.npz"
    out.parent.mkdir()
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        stale = {pid: out.with_name(f".{out.name}.{pid}.0a1b2c3d{fileio.TMP_SUFFIX}")
                 for pid in (_dead_pid(), live.pid)}
        for p in stale.values():
            p.write_bytes(b"partial")
        assert summarize.main(["--result-files", *map(str, paths), "-o", str(out), "--n-boot",
                               "10", "--data-root", str(tmp_path / "nodata")]) == 0
        assert sorted(p.name for p in out.parent.iterdir() if p.suffix == ".tmp") == [
            stale[live.pid].name]
    finally:
        live.kill()
        live.wait()


_CHILD = """
import sys
sys.path.insert(0, {scripts!r})
import cli
from pathlib import Path
outs = [Path(p) for p in sys.argv[1:]]
def job():
    with cli.one_writer("job.py", outs):
        for p in outs:
            p.write_text("child")
sys.exit(cli.run("job.py", job))
"""


def _wait_for_other_writer(tmp_path, rewritten: int) -> tuple[int, str, list[str]]:
    """A child process runs a job of two outputs while this one holds their lock; this one
    then rewrites `rewritten` of them (by rename, as every script writes) and lets go."""
    outs = [tmp_path / "a.npz", tmp_path / "a.csv"]
    for p in outs:
        p.write_text("old")
    with fileio.exclusive(outs[:1]):
        child = subprocess.Popen(
            [sys.executable, "-c", _CHILD.format(scripts=str(ROOT / "scripts")), *map(str, outs)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        waiting = child.stderr.readline()
        assert waiting.startswith(f"job.py: waiting for process {os.getpid()}, "), waiting
        for p in outs[:rewritten]:
            fileio.atomic_write_bytes(p, b"parent")
    _, err = child.communicate(timeout=60)
    return child.returncode, err, [p.read_text() for p in outs]


def test_a_run_that_waited_for_the_same_job_does_not_repeat_it(tmp_path):
    rc, err, contents = _wait_for_other_writer(tmp_path, rewritten=2)
    assert rc == 0 and contents == ["parent", "parent"]
    assert err.strip() == f"job.py: {tmp_path / 'a.npz'} already written by the process waited for; nothing to do"


def test_a_run_that_waited_still_works_when_the_other_left_an_output_unwritten(tmp_path):
    rc, err, contents = _wait_for_other_writer(tmp_path, rewritten=1)
    assert rc == 0 and err == "" and contents == ["child", "child"]

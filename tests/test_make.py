"""The Make chain end to end on a tiny npz data set: parallel folds, summary, resume."""
import os
import re
import subprocess
from pathlib import Path

import numpy as np

from memo import results, summary

ROOT = Path(__file__).resolve().parents[1]


def make(*args, env=None):
    p = subprocess.run(["make", "--no-print-directory", *args], cwd=ROOT, env=env,
                       capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stdout + p.stderr
    return p.stdout + p.stderr


def test_make_chain_builds_resumes_and_rebuilds_only_what_is_missing(tiny_experiment, tmp_path):
    exp_file, _ = tiny_experiment
    res, ana = tmp_path / "res", tmp_path / "ana"
    env = dict(os.environ, EXPERIMENTS_FILE=str(exp_file))
    common = [f"RESULTS={res}", f"ANALYSIS={ana}", f"EXPERIMENTS_FILE={exp_file}"]

    # -n shows the plan (7 training commands) and runs nothing
    out = make("-n", "memorization-tiny", *common, env=env)
    assert len(re.findall(r"memorization\.py .*--job", out)) == 7
    assert not res.exists()

    make("-j2", "summary-tiny", *common, env=env)
    files = sorted((res / "tiny" / "results").glob("*.json.gz"))
    assert len(files) == 7
    contents = {f.name: results.read_result(f) for f in files}
    mtimes = {f.name: f.stat().st_mtime_ns for f in files}
    first = summary.load(ana / "tiny.npz")
    assert (ana / "tiny.csv").exists()

    # lose one result file, and leave that job interrupted after epoch 2 with a checkpoint
    victim = next(f for f in files if f.name.endswith("cv_repeat1_fold2.json.gz"))
    victim.unlink()
    p = subprocess.run([str(ROOT / ".venv/bin/python"), "scripts/memorization.py",
                        "--experiment", "tiny", "--job", "cv_repeat1_fold2", "--threads", "1",
                        "--results-dir", str(res), "--stop-after", "2"],
                       cwd=ROOT, env=env, capture_output=True, text=True)
    assert p.returncode == 3, p.stderr
    assert not victim.exists()

    out = make("-j2", "summary-tiny", *common, env=env)
    assert re.findall(r"--job (\S+)", out) == ["cv_repeat1_fold2"]  # only that job ran
    assert "resuming after epoch 2" in out
    assert results.read_result(victim) == contents[victim.name]      # same seed => same numbers
    for f in files:
        if f != victim:
            assert f.stat().st_mtime_ns == mtimes[f.name]
    again = summary.load(ana / "tiny.npz")
    assert np.array_equal(again.M, first.M)

    # nothing missing: nothing to do
    out = make("-j2", "summary-tiny", *common, env=env)
    assert "--job" not in out

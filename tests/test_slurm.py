"""The Make pipeline through srun on a one-node SLURM cluster gives the same results as locally."""
import gzip
import json
import os
import re
import subprocess
import uuid
from pathlib import Path

import pytest

import plan
import slurm_cluster
from memo.config import experiments

ROOT = Path(__file__).resolve().parents[1]
MAKE_TIMEOUT = 600  # seconds per make run; the tiny experiment takes ~20 s on 2 cores


@pytest.fixture
def cluster(tmp_path_factory):
    """A running one-node cluster (slurm-wlm installed first if missing); stopped afterwards."""
    if os.geteuid() != 0:
        pytest.skip("needs root to install slurm-wlm and run slurmctld/slurmd")
    try:
        slurm_cluster.ensure_installed()
    except slurm_cluster.SlurmNotInstalledError as e:
        pytest.skip(f"slurm-wlm is not installed and could not be installed: {e}")
    c = slurm_cluster.start(tmp_path_factory.mktemp("slurm"))
    try:
        yield c
    finally:
        c.stop()


def make(env, *args):
    cmd = ["make", "--no-print-directory", "-j2", *args]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True, timeout=MAKE_TIMEOUT)
    assert proc.returncode == 0, f"{' '.join(cmd)} failed:\n{proc.stdout[-5000:]}"
    return proc.stdout


def files_under(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()}


def first_difference(a, b, path="") -> str:
    if isinstance(a, dict) and isinstance(b, dict):
        if a.keys() != b.keys():
            return f"{path or '/'}: keys differ: {sorted(a.keys() ^ b.keys())[:5]}"
        return next((d for k in a if (d := first_difference(a[k], b[k], f"{path}/{k}"))), "")
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        return next((d for i, (x, y) in enumerate(zip(a, b))
                     if (d := first_difference(x, y, f"{path}[{i}]"))), "")
    return "" if a == b else f"{path}: {a!r} != {b!r}"


def test_tiny_experiment_through_srun_matches_local_run(cluster, tiny_experiment, tmp_path):
    exp_file, _ = tiny_experiment
    job_name = f"memtest-{uuid.uuid4().hex[:8]}"
    # the generated Make plan goes to this test's directory, not the repository's build/
    plan_file = tmp_path / "build" / "experiments.mk"
    plan_file.parent.mkdir()
    common = ["memorization-tiny", f"EXPERIMENTS_FILE={exp_file}", f"PLAN={plan_file}"]
    env = cluster.env()
    # Both runs leave torch's thread count to the CLI: cores // 2 per job under `make -j2`, inside
    # srun (which passes MAKEFLAGS on, and runs on this machine) as outside it.
    make(env, *common, f"RESULTS={tmp_path / 'slurm_results'}",
         f"LAUNCH=srun -N1 -n1 -c1 --export=ALL --job-name={job_name}")
    make(env, *common, f"RESULTS={tmp_path / 'local_results'}")

    # every result file of the experiment, and the same files in both trees
    expected = plan.result_files(experiments.get("tiny"), root=".")
    assert len(expected) == 2 * 3 + 1  # repeats x folds + the full-data model
    slurm, local = files_under(tmp_path / "slurm_results"), files_under(tmp_path / "local_results")
    assert slurm == local
    assert {p for p in slurm if p.endswith(".json.gz")} == set(expected)
    for name in expected:
        a = json.loads(gzip.decompress((tmp_path / "slurm_results" / name).read_bytes()))
        b = json.loads(gzip.decompress((tmp_path / "local_results" / name).read_bytes()))
        assert a == b, f"{name} differs between the srun and local runs: {first_difference(a, b)}"

    # each result file was one SLURM job that ran to completion on this cluster
    shown = cluster.run("scontrol", "--oneliner", "show", "job").stdout.splitlines()
    jobs = [line for line in shown if re.search(rf"\bJobName={job_name}\b", line)]
    assert len(jobs) == len(expected), "\n".join(shown)
    for line in jobs:
        assert "JobState=COMPLETED" in line and "ExitCode=0:0" in line, line
        assert re.search(r"\bCommand=\S*python\S* ", line), line  # $(PY), the training CLI
        assert f" WorkDir={ROOT} " in line, line

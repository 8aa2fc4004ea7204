"""The Make chain end to end on a tiny npz data set: parallel folds, summary, resume; what
Make says about unknown experiments and bad experiments files; every generated file rebuilt
when missing."""
import dataclasses
import json
import os
import re
import subprocess
from pathlib import Path

import numpy as np
import pytest

import plan
from memo.config import experiments
from memo.files import results
from memo.score import summary

ROOT = Path(__file__).resolve().parents[1]


def run_make(*args, env=None):
    p = subprocess.run(["make", "--no-print-directory", *args], cwd=ROOT, env=env,
                       stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=600)
    return p.returncode, p.stdout


def make(*args, env=None):
    rc, out = run_make(*args, env=env)
    assert rc == 0, out
    return out


def test_make_chain_builds_resumes_and_rebuilds_only_what_is_missing(tiny_experiment, tmp_path):
    exp_file, _ = tiny_experiment
    res, ana = tmp_path / "res", tmp_path / "ana"
    env = dict(os.environ, EXPERIMENTS_FILE=str(exp_file))
    build = tmp_path / "build"  # the plan and the settings stamps, out of the repository's build/
    common = [f"RESULTS={res}", f"ANALYSIS={ana}", f"EXPERIMENTS_FILE={exp_file}",
              f"PLAN={build / 'experiments.mk'}"]

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
    assert "--job" not in out and "summarize.py" not in out

    # a lost CSV is rebuilt (the summary writes both again); nothing retrains
    (ana / "tiny.csv").unlink()
    out = make("summary-tiny", *common, env=env)
    assert "summarize.py" in out and "--job" not in out
    assert (ana / "tiny.csv").exists()
    # the nearest neighbours and the figures are planned when missing (dry run)
    out = make("-n", "nn-tiny", "figures-tiny", *common, env=env)
    assert "nearest_neighbours.py --experiment tiny" in out and "--job" not in out
    assert "analysis.py qualitative" in out

    # An edited setting reaches the summary: its settings stamp changes, Make re-runs it, and
    # the summary refuses the result files made under the old one. Nothing retrains.
    stamp = build / "settings" / "tiny.json"
    assert json.loads(stamp.read_text())["lr"] == 1e-3
    spec = json.loads(exp_file.read_text())
    exp_file.write_text(json.dumps({"tiny": dict(spec["tiny"], lr=2e-3)}))
    npz_mtime = (ana / "tiny.npz").stat().st_mtime_ns
    rc, out = run_make("summary-tiny", *common, env=env)
    assert rc != 0 and "--job" not in out, out
    assert "summarize.py --experiment tiny" in out, out
    refusal = [line for line in out.splitlines() if line.startswith("summarize.py: error:")]
    assert len(refusal) == 1 and "lr=0.001" in refusal[0] and "lr=0.002" in refusal[0], out
    assert json.loads(stamp.read_text())["lr"] == 2e-3
    assert (ana / "tiny.npz").stat().st_mtime_ns == npz_mtime  # refused: nothing written
    for f in files:
        assert f.stat().st_mtime_ns == mtimes[f.name] or f == victim

    # back to the settings the files were made with: the summary runs again, and passes;
    # a rewritten but unchanged experiments file leaves the stamp alone
    exp_file.write_text(json.dumps(spec))
    out = make("summary-tiny", *common, env=env)
    assert "summarize.py" in out and "--job" not in out
    stamp_mtime = stamp.stat().st_mtime_ns
    exp_file.write_text(json.dumps(spec))
    out = make("summary-tiny", *common, env=env)
    assert "summarize.py" not in out and stamp.stat().st_mtime_ns == stamp_mtime

    # Repeats grow: raising repeats 2 -> 3 plans and trains repeat 2's folds only, and the files
    # there keep their mtimes; a repeat's split and seeds depend on (seed, repeat) alone
    before = {f: f.stat().st_mtime_ns for f in files}
    exp_file.write_text(json.dumps({"tiny": dict(spec["tiny"], repeats=3)}))
    new_jobs = [f"cv_repeat2_fold{k}" for k in range(3)]
    out = make("-n", "summary-tiny", *common, env=env)
    assert sorted(re.findall(r"--job (\S+)", out)) == new_jobs, out
    out = make("-j2", "summary-tiny", *common, env=env)
    assert sorted(re.findall(r"--job (\S+)", out)) == new_jobs, out
    assert {f: f.stat().st_mtime_ns for f in files} == before
    grown = summary.load(ana / "tiny.npz")
    assert grown.values.shape[0] == 3 and np.array_equal(grown.values[:2], first.values)
    # a new repeat's model is the one a fresh 3-repeat experiment trains
    fresh = tmp_path / "fresh"
    p = subprocess.run([str(ROOT / ".venv/bin/python"), "scripts/memorization.py",
                        "--experiment", "tiny", "--job", "cv_repeat2_fold1", "--threads", "1",
                        "--results-dir", str(fresh)], cwd=ROOT, env=env, capture_output=True,
                       text=True)
    assert p.returncode == 0, p.stderr
    grown_file = next((res / "tiny" / "results").glob("*_cv_repeat2_fold1.json.gz"))
    fresh_file = fresh / "tiny" / "results" / grown_file.name
    assert results.read_result(fresh_file) == results.read_result(grown_file)
    # and the summary of all of them equals one made at once from a 3-repeat experiment
    once = summary.summarize(sorted((res / "tiny" / "results").glob("*.json.gz")),
                             progress=False,
                             experiment=dataclasses.replace(experiments.get("tiny"), repeats=3))
    for field in ("U", "V", "values", "held_out"):
        assert np.array_equal(getattr(grown, field), getattr(once, field), equal_nan=True)

    # shrinking back to 2 repeats ignores repeat 2's files: the first summary again, no training
    exp_file.write_text(json.dumps(spec))
    out = make("summary-tiny", *common, env=env)
    assert "summarize.py" in out and "--job" not in out
    shrunk = summary.load(ana / "tiny.npz")
    for field in ("U", "V", "M_ci_low", "M_ci_high", "values", "held_out"):
        assert np.array_equal(getattr(shrunk, field), getattr(first, field), equal_nan=True)


# ----------------------------------------------------------------------------------------------
# one clear line for a wrong name or a bad experiments file

def plan_args(tmp_path):
    return [f"PLAN={tmp_path / 'build' / 'experiments.mk'}", f"RESULTS={tmp_path / 'res'}",
            f"ANALYSIS={tmp_path / 'ana'}"]


@pytest.mark.parametrize("goal", ["memorization-nosuch", "summary-nosuch", "nn-nosuch",
                                  "figures-nosuch", "ANA/nosuch.npz", "ANA/nosuch.csv",
                                  "ANA/nosuch_nn.npz"])
def test_unknown_experiment_is_one_line_with_the_valid_names(tiny_experiment, tmp_path, goal):
    exp_file, _ = tiny_experiment
    goal = goal.replace("ANA", str(tmp_path / "ana"))
    rc, out = run_make(goal, f"EXPERIMENTS_FILE={exp_file}", *plan_args(tmp_path))
    assert rc != 0
    lines = out.strip().splitlines()
    assert len(lines) == 1, out
    assert f"unknown experiment 'nosuch' (in {goal})" in lines[0]
    names = re.search(r"valid names: (.*) \(add your own", lines[0])[1].split(", ")
    assert names == list(experiments.all_experiments())  # built-in ones and 'tiny'
    assert not (tmp_path / "res").exists() and not (tmp_path / "ana").exists()


def test_known_experiment_without_summary_says_how_to_make_it(tiny_experiment, tmp_path):
    exp_file, _ = tiny_experiment
    rc, out = run_make("figures-tiny", f"EXPERIMENTS_FILE={exp_file}", *plan_args(tmp_path))
    assert rc != 0 and len(out.strip().splitlines()) == 1, out
    assert "figures-tiny: no summary" in out and "make summary-tiny first" in out


@pytest.mark.parametrize("content, message", [
    ("{bad", "cannot read experiments file"),
    ('{"tiny": {"data": "bmnist", "lrr": 1}}', "has unknown fields ['lrr']"),
    ('{"tiny": {"data": "bmnist", "model": "BernoulliMLPVAE", "latent_dim": 4, "lr": -1, '
     '"epochs": 0, "eval_every": 1, "n_is": 8}}', "lr = -1 is not allowed"),
    (None, "No such file or directory"),
])
def test_bad_experiments_file_is_one_line_and_leaves_no_file(tmp_path, content, message):
    exp_file = tmp_path / "experiments.json"
    if content is not None:
        exp_file.write_text(content)
    env = dict(os.environ, EXPERIMENTS_FILE=str(exp_file))
    rc, out = run_make("summary-tiny", f"EXPERIMENTS_FILE={exp_file}", *plan_args(tmp_path),
                       env=env)
    assert rc != 0
    lines = out.strip().splitlines()
    assert len(lines) == 1 and "*** plan.py: error: " in lines[0] and message in lines[0], out
    assert str(exp_file) in lines[0]
    assert ".mk" not in lines[0]          # no word from Make about its include
    assert not (tmp_path / "build").exists() or not any((tmp_path / "build").rglob("*"))


def test_settings_stamps_are_rewritten_only_when_the_settings_change(tiny_experiment, tmp_path):
    exp_file, _ = tiny_experiment
    out, stamps = tmp_path / "plan.mk", tmp_path / "settings"
    args = ["make", "-o", str(out), "--settings-dir", str(stamps)]
    assert plan.main(args) == 0
    stamp = stamps / "tiny.json"
    first = stamp.read_text(), stamp.stat().st_mtime_ns, out.stat().st_mtime_ns
    # what the summary compares (results.RESULT_SETTINGS), with the experiment's values
    settings, spec = json.loads(first[0]), json.loads(exp_file.read_text())["tiny"]
    # (dp and model_args only when set: stamps of experiments without them stay as they were)
    assert set(settings) == (set(results.RESULT_SETTINGS) - {"dp", "model_args"}
                             | {"summarize_args", "repeats"})
    private = dataclasses.replace(experiments.get("tiny"), dp={"epsilon": 1})
    assert json.loads(plan.settings_json(private))["dp"]["epsilon"] == 1.0
    assert all(settings[k] == v for k, v in spec.items() if k in settings)
    assert settings["summarize_args"] == ""
    assert plan.main(args) == 0
    assert (stamp.read_text(), stamp.stat().st_mtime_ns, out.stat().st_mtime_ns) == first
    # a setting that changes no number (checkpoint_every) leaves the stamp alone; lr does not
    spec = json.loads(exp_file.read_text())
    exp_file.write_text(json.dumps({"tiny": dict(spec["tiny"], checkpoint_every=2)}))
    assert plan.main(args) == 0 and stamp.stat().st_mtime_ns == first[1]
    exp_file.write_text(json.dumps({"tiny": dict(spec["tiny"], lr=0.5)}))
    assert plan.main(args) == 0 and json.loads(stamp.read_text())["lr"] == 0.5
    # so do the summaries' own options (SUMMARIZE_ARGS)
    assert plan.main(args + ["--summarize-args", "--n-perm  100"]) == 0
    assert json.loads(stamp.read_text())["summarize_args"] == "--n-perm 100"
    # a bad file: plan.py's error, and no file touched
    exp_file.write_text("{bad")
    mtimes = {p: p.stat().st_mtime_ns for p in [out, *stamps.iterdir()]}
    assert plan.main(args) == 2
    assert {p: p.stat().st_mtime_ns for p in [out, *stamps.iterdir()]} == mtimes


def test_fragment_keeps_result_files_and_wires_the_summary(tiny_experiment):
    table = experiments.all_experiments()
    for group in (1, 3):
        text = plan.make_fragment(table, group)
        for name in table:
            assert f".PRECIOUS: $(RESULTS_{name})\n" in text
            assert f"summary-{name}: $(ANALYSIS)/{name}.npz $(ANALYSIS)/{name}.csv\n" in text
            # one command for both files (run once under make -j); nothing in FIGURES_ONLY runs
            assert (f"$(ANALYSIS)/{name}.npz $(ANALYSIS)/{name}.csv &: $(if $(FIGURES_ONLY),,"
                    f"$(RESULTS_{name}) $(SUMMARIZE_DEPS) $(SETTINGS_DIR)/{name}.json)\n") in text
            assert text.count(f"scripts/summarize.py --experiment {name} ") == 1


# ----------------------------------------------------------------------------------------------
# figures and the report (analysis.mk) when one of their files is lost: dry runs

@pytest.fixture
def analysed(tmp_path):
    """A scratch tree where every figure and the report are up to date (empty files)."""
    import sys
    (tmp_path / "scripts").symlink_to(ROOT / "scripts")
    (tmp_path / "Makefile").write_text(
        f"PY := {sys.executable}\ninclude {ROOT / 'analysis.mk'}\nprint-%: ; @echo $($*)\n")
    for name in ("demo.npz", "demo_nn.npz"):
        (tmp_path / "analysis").mkdir(exist_ok=True)
        (tmp_path / "analysis" / name).touch()
    files = subprocess.run(["make", "-s", "-C", str(tmp_path), "print-AN_FIGURES",
                            "print-AN_REPORT"], capture_output=True, text=True,
                           check=True).stdout.split()
    for i, f in enumerate(["analysis/demo.npz", "analysis/demo_nn.npz", *files]):
        p = tmp_path / f
        p.parent.mkdir(parents=True, exist_ok=True)
        p.touch()
        os.utime(p, (2e9 + i, 2e9 + i))   # each newer than what it is made from
    return tmp_path, files


def dry(tree, *goals):
    p = subprocess.run(["make", "-n", "--no-print-directory", "-C", str(tree), *goals],
                       capture_output=True, text=True)
    assert p.returncode == 0, p.stdout + p.stderr
    return [l for l in p.stdout.splitlines() if "scripts/" in l]


def test_a_lost_figure_or_report_file_is_rebuilt(analysed):
    tree, files = analysed
    assert dry(tree, "figures", "report") == []
    assert "output/report.pdf" in files
    (tree / "output/demo/losses.png").unlink()      # read by the report made without LaTeX
    cmds = dry(tree, "report")
    assert any("analysis.py losses analysis/demo.npz" in c for c in cmds), cmds
    assert any("report.py" in c for c in cmds), cmds
    (tree / "output/demo/losses.png").touch()
    (tree / "output/report.pdf").unlink()
    assert [c for c in dry(tree, "report") if "report.py" in c]
    if "output/report.tex" in files:                # written by LaTeX only
        (tree / "output/report.pdf").touch()
        (tree / "output/report.tex").unlink()
        assert [c for c in dry(tree, "report") if "report.py" in c]


# ----------------------------------------------------------------------------------------------
# the code each command runs: prerequisites from the import graph (plan.py deps)

def test_prerequisites_are_the_code_each_command_imports(tmp_path):
    import shutil
    import sys
    p = subprocess.run([sys.executable, "scripts/plan.py", "deps", "scripts/summarize.py"],
                       cwd=ROOT, capture_output=True, text=True, check=True)
    listed = p.stdout.split()
    assert {"scripts/summarize.py", "scripts/cli.py", "scripts/memo/files/summary.py",
            "scripts/memo/score/summary.py", "scripts/memo/score/calibration.py",
            "scripts/memo/__init__.py"} <= set(listed)
    assert not [f for f in listed if "/train/" in f or "/figures/" in f or "/measures/" in f]
    fragment = plan.make_fragment(experiments.all_experiments())
    for var in ("SUMMARIZE_DEPS", "NN_DEPS", "MEASURES_DEPS", "SWEEP_DEPS", "AN_CODE"):
        assert f"\n{var} := \\\n  " in fragment, var
    assert "measures:scripts/memo/score/rankstats.py" in fragment.split("AN_CODE := ")[1]

    # a copy of scripts/ whose figures and report are all up to date; then one module changes
    tree = tmp_path / "tree"
    shutil.copytree(ROOT / "scripts", tree / "scripts",
                    ignore=shutil.ignore_patterns("__pycache__"))
    (tree / "Makefile").write_text(
        f"PY := {sys.executable}\ninclude {ROOT / 'analysis.mk'}\nprint-%: ; @echo $($*)\n")
    inputs = ["analysis/demo.npz", "analysis/demo_nn.npz", "analysis/demo_measures.npz"]
    for name in inputs:
        (tree / name).parent.mkdir(exist_ok=True)
        (tree / name).touch()
    files = subprocess.run(["make", "-s", "-C", str(tree), "print-AN_FIGURES", "print-AN_REPORT"],
                           capture_output=True, text=True, check=True).stdout.split()
    for code in (tree / "scripts").rglob("*.py"):
        os.utime(code, (1e9, 1e9))
    for i, f in enumerate(inputs + files):
        (tree / f).parent.mkdir(parents=True, exist_ok=True)
        (tree / f).touch()
        os.utime(tree / f, (2e9 + i, 2e9 + i))
    assert dry(tree, "figures", "report") == []
    os.utime(tree / "scripts/memo/score/rankstats.py", (3e9, 3e9))  # the measures' AUROC
    cmds = dry(tree, "figures", "report")
    assert any("analysis.py measures analysis/demo.npz" in c for c in cmds), cmds
    assert any("report.py" in c for c in cmds), cmds
    assert not any("analysis.py losses" in c or "analysis.py neighbours" in c for c in cmds)


"""The Make chain end to end on a tiny npz data set: parallel folds, summary, resume, then
all-EXP the rest of the way; settings that stick; what Make says about unknown experiments and
bad experiments files; every generated file rebuilt when missing."""
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
from memo.score import flagged as flagged_list
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

    # all-tiny: the rest of the way (nothing to train), ending with where the answer is
    out_dir = tmp_path / "out"
    end = [f"AN_OUT={out_dir}", "JOBS=2"]
    env_fast = dict(env, MEMO_NO_LATEX="1")
    out = make("all-tiny", *common, *end, env=env_fast)
    assert "--job" not in out and "design K" not in out   # every model trained: no design line
    last = out.strip().splitlines()[-1]
    for path in (ana / "tiny.csv", ana / "tiny_flagged.csv", ana / "tiny_measures.csv",
                 out_dir / "tiny", out_dir / "report.pdf"):
        assert str(path) in last and path.exists(), (path, last)
    for figure in ("neighbours", "measures", "gallery"):
        assert (out_dir / "tiny" / f"{figure}.png").exists(), figure
    assert summary.load(ana / "tiny.npz").meta["summary_options"]["fdr_q"] == 0.05

    # fdr_q set in the experiments file: the summary is made again with it (no training), and
    # the measures, figures and report made from the earlier one are planned again
    exp_file.write_text(json.dumps({"tiny": dict(spec["tiny"], fdr_q=0.2)}))
    out = make("summary-tiny", *common, env=env)
    assert "summarize.py --experiment tiny" in out and "--job" not in out
    assert summary.load(ana / "tiny.npz").calibration["fdr_q"] == 0.2
    assert "measures.py --experiment tiny" in make("-n", "measures-tiny", *common, env=env)
    out = make("-n", "figures-tiny", "report", *common, *end, env=env_fast)
    assert "report.py" in out and "analysis.py measures" in out, out
    # the measures of the earlier summary are never drawn: refused in one line
    p = subprocess.run([str(ROOT / ".venv/bin/python"), "scripts/analysis.py", "measures",
                        str(ana / "tiny.npz"), "--out", str(tmp_path / "stale")], cwd=ROOT,
                       env=env_fast, capture_output=True, text=True)
    lines = (p.stdout + p.stderr).strip().splitlines()
    assert p.returncode != 0 and len(lines) == 1, lines
    assert "was computed from an earlier" in lines[0] and "make measures-tiny" in lines[0]
    assert not (tmp_path / "stale").exists() or not any((tmp_path / "stale").iterdir())

    # SUMMARIZE_ARGS makes the summary with its options, and a later target without it keeps
    # that summary (settings that stick); given empty, the experiment's options again
    make("summary-tiny", "SUMMARIZE_ARGS=--n-boot 10", *common, env=env)
    assert summary.load(ana / "tiny.npz").meta["summary_overrides"] == {"n_boot": 10}
    out = make("-n", "measures-tiny", *common, env=env)
    assert "summarize.py" not in out and "measures.py --experiment tiny" in out
    out = make("summary-tiny", "SUMMARIZE_ARGS=", *common, env=env)
    assert "summarize.py --experiment tiny" in out
    assert summary.load(ana / "tiny.npz").meta["summary_overrides"] == {}


# ----------------------------------------------------------------------------------------------
# one clear line for a wrong name or a bad experiments file

def plan_args(tmp_path):
    return [f"PLAN={tmp_path / 'build' / 'experiments.mk'}", f"RESULTS={tmp_path / 'res'}",
            f"ANALYSIS={tmp_path / 'ana'}"]


@pytest.mark.parametrize("goal", ["all-nosuch", "memorization-nosuch", "summary-nosuch",
                                  "nn-nosuch",
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
            written = (f"$(ANALYSIS)/{name}.npz $(ANALYSIS)/{name}.csv "
                       f"$(ANALYSIS)/{name}{flagged_list.SUFFIX}")
            assert f".PRECIOUS: $(RESULTS_{name})\n" in text
            assert f"summary-{name}: {written}\n" in text
            # one command for all three files (run once under make -j); nothing in FIGURES_ONLY
            # runs
            assert (f"{written} &: $(if $(FIGURES_ONLY),,"
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



# ----------------------------------------------------------------------------------------------
# one experiment end to end (make all-EXP), and settings that stick

def test_figures_name_what_they_leave_out_and_the_target_that_makes_it(analysed):
    tree, _ = analysed
    (tree / "analysis" / "demo_nn.npz").unlink()
    p = subprocess.run(["make", "-n", "--no-print-directory", "-C", str(tree), "figures-demo"],
                       capture_output=True, text=True)
    said = [l for l in p.stdout.splitlines() if "left out" in l]
    assert len(said) == 1 and "neighbours (make nn-demo)" in said[0], p.stdout
    assert "measures (make measures-demo)" in said[0]


def test_an_override_of_the_summary_options_sticks_until_given_again(tiny_experiment, tmp_path):
    exp_file, _ = tiny_experiment
    out, stamps = tmp_path / "plan.mk", tmp_path / "settings"
    args = ["make", "-o", str(out), "--settings-dir", str(stamps)]
    stamp = stamps / "tiny.json"

    def summarize_line():
        return next(l for l in out.read_text().splitlines()
                    if "summarize.py --experiment tiny " in l)

    assert plan.main(args + ["--summarize-args", "--n-perm  100"]) == 0
    assert json.loads(stamp.read_text())["summarize_args"] == "--n-perm 100"
    assert summarize_line().endswith("-o $(ANALYSIS)/tiny.npz --n-perm 100)")
    mtime = stamp.stat().st_mtime_ns
    assert plan.main(args) == 0            # not given: kept, the stamp untouched
    assert stamp.stat().st_mtime_ns == mtime and summarize_line().endswith("--n-perm 100)")
    assert plan.main(args + ["--summarize-args", ""]) == 0   # given empty: the experiment's
    assert json.loads(stamp.read_text())["summarize_args"] == ""
    assert summarize_line().endswith("-o $(ANALYSIS)/tiny.npz)")
    # an experiment's own option is part of the stamp; a changed setting ends an override
    assert plan.main(args + ["--summarize-args", "--n-boot 5"]) == 0
    spec = json.loads(exp_file.read_text())["tiny"]
    exp_file.write_text(json.dumps({"tiny": dict(spec, fdr_q=0.1)}))
    assert plan.main(args) == 0
    settings = json.loads(stamp.read_text())
    assert settings["fdr_q"] == 0.1 and settings["summarize_args"] == ""
    assert "--n-boot" not in summarize_line()


def test_summary_options_are_checked_settings(tiny_experiment):
    exp_file, _ = tiny_experiment
    spec = json.loads(exp_file.read_text())["tiny"]
    exp_file.write_text(json.dumps({"tiny": dict(spec, fdr_q=2, test="z", n_perm=-1)}))
    with pytest.raises(experiments.SettingsError) as e:
        experiments.load_user_experiments()
    lines = str(e.value).splitlines()
    assert len(lines) == 3 and all(str(exp_file) in l for l in lines)
    assert {l.split(": ")[2].split(" = ")[0] for l in lines} == {"fdr_q", "test", "n_perm"}
    exp_file.write_text(json.dumps({"tiny": dict(spec, fdr_q=0.1, test="t")}))
    exp = experiments.load_user_experiments()["tiny"]
    assert experiments.summary_options(exp) == {"test": "t", "n_perm": 2000, "fdr_q": 0.1,
                                                 "n_boot": 1000}


def test_the_design_is_said_before_training_with_a_warning_when_it_cannot_flag(
        tiny_experiment, tmp_path):
    exp = experiments.get("tiny")
    line = plan.design_line(exp, str(tmp_path))
    assert line.startswith("tiny: design K = 3, L = 2: 7 models, 7 to train")
    assert "warning" not in line
    two = dataclasses.replace(exp, folds=2, test="t")
    assert "warning: this design cannot flag: K = 2" in plan.design_line(two, str(tmp_path))
    # the permutation test at K^L = 9 labellings cannot reach q/n = 0.05/60
    perm = dataclasses.replace(exp, test="permutation")
    assert "cannot flag: the smallest attainable p-value" in plan.design_line(perm, str(tmp_path))
    for f in plan.result_files(exp, str(tmp_path)):  # all trained: nothing to say
        Path(f).parent.mkdir(parents=True, exist_ok=True)
        Path(f).touch()
    assert plan.design_line(exp, str(tmp_path)) == ""


def test_the_time_is_estimated_from_make_bench_else_from_the_quick_measure(tiny_experiment,
                                                                           tmp_path):
    exp = experiments.get("tiny")
    rates = dict(train_one=2000.0, train_group=5000.0, train_base=1000.0, is_one=50.0,
                 is_group=100.0, is_base=10.0)

    def report(name, scale):
        path = tmp_path / name
        path.write_text(json.dumps({"devices": {"cpu": {"rates": {
            exp.model: {k: v * scale for k, v in rates.items()}}}}}))
        return path
    careful, quick = report("bench.json", 1.0), report("quick.json", 2.0)
    missing = tmp_path / "none.json"
    assert plan.estimated_hours(exp, 60, (missing,)) is None
    hours, used = plan.estimated_hours(exp, 60, (careful, quick))
    assert used == careful                     # make bench's rates first
    half, used = plan.estimated_hours(exp, 60, (missing, quick))
    assert used == quick and half == pytest.approx(hours / 2)   # twice the rates, half the time
    more, _ = plan.estimated_hours(dataclasses.replace(exp, repeats=4), 60, (careful,))
    assert hours < more < 2 * hours            # the full model does not double
    assert plan.quick_report(exp.model).name == f"bench_quick_{exp.model}.json"

#!/usr/bin/env python3
"""Turn the experiment table into Make rules: one file target per result file.

The Makefile includes the output (build/experiments.mk), so every experiment is defined once,
in memo/config/experiments.py (or EXPERIMENTS_FILE), and Make only knows what this prints.

  python scripts/plan.py make            # the Make fragment
  python scripts/plan.py make --group 10 # the same, the folds of a repeat trained together
  python scripts/plan.py make -o build/experiments.mk --settings-dir build/settings
                                         # what the Makefile runs: files rewritten only on change
  python scripts/plan.py files EXP       # the result files of one experiment
  python scripts/plan.py deps scripts/summarize.py
                                         # every repository file a script imports, at any depth

A command's outputs depend on the code it runs: the plan gives Make those prerequisites from the
import graph (SUMMARIZE_DEPS, NN_DEPS, MEASURES_DEPS, SWEEP_DEPS, and AN_CODE for the figures
and the report, analysis.mk), never from lists kept by hand. Result files are left out on
purpose: a finished model is not trained again because the code changed.
"""
from __future__ import annotations

import argparse
import ast
import functools
import json
import os
import sys
from dataclasses import asdict
from pathlib import Path

import bench
import cli
from memo import figures
from memo.config import design, experiments, naming
from memo import fileio
from memo.files import results
from memo.score import calibration, flagged as flagged_list

SCRIPTS = Path(__file__).absolute().parent   # not resolved: a linked scripts/ stays as linked


def result_file(exp: experiments.Experiment, job: experiments.Job, root: str = "$(RESULTS)") -> str:
    return str(results.job_files(exp, job, root).result)


def result_files(exp: experiments.Experiment, root: str = "$(RESULTS)") -> list[str]:
    return [result_file(exp, job, root) for job in exp.jobs()]


def groups(exp: experiments.Experiment, size: int) -> list[list[experiments.Job]]:
    """Jobs trained together by one process: folds of one repeat, `size` at a time."""
    out = []
    for r in range(exp.repeats):
        folds = exp.cv_jobs(r)
        out += [folds[i:i + size] for i in range(0, len(folds), size)]
    return out + [[experiments.FULL_JOB]]


def grouped_rules(exp: experiments.Experiment, size: int) -> tuple[list[str], list[str]]:
    """(Make lines, files left to the one-job rule) when the jobs run `size` to a process.

    Each group is one grouped target (GNU make >= 4.3, `a b c &: ...`): its recipe runs once
    and writes all of the group's files.
    """
    experiments.refuse_private(exp)
    lines, single = [], []
    for i, jobs in enumerate(groups(exp, size)):
        files = [result_file(exp, job) for job in jobs]
        if len(jobs) == 1:
            single += files
            continue
        var = f"GROUP_{exp.name}_{i}"
        lines += [f"{var} := \\\n  " + " \\\n  ".join(files),
                  f"$({var}) &: | $(SETUP)",
                  f"\t$(LAUNCH) $(TRAIN) --experiment {exp.name} "
                  f"--jobs {' '.join(j.tag for j in jobs)} --output $({var})"]
    return lines, single


def settings_json(exp: experiments.Experiment, summarize_args: str = "") -> str:
    """The settings a summary depends on (results.STAMP_SETTINGS): those a result depends on, as
    the summary compares them (a change of checkpoint_every, which changes no number, does not
    re-run the summary), the repeats it reads, its own options (the experiment's fields), and
    the command-line override SUMMARIZE_ARGS it was last made with."""
    values = asdict(exp)
    stamp = {k: values[k] for k in results.STAMP_SETTINGS}
    # settings at their defaults are left out, as result files leave them out: stamps from
    # before these settings existed stay valid
    for key, default in {**results.UNRECORDED, **experiments.summary_options(None)}.items():
        if stamp[key] == default:
            del stamp[key]
    stamp["summarize_args"] = " ".join(summarize_args.split())
    return json.dumps(stamp, sort_keys=True) + "\n"


def kept_override(path: Path, exp: experiments.Experiment) -> str:
    """The SUMMARIZE_ARGS of a stamp when the experiment's settings are still those it holds;
    else "" (a summary re-made for changed settings is made with the experiment's options)."""
    try:
        old = json.loads(path.read_text())
        args = old.get("summarize_args", "")
    except (OSError, ValueError, AttributeError):
        return ""
    return args if isinstance(args, str) and settings_json(exp, args) == path.read_text() else ""


def write_if_changed(path: Path, text: str) -> bool:
    """Write text to path unless it holds it already: an unchanged file keeps its mtime, so
    Make rebuilds nothing on its account. Atomic: a reader never sees a part."""
    try:
        if path.read_text() == text:
            return False
    except (OSError, UnicodeDecodeError):
        pass
    fileio.atomic_write_bytes(path, text.encode())
    return True


def summary_overrides(table: dict[str, experiments.Experiment], folder: Path | None,
                      summarize_args: str | None = None) -> dict[str, str]:
    """The command-line options each summary is made with (SUMMARIZE_ARGS).

    summarize_args: SUMMARIZE_ARGS when given (even empty: back to the experiment's options);
    None when not given, which keeps the options of each stamp in `folder` whose settings are
    unchanged, so that a later target that only reads a summary never re-makes it with other
    options (docs/calibration.md, "Settings that stick")."""
    if summarize_args is not None or folder is None:
        return {name: " ".join((summarize_args or "").split()) for name in table}
    return {name: kept_override(folder / f"{name}.json", exp) for name, exp in table.items()}


def write_settings(table: dict[str, experiments.Experiment], folder: Path,
                   overrides: dict[str, str] | None = None) -> None:
    """One stamp per experiment, <folder>/<name>.json, that the summary depends on: editing
    an experiment's settings makes Make re-run its summary, which compares them with the
    settings each result file records. Result files do not depend on it (files trained
    elsewhere or downloaded have no stamp of their own; they are compared by content)."""
    for name, exp in table.items():
        write_if_changed(folder / f"{name}.json",
                         settings_json(exp, (overrides or {}).get(name, "")))


# ----------------------------------------------------------------------------------------------
# the design, said before training

BENCH_REPORT = Path("output") / "bench.json"   # scripts/bench.py's measured rates (make bench)


def quick_report(model: str) -> Path:
    """Where `make all-EXP` keeps `bench.py --quick`'s rates of one model: measured once, before
    an experiment's first training, when make bench has not measured this machine."""
    return BENCH_REPORT.with_name(f"bench_quick_{model}.json")


def estimated_hours(exp: experiments.Experiment, n: int,
                    reports: tuple[Path, ...] | None = None) -> tuple[float, Path] | None:
    """(hours to train and evaluate every model of exp one at a time, the report whose rates
    gave them): this machine's rates for its model in make bench's report, else in the quick
    one (importance sampling scaled to exp's n_is); None without a report that has them."""
    for report in reports or (BENCH_REPORT, quick_report(exp.model)):
        try:
            devices = json.loads(report.read_text())["devices"]
            rates = dict(next(iter(devices.values()))["rates"][exp.model])
            rates["is_one"] *= bench.MODELS[exp.model].n_is / exp.n_is
            n_test = naming.controls_count(exp) or 0
            return bench.project(rates, exp.epochs, exp.eval_every, n, n_test, exp.folds,
                                 exp.repeats)["hours_one_at_a_time"], report
        except (OSError, ValueError, KeyError, TypeError, StopIteration, ZeroDivisionError):
            continue
    return None


def design_line(exp: experiments.Experiment, root: str) -> str:
    """What training exp means, in a line, with a warning when its design cannot flag; "" when
    every result file exists already."""
    todo = sum(not Path(f).exists() for f in result_files(exp, root))
    if not todo:
        return ""
    n = naming.max_examples(exp)
    estimate = estimated_hours(exp, n) if n else None
    if estimate is None:
        when = "; time not estimated: make bench measures this machine's speed"
    else:
        hours, report = estimate
        source = ("rates of make bench" if report == BENCH_REPORT else
                  f"a quick measure, {report}; make bench measures with care")
        minutes = "under a minute" if hours * 60 < 1 else f"about {hours * 60:.0f} min"
        when = f", {minutes} one model at a time ({source})"
    line = (f"{exp.name}: design K = {exp.folds}, L = {exp.repeats}: "
            f"{design.models(exp.folds, exp.repeats)} models, {todo} to train{when}")
    problem = design.t_test_problem(exp.folds, exp.test, exp.n_perm)
    if problem is None and exp.test == "permutation" and n:
        problem = calibration.design_note(exp.folds, exp.repeats, exp.n_perm, n, exp.fdr_q)
    if problem:   # on the same line: Make shows what the plan says as one line
        line += f"; warning: this design cannot flag: {problem} (docs/calibration.md)"
    return line


# ----------------------------------------------------------------------------------------------
# the code each command runs: its imports, followed through the repository

@functools.cache
def _module_file(name: str) -> Path | None:
    """The repository file of module `name` (scripts/ is the import root), or None."""
    base = SCRIPTS.joinpath(*name.split("."))
    for path in (base.with_suffix(".py"), base / "__init__.py"):
        if path.is_file():
            return path
    return None


def _type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


@functools.cache
def imported_modules(path: Path) -> frozenset[str]:
    """The modules a file imports anywhere in it (inside functions too: that code runs as
    well), without those under `if TYPE_CHECKING:`, which never run. A `from a import b` names
    the module a.b when there is one, else a."""
    package = list(path.relative_to(SCRIPTS).with_suffix("").parts[:-1])
    out: set[str] = set()

    def walk(statements: list[ast.stmt]) -> None:   # imports are statements: no expressions
        for st in statements:
            if isinstance(st, ast.Import):
                out.update(a.name for a in st.names)
            elif isinstance(st, ast.ImportFrom):
                if st.level:   # relative: from the file's package, one level up per extra dot
                    base = package[:len(package) - (st.level - 1)]
                    source = ".".join(base + ([st.module] if st.module else []))
                else:
                    source = st.module
                for a in st.names:
                    sub = f"{source}.{a.name}"
                    out.add(sub if _module_file(sub) else source)
            elif isinstance(st, ast.If) and _type_checking(st.test):
                walk(st.orelse)
            else:
                for block in ("body", "orelse", "finalbody", "handlers", "cases"):
                    walk(getattr(st, block, None) or [])

    walk(ast.parse(path.read_text(), str(path)).body)
    return frozenset(out)


def code_files(*paths: Path) -> list[str]:
    """Every repository file that running `paths` (files under scripts/) imports, at any depth,
    the packages each import runs first included, and `paths` themselves: sorted, relative to
    the current folder (Make's)."""
    seen: set[Path] = set()
    todo = list(paths)
    while todo:
        path = todo.pop()
        if path in seen:
            continue
        seen.add(path)
        for name in imported_modules(path):
            parts = name.split(".")
            for i in range(1, len(parts) + 1):   # memo, memo.data, memo.data.planted
                found = _module_file(".".join(parts[:i]))
                if found is not None:
                    todo.append(found)
    return sorted(os.path.relpath(p) for p in seen)


def analysis_code() -> list[str]:
    """FIGURE:FILE for every file each figure's command runs (scripts/analysis.py and the
    figure's module, which memo.figures imports by name), and report:FILE for the report's."""
    analysis = SCRIPTS / "analysis.py"
    words = [f"{name}:{f}" for name in figures.FIGURES
             for f in code_files(analysis, SCRIPTS / "memo" / "figures" / f"{name}.py")]
    return words + [f"report:{f}" for f in code_files(SCRIPTS / "report.py")]


def deps_fragment() -> list[str]:
    """The Make variables of the code each command runs (from the import graph)."""
    def var(name: str, files: list[str]) -> str:
        return f"{name} := \\\n  " + " \\\n  ".join(files)
    return [var("SUMMARIZE_DEPS", code_files(SCRIPTS / "summarize.py")),
            var("NN_DEPS", code_files(SCRIPTS / "nearest_neighbours.py")),
            var("MEASURES_DEPS", code_files(SCRIPTS / "measures.py")),
            var("SWEEP_DEPS", code_files(SCRIPTS / "sweep.py")),
            var("AN_CODE", analysis_code()),
            *figure_lists(), ""]


def figure_lists() -> list[str]:
    """analysis.mk's lists of figures, from memo.figures (the one list of what exists)."""
    return [f"AN_SINGLE := {' '.join(figures.ONE_EXPERIMENT)}",
            f"AN_SERIES := {' '.join(figures.SERIES)}"]


def make_fragment(table: dict[str, experiments.Experiment], group: int = 1,
                  overrides: dict[str, str] | None = None) -> str:
    """The Make rules of every experiment; overrides: each summary's command-line options
    (summary_overrides; default: SUMMARIZE_ARGS as Make has it)."""
    lines = ["# Generated by scripts/plan.py from the experiment table and the import graph; "
             "do not edit.",
             f"EXPERIMENTS := {' '.join(table)}",
             f"PAPER_EXPERIMENTS := {' '.join(experiments.PAPER_EXPERIMENTS)}",
             f"DEMO := {experiments.DEMO_EXPERIMENT}",
             f"BENCHMARK := {experiments.BENCHMARK_EXPERIMENT}",
             f"SIZE_SWEEP := {' '.join(experiments.SIZE_SWEEP)}",
             f"DP_SWEEP := {' '.join(experiments.DP_SWEEP)}",
             # all-EXP measures a model's speed once when neither report has it
             f"BENCH_MODELS := {' '.join(bench.MODELS)}",
             f"BENCH_QUICK = {quick_report('$1')}", "",
             "# the code each command runs (its prerequisites beside its input files)",
             *deps_fragment()]
    for name, exp in table.items():
        files = result_files(exp)
        full_files = results.job_files(exp, experiments.FULL_JOB, "$(RESULTS)")
        full = str(full_files.result)
        # one pattern rule for the jobs: the file names differ only in the job tag
        prefix = full.removesuffix(experiments.FULL_JOB.tag + ".json.gz")
        # private training is one model per process (memo/train/private.py): GROUP leaves it alone
        grouped, single = (grouped_rules(exp, group) if group > 1 and exp.dp is None
                           else ([], [f"$(RESULTS_{name})"]))
        npz, csv = f"$(ANALYSIS)/{name}.npz", f"$(ANALYSIS)/{name}.csv"
        flagged_csv = f"$(ANALYSIS)/{name}{flagged_list.SUFFIX}"
        summarize = (f"$(PY) scripts/summarize.py --experiment {name} "
                     f"--result-files $(RESULTS_{name}) -o {npz} "
                     f"{(overrides or {}).get(name, '$(SUMMARIZE_ARGS)')}").rstrip()
        lines += [
            f"RESULTS_{name} := \\\n  " + " \\\n  ".join(files),
            # A result file is whole once it exists (written to a temporary name, then renamed).
            # Make must not delete it when the job is killed after the rename (by a signal, or
            # failing under .DELETE_ON_ERROR): the job may have removed its resume file already,
            # and the model would be trained again from scratch.
            f".PRECIOUS: $(RESULTS_{name})",
            *grouped,
            f"{' '.join(single)}: {prefix}%.json.gz: | $(SETUP)",
            f"\t$(LAUNCH) $(TRAIN) --experiment {name} --job $* --output $@",
            f"memorization-{name}: $(RESULTS_{name})",
            # One command writes all three (a lost CSV is written again, and `make -j` runs
            # it once). Figures and the report (FIGURES_ONLY) use the summaries as they are and
            # never train: there a summary depends on nothing, and a missing one is an error.
            f"{npz} {csv} {flagged_csv} &: $(if $(FIGURES_ONLY),,$(RESULTS_{name}) "
            f"$(SUMMARIZE_DEPS) $(SETTINGS_DIR)/{name}.json)",
            f"\t$(if $(FIGURES_ONLY),$(error {npz} or its CSV is missing: make summary-{name} "
            f"first (figures and the report never train)),{summarize})",
            f"summary-{name}: {npz} {csv} {flagged_csv}",
            # nearest neighbours need the full model's final checkpoint, written with its result
            f"$(ANALYSIS)/{name}_nn.npz: {full} $(NN_DEPS)",
            f"\t$(PY) scripts/nearest_neighbours.py --experiment {name} --results-dir $(RESULTS)"
            f" $(if $(DEVICE),--device $(DEVICE)) -o $@",
            f"nn-{name}: $(ANALYSIS)/{name}_nn.npz",
            # the other memorization measures: the summary (M) and the full model's files;
            # as the summary, used as they are by figures and the report (minutes to compute)
            f"$(ANALYSIS)/{name}_measures.npz $(ANALYSIS)/{name}_measures.csv "
            f"$(ANALYSIS)/{name}_benchmark.csv &: "
            f"$(if $(FIGURES_ONLY),,{npz} {full} $(MEASURES_DEPS))",
            f"\t$(if $(FIGURES_ONLY),$(error $(ANALYSIS)/{name}_measures.npz is missing: make "
            f"measures-{name} first (figures and the report compute nothing)),"
            f"$(PY) scripts/measures.py --experiment {name} --results-dir $(RESULTS) "
            f"--summary {npz} $(if $(DEVICE),--device $(DEVICE)) "
            f"-o $(ANALYSIS)/{name}_measures.npz)",
            f"measures-{name}: $(ANALYSIS)/{name}_measures.npz",
            # written beside the full model's result; published archives may lack it
            f"FULL_CHECKPOINT_{name} := {full_files.checkpoint}",
            f"FULL_RESULT_{name} := {full}",
            f"MODEL_{name} := {exp.model}",
            f".PHONY: memorization-{name} summary-{name} nn-{name} measures-{name}",
            "",
        ]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = cli.parser(__file__, __doc__.splitlines()[0])
    p.add_argument("what", choices=["make", "files", "groups", "deps", "figures"])
    p.add_argument("names", nargs="*", metavar="NAME", help="files, groups: the experiment; "
                   "deps: the scripts (or library files) whose imports are followed")
    p.add_argument("--analysis", action="store_true", help="deps: the code of each figure "
                   "and of the report instead, as FIGURE:FILE words (analysis.mk reads them)")
    p.add_argument("--root", default="results")
    p.add_argument("--group", type=int, default=None, help="jobs per process (fold models "
                   "trained together); default: 1 for 'make', 10 for 'groups'")
    p.add_argument("-o", "--output", type=Path, help="make: write the fragment to this file "
                   "(only when it changed) instead of standard output")
    p.add_argument("--settings-dir", type=Path, help="make: write each experiment's settings "
                   "to DIR/<name>.json (only when they changed); the summaries depend on them")
    p.add_argument("--train", nargs="*", default=[], metavar="GOAL", help="make: Make's goals; "
                   "for each memorization-EXP among them whose models are not all trained, "
                   "the design and an estimate of its time on standard error")
    p.add_argument("--results-dir", default="results", help="make: where --train looks for "
                   "result files")
    p.add_argument("--summarize-args", default=None, help="make: the summaries' command-line "
                   "options (SUMMARIZE_ARGS), part of each settings stamp; when left out, each "
                   "stamp keeps the options its summary was made with")
    args = p.parse_args(argv)
    return cli.run(__file__, run, args)


def run(args: argparse.Namespace) -> None:
    if args.what == "figures":  # analysis.mk on its own: its figure lists, one per line
        print("\n".join(line.split(" := ", 1)[1] for line in figure_lists()))
        return
    if args.what == "deps":
        paths = [Path(n).absolute() for n in args.names]
        with cli.usage():
            bad = [n for n, p in zip(args.names, paths)
                   if not (p.is_file() and p.suffix == ".py" and p.is_relative_to(SCRIPTS))]
            if bad or not (paths or args.analysis):
                raise cli.UsageError(f"deps: give Python files under {os.path.relpath(SCRIPTS)}/ "
                                     f"({', '.join(bad) + ' are not' if bad else 'none given'})")
        words = analysis_code() if args.analysis else code_files(*paths)
        print(" ".join(words) if args.analysis else "\n".join(words))
        return
    with cli.usage():  # the experiment table is this command's input: its errors are usage
        table = experiments.all_experiments()
        if args.what == "make":
            # everything is computed before anything is written: an error leaves no file behind
            overrides = summary_overrides(table, args.settings_dir, args.summarize_args)
            fragment = make_fragment(table, args.group or 1, overrides)
        else:
            exp = experiments.get(args.names[0] if args.names else "")
    if args.what == "make":
        for goal in args.train:
            name = goal.removeprefix("memorization-")
            if goal.startswith("memorization-") and name in table:
                line = design_line(table[name], args.results_dir)
                if line:
                    print(line, file=sys.stderr)
        if args.settings_dir:
            write_settings(table, args.settings_dir, overrides)
        if args.output:
            write_if_changed(args.output, fragment)
        else:
            sys.stdout.write(fragment)
    elif args.what == "files":
        print("\n".join(result_files(exp, args.root)))
    else:
        print("\n".join(" ".join(j.tag for j in g) for g in groups(exp, args.group or 10)))


if __name__ == "__main__":
    sys.exit(main())

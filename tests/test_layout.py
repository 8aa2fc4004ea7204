"""The library's dependency rules, read from its imports (ast) and checked by importing: which
folders of scripts/memo may import which, no import cycles, no imports inside functions but the
few listed here with their reason, and the modules that must load without torch do."""
from __future__ import annotations

import ast
import subprocess
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = ROOT / "scripts"
MEMO = SCRIPTS / "memo"
HEAVY = ("torch", "torchvision")


def module_name(path: Path) -> str:
    parts = path.relative_to(SCRIPTS).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in sorted(MEMO.rglob("*.py"))}
ENTRY_POINTS = {p.stem for p in SCRIPTS.glob("*.py")}   # scripts/*.py, cli.py among them

# Imports of memo modules inside functions: each one deferred on purpose, and why. Anything
# else is imported at the top of its module, where the import graph (and a reader) sees it.
FUNCTION_LEVEL = {
    ("memo.figures", "memo.figures.common"):
        "matplotlib deferred: the package lists its figures (Make, --help) without it",
    ("memo.figures.common", "memo.data"):
        "torch deferred: the training images are loaded only for the figures that show them",
    ("memo.figures.report", "memo.measures.measures"):
        "torch deferred: the benchmark of the measures only where a measures file exists",
    ("memo.figures.privacy", "memo.data"):
        "torch deferred: the planted layout is loaded only for a planted experiment",
    ("memo.train.runner", "memo.train.private"):
        "opacus deferred: only private experiments load it",
}


@dataclass(frozen=True)
class Import:
    source: str
    target: str      # a module of the tree (memo.x.y), or the top name of another package
    line: int
    where: str       # "top", "function" or "typing" (under `if TYPE_CHECKING:`, never run)


def _type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _targets(node: ast.Import | ast.ImportFrom, module: str, package: bool) -> list[str]:
    if isinstance(node, ast.Import):
        return [a.name for a in node.names]
    if node.level:   # relative: from the module's package, one level up per extra dot
        base = module.split(".") if package else module.split(".")[:-1]
        base = base[:len(base) - (node.level - 1)]
        source = ".".join(base + ([node.module] if node.module else []))
    else:
        source = node.module
    # `from memo.x import y`: the submodule memo.x.y when there is one, else memo.x itself
    return [f"{source}.{a.name}" if f"{source}.{a.name}" in MODULES else source
            for a in node.names]


def imports(module: str) -> list[Import]:
    path = MODULES[module]
    package = path.name == "__init__.py"
    out: list[Import] = []

    def walk(node: ast.AST, where: str) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.Import, ast.ImportFrom)):
                out.extend(Import(module, t, child.lineno, where)
                           for t in _targets(child, module, package))
            elif isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
                walk(child, "function")
            elif isinstance(child, ast.If) and _type_checking(child.test):
                walk(ast.Module(body=child.body, type_ignores=[]),
                     "typing" if where == "top" else where)
                walk(ast.Module(body=child.orelse, type_ignores=[]), where)
            else:
                walk(child, where)

    walk(ast.parse(path.read_text(), str(path)), "top")
    return out


IMPORTS = {m: imports(m) for m in MODULES}


def runtime(module: str) -> list[Import]:
    return [i for i in IMPORTS[module] if i.where != "typing"]


def folder(module: str) -> str:
    """memo.data.planted -> memo.data; memo.fileio -> memo.fileio (a module of its own)."""
    parts = module.split(".")
    return ".".join(parts[:2])


def in_tree(target: str) -> bool:
    return target in MODULES


def _packages(module: str) -> list[str]:
    """What importing `module` runs first: its packages' __init__ files."""
    parts = module.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts)) if ".".join(parts[:i]) in MODULES]


def top_level_closure(module: str) -> set[str]:
    """Every name loaded by importing `module`: modules of the tree and other packages' top
    names, through top-level imports and the packages each import runs first."""
    seen: set[str] = set()
    todo = [module, *_packages(module)]
    while todo:
        m = todo.pop()
        if m in seen:
            continue
        seen.add(m)
        if m not in MODULES:
            continue
        for i in runtime(m):
            if i.where == "top":
                todo += [i.target, *_packages(i.target)] if in_tree(i.target) else [
                    i.target.split(".")[0]]
    return seen


def test_the_tree_is_read():
    assert {"memo.config.naming", "memo.files.results", "memo.data", "memo.data.planted",
            "memo.errors", "memo.fileio"} <= set(MODULES)
    assert any(i.target == "torch" for i in IMPORTS["memo.data"])
    assert "cli" in ENTRY_POINTS and "plan" in ENTRY_POINTS


# ----------------------------------------------------------------------------------------------
# which folder may import which

def test_config_errors_and_fileio_import_no_other_folder():
    allowed = {"memo.config": ("memo.config", "memo.errors", "memo.fileio"),
               "memo.errors": (), "memo.fileio": ("memo.errors",)}
    bad = [i for m in MODULES if folder(m) in allowed for i in runtime(m)
           if in_tree(i.target) and folder(i.target) != folder(m)
           and folder(i.target) not in allowed[folder(m)]]
    assert not bad, bad


def test_files_and_score_import_neither_torch_nor_training():
    bad = [i for m in MODULES if folder(m) in ("memo.files", "memo.score") for i in runtime(m)
           if i.target.split(".")[0] in HEAVY or folder(i.target) == "memo.train"]
    assert not bad, bad
    # nor anything that loads torch when it is imported (memo.data, memo.models, ...)
    loaders = {m: sorted(top_level_closure(m) & set(HEAVY)) for m in MODULES
               if folder(m) in ("memo.files", "memo.score", "memo.config")}
    assert not {m: t for m, t in loaders.items() if t}


def test_models_import_nothing_of_files_or_training():
    bad = [i for m in MODULES if folder(m) == "memo.models" for i in runtime(m)
           if folder(i.target) in ("memo.files", "memo.train")]
    assert not bad, bad


def test_the_library_imports_no_entry_point():
    bad = [i for m in MODULES for i in IMPORTS[m] if not i.target.startswith("memo")
           and i.target.split(".")[0] in ENTRY_POINTS]
    assert not bad, bad


# ----------------------------------------------------------------------------------------------
# cycles and deferred imports

def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of the graph as a path [a, b, ..., a], or None."""
    state: dict[str, int] = {}   # 1: on the current path, 2: done
    path: list[str] = []

    def visit(n: str) -> list[str] | None:
        state[n] = 1
        path.append(n)
        for m in sorted(graph.get(n, ())):
            if state.get(m) == 1:
                return path[path.index(m):] + [m]
            if m not in state and (found := visit(m)):
                return found
        path.pop()
        state[n] = 2
        return None

    for n in sorted(graph):
        if n not in state and (found := visit(n)):
            return found
    return None


def test_cycle_finder():
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]


def test_no_import_cycles_between_library_modules():
    graph = {m: {i.target for i in runtime(m) if i.where == "top" and in_tree(i.target)
                 and i.target != m} for m in MODULES}
    assert _cycle(graph) is None, " -> ".join(_cycle(graph))


def test_imports_inside_functions_are_the_listed_ones():
    found = {(i.source, i.target): i for m in MODULES for i in runtime(m)
             if i.where == "function" and in_tree(i.target)}
    unlisted = [f"{i.source}:{i.line} imports {i.target}" for key, i in found.items()
                if key not in FUNCTION_LEVEL]
    assert not unlisted, "import these at the top of the module, or list them with a reason"
    stale = [key for key in FUNCTION_LEVEL if key not in found]
    assert not stale, f"no longer imported inside a function: {stale}"
    assert all(FUNCTION_LEVEL.values())


# ----------------------------------------------------------------------------------------------
# torch-free for real: imported where torch cannot be

TORCH_FREE = ["memo.config.naming", "memo.files.results", "memo.files.summary",
              "memo.files.neighbours", "memo.files.sweep", "memo.files.measures",
              "memo.score.summary", "memo.score.calibration", "cli", "plan"]


def _refusing_heavy_imports() -> str:
    """Python code that makes torch (and the other heavy packages) unimportable, then puts
    scripts/ on the path."""
    return textwrap.dedent(f"""
        import sys
        class Refuse:
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in {HEAVY!r}:
                    raise ImportError(name + " is not importable here")
        sys.meta_path.insert(0, Refuse())
        sys.path.insert(0, {str(SCRIPTS)!r})
    """)


def test_files_score_naming_and_planning_import_without_torch():
    code = _refusing_heavy_imports() + textwrap.dedent(f"""
        import importlib
        for name in {TORCH_FREE!r}:
            importlib.import_module(name)
        loaded = [m for m in sys.modules if m.split(".")[0] in {HEAVY!r}]
        assert not loaded, loaded
    """)
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert p.returncode == 0, p.stderr


@pytest.mark.parametrize("script", sorted(p.name for p in SCRIPTS.glob("*.py") if p.stem != "cli"))
def test_every_help_runs_without_torch(script):
    code = _refusing_heavy_imports() + textwrap.dedent(f"""
        import runpy, sys
        sys.argv = [{script!r}, "--help"]
        runpy.run_path({str(SCRIPTS / script)!r}, run_name="__main__")
    """)
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert p.returncode == 0 and p.stdout.startswith("usage: "), p.stderr


# What an entry point may import inside a function: the packages that load torch or
# matplotlib, so that --help and a usage error cost no such import. Everything else (the
# table, the file formats, the scores) is imported at the top, where a reader sees it.
HEAVY_MEMO = ("memo.data", "memo.models", "memo.train", "memo.measures.", "memo.figures.")


def test_entry_points_defer_only_heavy_imports():
    late = []
    for path in sorted(SCRIPTS.glob("*.py")):
        tree = ast.parse(path.read_text())
        for fn in ast.walk(tree):
            if not isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            for node in ast.walk(fn):
                if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("memo"):
                    for alias in node.names:
                        target = f"{node.module}.{alias.name}"
                        if not target.startswith(HEAVY_MEMO):
                            late.append(f"{path.name}:{node.lineno} {target}")
    assert not late, "import these at the top of the entry point: " + ", ".join(late)

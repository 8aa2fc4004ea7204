"""Result files from elsewhere (a downloaded archive, an edited file): every inconsistency is
one line naming the file, and nothing in a file can make the summary allocate without bound."""
from __future__ import annotations

import json
import os
import resource
import subprocess
import sys

import numpy as np
import pytest

import hostile
import summarize as summarize_cli
from conftest import ROOT, TINY, write_tiny_npz
from memo.config import experiments
from memo.files import results
from test_results_summary import make_experiment


def _summarize_error(paths, tmp_path, capsys) -> str:
    out = tmp_path / "analysis" / "exp.npz"
    rc = summarize_cli.main(["--result-files", *map(str, paths), "-o", str(out), "--n-boot",
                             "10", "--data-root", str(tmp_path / "nodata")])
    err = capsys.readouterr().err.strip()
    assert rc == 1 and "Traceback" not in err, err
    assert len(err.splitlines()) == 1, err
    assert not out.exists()
    return err


@pytest.mark.parametrize("case, words", [
    ("index twice: 5 and 05", "not a plain decimal"),
    ("duplicate key", "appears twice"),
    ("in train and test", "not each of 0..12 once"),
    ("log p a string", "where a number belongs"),
    ("log p true", "where a number belongs"),
    ("log p 1e308", "at most 0"),
    ("learning rate contradicts settings", "contradicts itself"),
    ("epoch key 02", "not an epoch number"),
    ("deep nesting", "nested deeper"),
    ("n 1e11", "n = 100000000000"),
    ("n abc", "meta.n = 'abc' is not an integer"),
    ("n -5", "meta.n = -5 is not an integer >= 1"),
    ("run zero", "meta.run = 'zero'"),
    ("num_folds 1e6", "missing 1999994 of 2000000"),
    ("num_folds 1e6 as a float", "meta.num_folds = 1000000.0"),
    ("loss a string", "losses.train is not a list of numbers"),
    ("more losses than epochs", "3 training losses for epochs = 2"),
])
def test_each_inconsistent_result_file_is_one_line_naming_it(tmp_path, capsys, case, words):
    paths, _ = make_experiment(tmp_path)
    p = paths[1]
    if case == "duplicate key":
        hostile.write(p, hostile.duplicate_key(json.dumps(hostile.content(p)),
                                               hostile.first(hostile.part(hostile.content(p)))))
    elif case == "deep nesting":
        hostile.write(p, hostile.deep(""))
    else:   # the files must agree on some: every file gets those
        for q in paths if case in hostile.EVERY_FILE else [p]:
            hostile.mutate(q, hostile.EDITS[case])
    err = _summarize_error(paths, tmp_path, capsys)
    assert words in err
    if case not in hostile.EVERY_FILE:
        assert p.name in err


def test_the_summary_is_named_after_the_experiment_asked_for_and_reads_its_data(
        tiny_experiment, tmp_path, monkeypatch):
    """Files that claim another experiment and name another data file: the summary is of the
    experiment asked for, and its labels come from that experiment's own data."""
    exp = experiments.get("tiny")
    paths, _ = make_experiment(tmp_path, n=60, folds=3, repeats=2)
    for p in paths:
        hostile.mutate(p, lambda c: c["meta"].update(experiment="fashion_demo", dataset="npz",
                                               data_spec="npz:/nonexistent/bomb.npz"))
    out = tmp_path / "analysis" / "tiny.npz"
    # the files are the authors' (no settings): compared on the keys they have
    exp_file = tmp_path / "authors.json"
    exp_file.write_text(json.dumps({"tiny": dict(TINY, data=exp.data, latent_dim=16,
                                                 epochs=2, n_is=256, batch_size=64,
                                                 eval_every=1, folds=3, repeats=2,
                                                 **experiments.AUTHORS_METHOD)}))
    monkeypatch.setenv("EXPERIMENTS_FILE", str(exp_file))
    assert summarize_cli.main(["--experiment", "tiny", "--result-files", *map(str, paths),
                               "-o", str(out), "--n-boot", "10", "--n-perm", "0"]) == 0
    s = summary_load(out)
    assert s.meta["experiment"] == "tiny" and s.meta["data"] == exp.data
    labels = np.load(tiny_experiment[1])["y"]
    assert np.array_equal(s.labels, labels[:60])


def summary_load(path):
    from memo.files import summary
    return summary.load(path)


def _limited(code: str, limit: int) -> subprocess.CompletedProcess:
    """Python `code` in a process whose address space is capped at `limit` bytes."""
    def cap():
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    env = {**os.environ, "PYTHONPATH": str(ROOT / "scripts")}
    return subprocess.run([sys.executable, "-c", code], preexec_fn=cap, env=env,
                          capture_output=True, text=True, timeout=120)


def test_a_result_file_inflating_past_its_experiment_is_refused_within_bounded_memory(
        tiny_experiment, tmp_path):
    exp = experiments.get("tiny")
    folder = tmp_path / "res"
    bomb = folder / "bomb.json.gz"
    folder.mkdir()
    hostile.bomb(bomb, 768 << 20)                       # 768 MiB of JSON in under 1 MiB
    assert bomb.stat().st_size < 1 << 20
    assert results.max_result_bytes(exp) < 2 << 20   # 60 examples: a few hundred kB at most
    code = ("import sys; from memo.config import experiments; from memo.files import results\n"
            "try:\n"
            f"    results.read_result({str(bomb)!r}, experiments.get('tiny'))\n"
            "except results.ResultFileError as e:\n"
            "    print(e); sys.exit(1)\n")
    # numpy and the library in ~0.3 GB of address space; the file alone would need 0.77 GB
    done = _limited(code, 512 << 20)
    assert done.returncode == 1, done.stderr[-500:]
    assert "inflates to more than" in done.stdout and "MemoryError" not in done.stderr


def test_npz_headers_are_checked_before_loading(tmp_path):
    from memo import data
    x = np.zeros((4, 28, 28), np.uint8)
    cases = {
        "no images": (dict(x=np.zeros((0, 28, 28), np.uint8)), "at least one image"),
        "labels as strings": (dict(x=x, y=np.array(["a", "b", "c", "d"])), "must be integers"),
        "labels NaN": (dict(x=x, y=np.array([0, 1, np.nan, 2])), "must be integers"),
        "labels too few": (dict(x=x, y=np.arange(3)), "3 labels in 'y' for 4 images"),
        "RGB train, grey test": (dict(x=np.zeros((4, 28, 28, 3), np.uint8), x_test=x),
                                 "'x' has 3 channel(s) but 'x_test' has 1"),
    }
    for name, (arrays, words) in cases.items():
        p = tmp_path / f"{name.replace(' ', '_').replace(',', '')}.npz"
        np.savez(p, **arrays)
        split = "test" if "test" in arrays.get("x_test", "") or "x_test" in arrays else "train"
        with pytest.raises(ValueError, match=words.replace("(", r"\(").replace(")", r"\)")):
            data.load(f"npz:{p}", split)
    with pytest.raises(ValueError, match="is a directory"):
        data.load(f"npz:{tmp_path}")


def test_the_probe_tool_records_the_first_line_exit_status_and_memory():
    """tools/probe_hostile.py runs a case through the real command in its own process."""
    import probe_hostile
    name = "meta.n = -5"
    row = probe_hostile.run_case(name, probe_hostile.CASES[name], ROOT, sys.executable,
                                 6 << 30, 120)
    assert row["rc"] == "1" and row["lines"] == 1 and not row["traceback"], row
    assert row["first"].startswith("summarize.py: error: $TMP/results/")
    assert "meta.n = -5 is not an integer >= 1" in row["first"] and row["peak_mib"] > 10
    table = probe_hostile.table([row], {name: {**row, "rc": 0}})
    assert table.splitlines()[2].startswith(f"| {name} | `summarize.py: error: ")

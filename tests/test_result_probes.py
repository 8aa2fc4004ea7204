"""Result files from elsewhere (a downloaded archive, an edited file): every inconsistency is
one line naming the file, and nothing in a file can make the summary allocate without bound."""
from __future__ import annotations

import gzip
import json
import os
import resource
import subprocess
import sys

import numpy as np
import pytest

import summarize as summarize_cli
from conftest import ROOT, TINY, write_tiny_npz
from memo.config import experiments
from memo.files import results
from test_results_summary import make_experiment


def _content(path):
    return json.loads(gzip.decompress(path.read_bytes()))


def _write(path, content_or_text):
    text = (content_or_text if isinstance(content_or_text, str)
            else json.dumps(content_or_text))
    path.write_bytes(gzip.compress(text.encode(), mtime=0))


def _summarize_error(paths, tmp_path, capsys) -> str:
    out = tmp_path / "analysis" / "exp.npz"
    rc = summarize_cli.main(["--result-files", *map(str, paths), "-o", str(out), "--n-boot",
                             "10", "--data-root", str(tmp_path / "nodata")])
    err = capsys.readouterr().err.strip()
    assert rc == 1 and "Traceback" not in err, err
    assert len(err.splitlines()) == 1, err
    assert not out.exists()
    return err


def _mutate(path, fn):
    c = _content(path)
    fn(c)
    _write(path, c)


def _first(d: dict) -> str:
    return next(iter(d))


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
])
def test_each_inconsistent_result_file_is_one_line_naming_it(tmp_path, capsys, case, words):
    paths, _ = make_experiment(tmp_path)
    p = paths[1]
    tr = lambda c: c["results"]["logpxs"]["2"]["train"]   # noqa: E731
    te = lambda c: c["results"]["logpxs"]["2"]["test"]    # noqa: E731

    def twin(c):  # the same example under two names, one in each part
        k = _first(tr(c))
        te(c).pop(_first(te(c)))
        te(c)["0" + k] = tr(c)[k]

    def both(c):
        k = _first(tr(c))
        te(c).pop(_first(te(c)))
        te(c)[k] = tr(c)[k]

    def setting(c):
        c["meta"]["settings"] = {"lr": 0.001}
        c["meta"]["learning_rate"] = 0.5

    edits = {
        "index twice: 5 and 05": twin,
        "in train and test": both,
        "log p a string": lambda c: tr(c).__setitem__(_first(tr(c)), "-1e-300"),
        "log p true": lambda c: tr(c).__setitem__(_first(tr(c)), True),
        "log p 1e308": lambda c: tr(c).__setitem__(_first(tr(c)), 1e308),
        "learning rate contradicts settings": setting,
        "epoch key 02": lambda c: c["results"]["logpxs"].__setitem__(
            "02", c["results"]["logpxs"].pop("2")),
        "n 1e11": lambda c: c["meta"].__setitem__("n", 10**11),
        "n abc": lambda c: c["meta"].__setitem__("n", "abc"),
        "n -5": lambda c: c["meta"].__setitem__("n", -5),
        "run zero": lambda c: c["meta"].__setitem__("run", "zero"),
        "num_folds 1e6 as a float": lambda c: c["meta"].__setitem__("num_folds", 1e6),
        "loss a string": lambda c: c["results"]["losses"].__setitem__("train", ["0.5"]),
    }
    if case == "duplicate key":
        text = json.dumps(_content(p))
        k = _first(tr(_content(p)))
        _write(p, text.replace(f'"{k}": ', f'"{k}": -1.0, "{k}": ', 1))
    elif case == "deep nesting":
        _write(p, "[" * 200_000 + "]" * 200_000)
    elif case == "num_folds 1e6":  # every file agrees on it: the files are counted, not listed
        for q in paths:
            _mutate(q, lambda c: c["meta"].__setitem__("num_folds", 10**6))
    else:
        _mutate(p, edits[case])
    if case == "n 1e11":  # every file must agree on n
        for q in paths:
            _mutate(q, lambda c: c["meta"].__setitem__("n", 10**11))
    err = _summarize_error(paths, tmp_path, capsys)
    assert words in err
    if case not in ("num_folds 1e6", "n 1e11"):
        assert p.name in err


def test_the_summary_is_named_after_the_experiment_asked_for_and_reads_its_data(
        tiny_experiment, tmp_path, monkeypatch):
    """Files that claim another experiment and name another data file: the summary is of the
    experiment asked for, and its labels come from that experiment's own data."""
    exp = experiments.get("tiny")
    paths, _ = make_experiment(tmp_path, n=60, folds=3, repeats=2)
    for p in paths:
        _mutate(p, lambda c: c["meta"].update(experiment="fashion_demo", dataset="npz",
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


def _bomb(path, inflated: int, head: bytes = b'{"meta": {}, "results": {}') -> None:
    """A gzip file whose JSON inflates to `inflated` bytes (mostly spaces): gzip members one
    after another, as gzip allows, each 1 MiB of spaces."""
    spaces = gzip.compress(b" " * (1 << 20), mtime=0)
    with open(path, "wb") as f:
        f.write(gzip.compress(head, mtime=0))
        for _ in range(inflated >> 20):
            f.write(spaces)
        f.write(gzip.compress(b"}", mtime=0))


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
    _bomb(bomb, 768 << 20)                       # 768 MiB of JSON in under 1 MiB
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

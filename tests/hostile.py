"""Result files made hostile: the edits that tests/test_result_probes.py checks one by one and
tools/probe_hostile.py runs through the real commands (one definition of each case)."""
from __future__ import annotations

import gzip
import json


def content(path) -> dict:
    return json.loads(gzip.decompress(path.read_bytes()))


def write(path, content_or_text) -> None:
    text = (content_or_text if isinstance(content_or_text, str)
            else json.dumps(content_or_text))
    path.write_bytes(gzip.compress(text.encode(), mtime=0))


def mutate(path, fn) -> None:
    c = content(path)
    fn(c)
    write(path, c)


def first(d: dict) -> str:
    return next(iter(d))


def part(c: dict, which: str = "train") -> dict:
    """The log p of one part of a result file at its last epoch (the builders' epoch 2)."""
    return c["results"]["logpxs"]["2"][which]


def twin(c):
    """The same example under two names ('5' and '05'), one in each part."""
    k = first(part(c))
    part(c, "test").pop(first(part(c, "test")))
    part(c, "test")["0" + k] = part(c)[k]


def both(c):
    """One example in both train and test."""
    k = first(part(c))
    part(c, "test").pop(first(part(c, "test")))
    part(c, "test")[k] = part(c)[k]


def setting(c):
    """meta.learning_rate contradicting the settings' lr."""
    c["meta"]["settings"] = {"lr": 0.001}
    c["meta"]["learning_rate"] = 0.5


def meta(key, value):
    return lambda c: c["meta"].__setitem__(key, value)


def log_p(value):
    return lambda c: part(c).__setitem__(first(part(c)), value)


def epoch_02(c):
    c["results"]["logpxs"]["02"] = c["results"]["logpxs"].pop("2")


def duplicate_key(text: str, key: str) -> str:
    """The JSON text with example `key` given twice (JSON objects allow it, Python keeps one)."""
    return text.replace(f'"{key}": ', f'"{key}": -1.0, "{key}": ', 1)


def deep(_text: str) -> str:
    return "[" * 200_000 + "]" * 200_000


# case -> an edit of one file's content
EDITS = {
    "index twice: 5 and 05": twin,
    "in train and test": both,
    "log p a string": log_p("-1e-300"),
    "log p true": log_p(True),
    "log p 1e308": log_p(1e308),
    "learning rate contradicts settings": setting,
    "epoch key 02": epoch_02,
    "n 1e11": meta("n", 10**11),
    "n abc": meta("n", "abc"),
    "n -5": meta("n", -5),
    "run zero": meta("run", "zero"),
    "repeats 1e8": meta("repeats", 10**8),
    "num_folds 1e6": meta("num_folds", 10**6),
    "num_folds 1e6 as a float": meta("num_folds", 1e6),
    "loss a string": lambda c: c["results"]["losses"].__setitem__("train", ["0.5"]),
    "more losses than epochs": lambda c: c["results"]["losses"].__setitem__("train", [0] * 3),
}
# cases whose edit every file of the experiment gets (the files must agree on it)
EVERY_FILE = ("n 1e11", "num_folds 1e6")


def bomb(path, inflated: int, head: bytes = b'{"meta": {}, "results": {}') -> None:
    """A gzip file whose JSON inflates to `inflated` bytes (mostly spaces): gzip members one
    after another, as gzip allows, each 1 MiB of spaces."""
    spaces = gzip.compress(b" " * (1 << 20), mtime=0)
    with open(path, "wb") as f:
        f.write(gzip.compress(head, mtime=0))
        for _ in range(inflated >> 20):
            f.write(spaces)
        f.write(gzip.compress(b"}", mtime=0))

"""Every repository path that README.md and docs/*.md name in backquotes or links exists.

A path is a word starting with scripts/, docs/, examples/, tests/ or tools/ (from the
repository root) or memo/ (from scripts/); words with a placeholder (<exp>, *, {...}) are
patterns, not paths, and are left out.
"""
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
SPANS = re.compile(r"`([^`\n]+)`|\]\(([^)\s]+)\)")
PATH = re.compile(r"(?<![\w/.-])((?:scripts|docs|examples|tests|tools|memo)/[\w./<>*{}-]*)")


def named_paths(text):
    for m in SPANS.finditer(text):
        span = (m.group(1) or m.group(2)).split("#")[0]
        for p in PATH.findall(span):
            p = p.rstrip(".,;:")
            if p and not re.search(r"[<>*{}]", p):
                yield p


def resolve(p):
    return ROOT / "scripts" / p if p.startswith("memo/") else ROOT / p


def test_named_paths_are_found_by_the_pattern():
    text = "see `scripts/plan.py --help`, [x](docs/models.md#own) and `memo/score/flagging.py`; " \
           "`results/<exp>/x` and `docs/<name>.md` are patterns"
    assert list(named_paths(text)) == ["scripts/plan.py", "docs/models.md",
                                       "memo/score/flagging.py"]


@pytest.mark.parametrize("doc", DOCS, ids=lambda d: d.name)
def test_every_named_path_exists(doc):
    missing = sorted({p for p in named_paths(doc.read_text()) if not resolve(p).exists()})
    assert not missing, f"{doc.name} names paths that do not exist: {missing}"

"""The comparison of two model families' scores (memo/score/families.py) on cases whose
answers are known."""
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from memo.score import families


def test_top_set_takes_the_ceiling_of_the_fraction_of_finite_values():
    m = np.array([5.0, np.nan, 1.0, 9.0, 3.0, 9.0])
    assert families.top_set(m, 0.2).tolist() == [3]          # ceil(0.2 * 5) = 1; tie: index 3
    assert families.top_set(m, 0.5).tolist() == [0, 3, 5]


def test_compare_on_known_orderings():
    n = 200
    rng = np.random.default_rng(0)
    a = rng.normal(size=n)
    same = families.compare(a, 3 * a + 1)                    # a monotone map: the same ranks
    assert same["spearman"] == pytest.approx(1.0) and same["top_overlap"] == 1.0
    assert len(same["only_a"]) == len(same["only_b"]) == 0
    rev = families.compare(a, -a)                            # reversed: no overlap at all
    assert rev["spearman"] == pytest.approx(-1.0) and rev["top_overlap"] == 0.0
    # the top 10 of a (by M) are all below b's median, and a's largest margin comes first
    assert len(rev["only_a"]) == 8 and rev["only_a"][0] == np.argmax(a)
    assert rev["only_b"][0] == np.argmin(a)
    np.testing.assert_allclose(same["quantiles_a"], np.quantile(a, [0.5, 0.95, 0.999]))


def test_flags_are_counted_per_family_and_together():
    a, b = np.arange(10.0), np.arange(10.0)[::-1]
    fa = np.zeros(10, bool); fa[[1, 2, 3]] = True
    fb = np.zeros(10, bool); fb[[3, 4]] = True
    r = families.compare(a, b, fa, fb, top=0.2)
    assert (r["flags_a"], r["flags_b"], r["flags_both"]) == (3, 2, 1)
    assert r["top_both"].tolist() == [] and r["top_overlap"] == 0.0
    with pytest.raises(ValueError, match="different training sets"):
        families.compare(a, b[:5])


def test_the_script_refuses_two_training_sets_and_a_missing_summary_in_one_line(tmp_path,
                                                                                 capsys):
    import compare_families
    assert compare_families.main(["--experiments", "fashion_demo", "fashion_planted"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "train on different data" in err
    assert compare_families.main(["--experiments", "fashion_demo", "fashion_demo_made",
                                  "--analysis-dir", str(tmp_path)]) == 1
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "make summary-fashion_demo" in err


# ----------------------------------------------------------------------------------------------
# the comparison file, its figure and the report section (tiny summaries in the real format)

def _planted_pair(tmp_path, monkeypatch):
    """Summaries of fashion_planted and fashion_planted_made whose M puts the planted rare
    class first in a and last in b, and the planted layout they are read against (a shuffle
    of the benchmark's roles, in place of the one built from Fashion-MNIST's labels)."""
    from test_figures import write_summary
    from memo import data
    from memo.data import planted
    role = np.random.default_rng(7).permutation(np.repeat(
        [planted.REGULAR, planted.SINGLETON, planted.ONEOFF, planted.DUPLICATE],
        [planted.N_REGULAR, planted.N_SINGLETONS, planted.N_ONEOFFS,
         planted.N - planted.N_REGULAR - planted.N_SINGLETONS - planted.N_ONEOFFS]))
    layout = planted.Layout(np.arange(planted.N), role.astype(np.int8), np.full(planted.N, -1))
    monkeypatch.setattr(data, "planted_layout", lambda root=None: layout)
    paths = []
    for name, seed, sign in (("fashion_planted", 0, 1.0), ("fashion_planted_made", 1, -1.0)):
        path = write_summary(tmp_path / "analysis" / f"{name}.npz", n=planted.N, R=2,
                             seed=seed, data="planted", experiment=name)
        with np.load(path) as z:
            arrays = dict(z)
        rare = role == planted.SINGLETON     # the summary derives M = U - V
        arrays["U"][-1][rare] = arrays["V"][-1][rare] + sign * 1e3
        np.savez(path, **arrays)
        paths.append(path)
    return paths, role


def test_compare_families_writes_the_file_the_figure_and_report_are_drawn_from(tmp_path,
                                                                               capsys,
                                                                               monkeypatch):
    import compare_families
    from memo import figures
    from memo.data import planted
    from memo.files import families as families_file
    from memo.files import summary as summary_file
    from memo.figures import report
    (pa, pb), role = _planted_pair(tmp_path, monkeypatch)
    out = tmp_path / "analysis" / "families.json"
    assert compare_families.main(["--experiments", "fashion_planted", "fashion_planted_made",
                                  "--analysis-dir", str(tmp_path / "analysis"),
                                  "--results-dir", str(tmp_path / "results"),
                                  "--n-boot", "50", "-o", str(out)]) == 0
    assert "AUROC rare" in capsys.readouterr().out
    doc = families_file.load(out)
    (p,) = doc["pairs"]
    a, b = p["families"]
    # the rare class ranks first under a's M and last under b's, whatever else the scores are
    assert (a["auroc_rare"], b["auroc_rare"]) == (1.0, 0.0)
    assert a["auroc_rare_low"] <= a["auroc_rare"] <= a["auroc_rare_high"]
    assert a["flagged_rare"] == int((summary_file.load(pa).memorized
                                     & (role == planted.SINGLETON)).sum())
    assert a["cpu_minutes"] is None                          # no result files: not measured
    # per-example fields round-trip and equal the summaries' and the comparison's
    sa, sb = summary_file.load(pa), summary_file.load(pb)
    np.testing.assert_array_equal(p["M_a"], sa.M_final)
    np.testing.assert_array_equal(p["M_b"], sb.M_final)
    np.testing.assert_array_equal(p["role"], role)
    r = families.compare(sa.M_final, sb.M_final, sa.memorized, sb.memorized)
    assert p["spearman"] == pytest.approx(r["spearman"])
    assert p["only_a"].tolist() == r["only_a"].tolist()
    assert p["top_a"].tolist() == families.top_set(sa.M_final, 0.05).tolist()

    from memo.figures import families as families_figure
    shown = []   # the images are read from the pair's data set by position
    monkeypatch.setattr(families_figure, "training_images", lambda name, what: shown.append(
        name) or np.arange(planted.N, dtype=np.uint8)[:, None, None, None] * np.ones(
            (1, 1, 28, 28), np.uint8))
    assert [im["only_a"][:, 0, 0, 0].tolist() for im in families_figure.example_images(doc)] \
        == [(p["index"][p["only_a"][:6]] % 256).tolist()]
    fig_dir = tmp_path / "output" / "families"
    figures.build("families", [], fig_dir, families=doc, engine=None)
    assert shown == ["planted", "planted"]
    fig = json.loads((fig_dir / "families.json").read_text())
    assert (fig_dir / "families.png").read_bytes().startswith(b"\x89PNG")
    assert fig["experiments"] == ["fashion_planted", "fashion_planted_made"]
    assert [row[7] for row in fig["table"]["rows"]][0].startswith("1 (")   # AUROC rare, a
    assert f"Spearman of $M$ {report.num(p['spearman'], 2)}" in fig["caption"]
    # the report gives the figure a section of its own, with its table
    secs = report.sections([(fig_dir / "families.json", fig)])
    tex = report.document([], [], secs, lambda path: str(path))
    assert r"\section{families}" in tex and "AUROC one-offs" in tex


def test_the_families_file_is_refused_in_one_line_when_it_is_not_one(tmp_path):
    from memo.errors import FileFormatError
    from memo.files import families as families_file
    bad = tmp_path / "families.json"
    for text in ("{", '{"top": 0.05}', '{"top": 0.05, "pairs": [{"data": "fashion"}]}'):
        bad.write_text(text)
        with pytest.raises(FileFormatError, match="make families") as e:
            families_file.load(bad)
        assert "\n" not in str(e.value)


@pytest.mark.skipif(not shutil.which("make"), reason="no make")
def test_the_family_figure_and_its_report_section_are_made_only_with_the_file(tmp_path):
    root = Path(__file__).resolve().parents[1]
    (tmp_path / "scripts").symlink_to(root / "scripts")
    (tmp_path / "analysis").mkdir()
    (tmp_path / "Makefile").write_text(f"PY := {sys.executable}\ninclude {root / 'analysis.mk'}\n"
                                       "print-%: ; @echo $($*)\n")

    def make(*args):
        return subprocess.run(["make", "--no-print-directory", "-C", str(tmp_path), *args],
                              check=True, capture_output=True, text=True).stdout

    assert "families" not in make("print-AN_REPORT_IN")
    (tmp_path / "analysis" / "families.json").write_text("{}")
    assert "output/families/families.json" in make("print-AN_REPORT_IN").split()
    assert ("analysis.py families analysis/families.json --out output/families"
            in make("-n", "figures"))

"""The comparison of two model families' scores (memo/score/families.py) on cases whose
answers are known."""
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

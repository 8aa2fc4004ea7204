"""The flagged list (analysis/<exp>_flagged.csv), low_ess and its suggested n_is, and the
bootstrap interval at two repeats."""
from __future__ import annotations

import shutil

import numpy as np
import pandas as pd
import pytest
import torch

import summarize as summarize_cli
from memo.files import summary
from memo.score import calibration as cal
from memo.score import flagged
from memo.score import uncertainty as unc
from test_calibration import synthetic
from test_figures import tree, write_summary  # noqa: F401 (tree: a fixture)
from test_results_summary import make_experiment


def noisy(i, r, k, e, out):
    """log p with a spread between models; examples 0-3 lose 6 nats when held out."""
    noise = ((i * 7919 + r * 104729 + k * 1299709 + e * 31) % 997) / 997
    return -50.0 - 0.1 * i - e + noise - (6.0 if i < 4 and out else 0.0)


def summarize(tmp_path, *extra):
    paths, full = make_experiment(tmp_path, n=40, folds=4, repeats=3, value=noisy)
    out = tmp_path / "analysis" / "exp.npz"
    assert summarize_cli.main(["--result-files", *map(str, paths + [full]), "-o", str(out),
                               "--n-boot", "30", "--n-perm", "200",
                               "--data-root", str(tmp_path / "nodata"), *extra]) == 0
    return out


def test_flagged_list_holds_the_summarys_flags_strongest_evidence_first(tmp_path, capsys):
    out = summarize(tmp_path)
    s = summary.load(out)
    path = flagged.path_for(out)
    assert path == tmp_path / "analysis" / "exp_flagged.csv"
    assert str(path) in capsys.readouterr().out
    t = pd.read_csv(path)
    assert tuple(t.columns) == flagged.COLUMNS
    assert s.memorized.sum() >= 4                       # the planted four, at least
    assert sorted(t["index"]) == sorted(s.index[s.memorized])
    assert list(t["rank"]) == list(range(1, len(t) + 1))
    assert (np.diff(t["p_value"]) >= 0).all()           # evidence first
    assert (t["q_value"] <= s.calibration["fdr_q"]).all()
    rows = t["index"].to_numpy()                        # index == position in this summary
    for col, arr in (("M", s.M_final), ("M_corrected", s.M_corrected),
                     ("M_corrected_ci_low", s.M_corrected_ci_low),
                     ("M_corrected_ci_high", s.M_corrected_ci_high), ("p_value", s.p_value)):
        np.testing.assert_allclose(t[col], arr[rows], rtol=1e-5, err_msg=col)
    assert (t["low_ess"].to_numpy() == s.low_ess[rows]).all()


def test_flagged_list_is_a_header_without_calibration(tmp_path):
    out = summarize(tmp_path, "--n-perm", "0")
    lines = flagged.path_for(out).read_text().splitlines()
    assert lines == [",".join(flagged.COLUMNS)]


def test_q_values_flag_exactly_what_benjamini_hochberg_flags():
    rng = np.random.default_rng(0)
    p = np.concatenate([rng.uniform(0, 1, 300), rng.uniform(0, 1e-3, 30), [np.nan]])
    q = cal.q_values(p)
    assert np.isnan(q[-1]) and (q[:-1] >= p[:-1]).all() and (q[:-1] <= 1).all()
    order = np.argsort(p[:-1])
    assert (np.diff(q[:-1][order]) >= 0).all()          # q rises with p
    for level in (0.01, 0.05, 0.2):
        flags, _ = cal.benjamini_hochberg(p, level)
        assert (flags == (q <= level)).all()


def test_by_evidence_orders_by_p_then_corrected_score(tmp_path):
    s = summary.load(write_summary(tmp_path / "a.npz", n=50))
    s.p_value[:] = 0.5
    s.p_value[[7, 3, 9]] = [0.01, 0.01, 0.001]
    s.null_mean[:] = 0.0
    s.U[-1, 3], s.V[-1, 3], s.U[-1, 7], s.V[-1, 7] = 5.0, 0.0, 9.0, 0.0   # M_corrected 5 and 9
    assert list(flagged.by_evidence(s)[:3]) == [9, 7, 3]


def test_exact_likelihoods_are_never_low_ess():
    ess = np.array([np.nan, 1.0, np.nan, 50.0])
    low = unc.ess_flags(ess, 128) | unc.ess_flags(np.full(4, np.nan), 128)
    assert list(low) == [False, True, False, False]
    assert unc.low_ess_share(low, ess, np.full(4, np.nan)) == (1, 2)    # of those with an ESS
    assert unc.low_ess_share(np.zeros(3, bool), np.full(3, np.nan), np.full(3, np.nan)) == (0, 0)


def test_suggested_n_is_lifts_the_floor_and_names_the_hopeless():
    # N = 128: threshold max(5, 2.56) = 5. ESS 4 needs 5/4·128 = 160 -> 256; ESS 2 is under
    # 2 % of N and stays low at any N (the threshold grows with N as fast as the ESS)
    ess = np.array([4.0, 4.5, 2.0, 60.0])
    assert unc.suggested_n_is(ess, ess, 128) == (256, 1)
    assert unc.suggested_n_is(np.array([2.6, 60.0]), np.full(2, 60.0), 128) == (256, 0)
    # ESS 2.6 needs 5/2.6·128 = 246 -> 256; at 256 it is 5.2 >= max(5, 5.12)
    assert unc.suggested_n_is(np.full(3, 60.0), np.full(3, 60.0), 128) == (None, 0)
    assert unc.suggested_n_is(np.full(2, np.nan), np.full(2, np.nan), 128) == (None, 0)


def test_summary_line_gives_the_low_ess_share_and_a_larger_n_is(tmp_path, capsys):
    s = summary.load(write_summary(tmp_path / "a.npz", n=100))
    n_is = s.meta["n_is"]                                  # 64: threshold 5
    s.ess_in[:] = 30.0
    s.ess_out[:] = 30.0
    s.ess_out[:20] = 4.0                                   # 20 % low, all liftable
    s.ess_in[95:] = np.nan
    s.ess_out[95:] = np.nan                                # 5 without an ESS: not counted
    s.low_ess = unc.ess_flags(s.ess_in, n_is) | unc.ess_flags(s.ess_out, n_is)
    s.memorized[:] = False
    s.memorized[[0, 1, 2, 50, 99]] = True                 # 3 low, 1 not, 1 without an ESS
    summarize_cli.print_low_ess(s)
    text = capsys.readouterr().out
    assert "20 of 95 (21.1%)" in text and "3 of the 4 flagged (75.0%)" in text
    assert '"n_is": 128' in text                            # 5/4 · 64 = 80 -> 128
    s.ess_out[:20] = 30.0
    s.ess_out[:5] = 4.0                                    # 5 % low, none flagged: no suggestion
    s.low_ess = unc.ess_flags(s.ess_in, n_is) | unc.ess_flags(s.ess_out, n_is)
    s.memorized[:] = False
    summarize_cli.print_low_ess(s)
    text = capsys.readouterr().out
    assert "5 of 95 (5.3%)" in text and "n_is\":" not in text
    s.ess_in[:], s.ess_out[:] = np.nan, np.nan            # exact log p (MADE): no ESS at all
    s.low_ess = unc.ess_flags(s.ess_in, n_is) | unc.ess_flags(s.ess_out, n_is)
    summarize_cli.print_low_ess(s)
    text = capsys.readouterr().out
    assert "no example is low_ess" in text and "suggestion" not in text


def test_two_repeats_interval_is_the_range_of_three_replicates_and_holds_the_estimate():
    values, held = synthetic(200, 2, 5, 3.0, seed=4, delta=np.linspace(0, 6, 200))
    w = unc.bootstrap_weights(2, 400, seed=1)
    lo, hi = cal.bootstrap_corrected(values, held, w)
    reps = [cal.calibrate(values[cal._replicate_repeats(np.array(c))],
                          held[cal._replicate_repeats(np.array(c))],
                          exact=True, p_values=False).M_corrected
            for c in ([2, 0], [0, 2], [1, 1])]
    estimate = cal.calibrate(values, held, exact=True, p_values=False).M_corrected
    np.testing.assert_allclose(reps[2], estimate)           # both repeats once: the estimate
    np.testing.assert_allclose(lo, np.minimum.reduce(reps))
    np.testing.assert_allclose(hi, np.maximum.reduce(reps))
    assert ((lo <= estimate) & (estimate <= hi)).all()
    at_edge = (estimate == lo) | (estimate == hi)
    assert 0 < at_edge.sum() < len(estimate)    # the estimate can sit at an end, as documented


# ----------------------------------------------------------------------------------------------
# the gallery figure

def gallery_inputs(tmp_path, n=120):
    from memo.files import neighbours as neighbours_file
    from test_figures import fake_images
    s = summary.load(write_summary(tmp_path / "exp.npz", n=n))
    images = fake_images(n)
    rng = np.random.default_rng(5)
    samples = rng.integers(0, 256, (30, 1, 32, 32), dtype=np.uint8)
    nn = neighbours_file.Neighbours(tmp_path / "exp_nn.npz", np.ones(n), np.ones(n),
                                    rng.uniform(1, 3, n), rng.integers(0, 30, n), samples)
    return s, images, nn


def draw(tmp_path, s, images, nn, monkeypatch):
    import json
    from memo import figures
    monkeypatch.setenv("MEMO_NO_LATEX", "1")
    out = tmp_path / "out"
    figures.build("gallery", [s], out, nn=nn, images=images, engine=None)
    assert (out / "gallery.pdf").read_bytes().startswith(b"%PDF")
    assert (out / "gallery.png").read_bytes().startswith(b"\x89PNG")
    return json.loads((out / "gallery.json").read_text())


def test_gallery_shows_the_flagged_in_the_lists_order_beside_their_neighbours(tmp_path,
                                                                              monkeypatch):
    s, images, nn = gallery_inputs(tmp_path)
    first = flagged.flagged_order(s)[0]
    images[77] = images[first]                        # an exact copy elsewhere in the data
    s.meta["calibration"]["controls"] = {"n": 1000, "flagged": 3, "rate": 0.003,
                                         "rate_ci": [0.0006, 0.0087], "threshold": 1e-3,
                                         "fdr_estimate": 0.053, "fdr_upper": 0.155}
    doc = draw(tmp_path, s, images, nn, monkeypatch)
    assert 0 < s.memorized.sum() <= 24
    assert doc["what"] == "flagged" and doc["samples"] is True
    assert doc["shown"] == s.index[flagged.flagged_order(s)].tolist()
    assert doc["neighbours"][0] == 77                 # the copy is its nearest other image
    assert "3 of 1{,}000 pass" in doc["caption"]


def test_gallery_with_none_flagged_shows_the_strongest_labelled_as_such(tmp_path, monkeypatch):
    s, images, _ = gallery_inputs(tmp_path)
    s.memorized[:] = False
    doc = draw(tmp_path, s, images, None, monkeypatch)   # no nn file: no samples column
    assert doc["what"] == "strongest" and doc["samples"] is False and doc["skip"] is None
    assert doc["shown"] == s.index[flagged.by_evidence(s)[:6]].tolist()
    assert "none is flagged" in doc["caption"] and "make nn-" in doc["caption"]


def test_gallery_caps_many_flagged_and_says_so(tmp_path, monkeypatch):
    from memo.figures import gallery
    s, images, nn = gallery_inputs(tmp_path)
    s.memorized[:100] = True
    doc = draw(tmp_path, s, images, nn, monkeypatch)
    assert len(doc["shown"]) == gallery.CAP and doc["flagged"] == int(s.memorized.sum())
    assert f"the first {gallery.CAP} of {int(s.memorized.sum())} flagged" in doc["caption"]


def test_nearest_training_image_is_the_brute_force_one_never_itself():
    from memo.figures import gallery
    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, (40, 3, 8, 8), dtype=np.uint8)
    images[9] = images[2]
    rows = np.array([2, 5, 39])
    where, d = gallery.nearest_training(images, rows)
    from memo.measures import neighbours
    x = neighbours.downsample(torch.from_numpy(images)).double().numpy()
    full = np.sqrt(((x[rows, None, :] - x[None, :, :]) ** 2).sum(-1))
    full[np.arange(3), rows] = np.inf
    assert list(where) == list(full.argmin(1)) and where[0] == 9 and d[0] == 0.0
    np.testing.assert_allclose(d, full.min(1))


def test_make_plans_the_flagged_list_as_an_output_of_the_summary():
    import plan
    from memo.config import experiments
    table = {"fashion_demo": experiments.get("fashion_demo")}
    rules = [line for line in plan.make_fragment(table).splitlines() if " &: " in line
             and line.startswith("$(ANALYSIS)/fashion_demo.npz")]
    assert len(rules) == 1
    assert rules[0].split(" &: ")[0].split() == [
        "$(ANALYSIS)/fashion_demo.npz", "$(ANALYSIS)/fashion_demo.csv",
        "$(ANALYSIS)/fashion_demo" + flagged.SUFFIX]


@pytest.mark.skipif(not shutil.which("make"), reason="no make")
def test_make_redraws_the_gallery_when_the_nn_file_changes(tree):
    import os
    from test_figures import make
    for f in make(tree, "print-AN_FIGURES").split():
        p = tree / f
        p.parent.mkdir(parents=True, exist_ok=True)
        p.touch()
        os.utime(p, (2e9, 2e9))
    os.utime(tree / "analysis" / "demo_nn.npz", (2.1e9, 2.1e9))
    cmds = [l.split("analysis.py ")[1] for l in make(tree, "-n", "figures").splitlines()
            if "analysis.py" in l]
    assert sorted(cmds) == ["gallery analysis/demo.npz --out output/demo",
                            "neighbours analysis/demo.npz --out output/demo"]


def test_gallery_without_calibration_shows_the_highest_m_not_flagged(tmp_path, monkeypatch):
    from test_figures import fake_images
    s = summary.load(write_summary(tmp_path / "old.npz", n=60, calibrated=False))
    doc = draw(tmp_path, s, fake_images(60), None, monkeypatch)
    assert doc["what"] == "highest M" and doc["flagged"] == 0
    assert doc["shown"] == s.index[np.argsort(-s.M_final, kind="stable")[:6]].tolist()
    assert "no calibration" in doc["caption"]

"""The other memorization measures in the pipeline: the planted data set, what the full model's
training records for them, and measures.compute end to end on a tiny experiment."""
import json
from pathlib import Path

import numpy as np
import pytest
import torch

import measures as measures_cli
import memorization
import summarize
from memo.config import experiments
from memo.errors import FileFormatError
from memo.files import measures as measures_file
from memo.measures import measures
from memo.measures import sweep as sweep_measures
from memo.data import mnist, planted
from memo.files import results
from memo.files import summary as summary_file
from memo.config.experiments import FULL_JOB


# ----------------------------------------------------------------------------------------------
# the planted data set


def _labels(seed=0, n=6000):
    return np.random.default_rng(seed).integers(0, 10, n)


def test_planted_layout_has_the_designed_roles_and_is_deterministic():
    labels = _labels()
    a, b = planted.layout(labels), planted.layout(labels)
    assert np.array_equal(a.source, b.source) and np.array_equal(a.role, b.role)
    assert len(a.source) == planted.N == 2000
    assert np.bincount(a.role).tolist() == [planted.N_REGULAR, planted.N_SINGLETONS,
                                            planted.N_GROUPS * planted.GROUP_SIZE,
                                            planted.N_ONEOFFS]
    assert np.array_equal(planted._roles(planted.N), a.role)
    # rare-class singletons: distinct images of the withheld class, the only ones of it
    single = a.source[a.role == planted.SINGLETON]
    assert len(set(single.tolist())) == planted.N_SINGLETONS
    real = a.source[a.source >= 0]
    assert (labels[real] == planted.WITHHELD_CLASS).sum() == planted.N_SINGLETONS
    assert (labels[single] == planted.WITHHELD_CLASS).all()
    # one-offs: no source image, no group
    assert (a.source[a.role == planted.ONEOFF] == -1).all()
    assert (a.source[a.role != planted.ONEOFF] >= 0).all()
    assert (a.group[a.role != planted.DUPLICATE] == -1).all()
    # duplicates: each group is GROUP_SIZE copies of one source image, not used elsewhere
    for g in range(planted.N_GROUPS):
        src = a.source[a.group == g]
        assert len(src) == planted.GROUP_SIZE and len(set(src.tolist())) == 1
        assert (a.source == src[0]).sum() == planted.GROUP_SIZE
    regular = a.source[a.role == planted.REGULAR]
    assert len(set(regular.tolist())) == planted.N_REGULAR
    # shuffled: every planted kind is spread over the set, not at its end
    for role in (planted.SINGLETON, planted.DUPLICATE, planted.ONEOFF):
        assert np.flatnonzero(a.role == role).min() < planted.N // 4


def test_planted_build_copies_images_plants_oneoffs_and_drops_the_withheld_class_from_test():
    labels = torch.as_tensor(_labels())
    images = torch.arange(len(labels), dtype=torch.int64).view(-1, 1, 1, 1).expand(-1, 1, 32,
                                                                                     32)
    x, y = planted.build(images, labels, "train")
    lay = planted.layout(labels.numpy())
    kept = lay.source >= 0
    assert torch.equal(x[kept, 0, 0, 0], torch.as_tensor(lay.source[kept]))
    assert torch.equal(y[kept], labels[lay.source[kept]]) and (y[~kept] == -1).all()
    oneoffs = x[torch.as_tensor(~kept)]
    assert torch.equal(oneoffs, torch.as_tensor(planted.oneoff_images((1, 32, 32))).long())
    # the same built from numpy arrays
    xn, yn = planted.build(images.numpy(), labels.numpy(), "train")
    assert np.array_equal(xn, x.numpy()) and np.array_equal(yn, y.numpy())
    xt, yt = planted.build(images, labels, "test")
    assert (yt != planted.WITHHELD_CLASS).all() and len(yt) == (labels != 8).sum()


def test_oneoffs_are_distinct_blocks_in_the_image_area():
    pats = planted.oneoff_images((1, 32, 32))
    assert pats.shape == (planted.N_ONEOFFS, 1, 32, 32) and pats.dtype == np.uint8
    assert set(np.unique(pats).tolist()) == {0, 255}
    assert (pats[..., :2, :] == 0).all() and (pats[..., 30:, :] == 0).all()   # the border
    inner = pats[:, 0, 2:30, 2:30].reshape(planted.N_ONEOFFS, 7, 4, 7, 4)
    assert (inner == inner[:, :, :1, :, :1]).all()                         # 4×4 blocks
    flat = pats.reshape(planted.N_ONEOFFS, -1).astype(float) / 255
    d = np.sqrt(((flat[:, None] - flat[None]) ** 2).sum(-1))
    assert d[~np.eye(len(d), dtype=bool)].min() > planted.ONEOFF_MIN_DISTANCE
    with pytest.raises(ValueError, match="28"):
        planted.oneoff_images((1, 20, 20))


def test_build_refuses_a_oneoff_close_to_another_image():
    labels = torch.as_tensor(_labels())
    lay = planted.layout(labels.numpy())
    images = torch.zeros((len(labels), 1, 32, 32), dtype=torch.uint8)
    # the image sitting where the first one-off's neighbour comes from is a near copy of it
    first = planted.oneoff_images((1, 32, 32))[0]
    victim = lay.source[lay.role == planted.REGULAR][0]
    images[victim] = torch.as_tensor(first)
    images[victim, 0, 10, 10] ^= 255
    with pytest.raises(ValueError, match="one-off lies"):
        planted.build(images, labels, "train")


@pytest.mark.skipif(not Path(mnist.FASHION_DEBIAN_DIR).is_dir(),
                    reason="Fashion-MNIST (Debian's dataset-fashion-mnist) is not installed")
def test_oneoffs_on_real_data_lie_farther_from_everything_than_any_ordinary_image(tmp_path):
    from memo import data
    d = data.load("planted", "train", root=tmp_path)
    lay = data.planted_layout(root=tmp_path)
    x = d.images.flatten(1).double() / 255
    dist = torch.cdist(x, x)
    dist.fill_diagonal_(float("inf"))
    nearest = dist.min(1).values.numpy()
    oneoff, regular = lay.role == planted.ONEOFF, lay.role == planted.REGULAR
    # measured: one-offs ≥ 13.7 from any other image; ordinary ones ≤ 9.0 from their nearest
    assert nearest[oneoff].min() > planted.ONEOFF_MIN_DISTANCE > nearest[regular].max()
    assert (nearest[lay.role == planted.DUPLICATE] < 1e-5).all()          # exact copies
    np.testing.assert_allclose(nearest[oneoff], planted.oneoff_distances(d.images.numpy()))


# ----------------------------------------------------------------------------------------------
# what the full model's training records


def _train(tmp_path, job):
    args = ["--experiment", "tiny", "--job", job, "--results-dir", str(tmp_path / "res"),
            "--device", "cpu", "--threads", "1"]
    assert memorization.main(args) == 0


def test_full_model_records_summed_losses_and_weights_at_each_evaluation_epoch(
        tiny_experiment, tmp_path):
    _train(tmp_path, "full_repeat0")
    exp = experiments.get("tiny")
    files = results.job_files(exp, FULL_JOB, tmp_path / "res")
    content = results.read_result(files.result)
    idx, loss_sum = results.as_arrays(content["results"]["train_loss_sum"])
    assert sorted(idx.tolist()) == list(range(60))
    # the per-example sums add up to the epochs' mean losses times n (those are float32 batch
    # sums, so equal to float32 rounding)
    total = sum(content["results"]["losses"]["train"]) * 60
    assert loss_sum.sum() == pytest.approx(total, rel=1e-6)
    assert (loss_sum > 0).all()
    for epoch in exp.eval_epochs():
        assert files.weights_at(epoch).is_file(), epoch
    assert files.weights_at(exp.epochs) == files.checkpoint
    cost = json.loads(files.cost.read_text())
    assert cost["cpu_seconds"] > 0 and cost["wall_seconds"] > 0


def test_fold_models_keep_no_extra_files(tiny_experiment, tmp_path):
    _train(tmp_path, "cv_repeat0_fold0")
    exp = experiments.get("tiny")
    content = results.read_result(results.job_files(exp, experiments.Job(0, 0),
                                                    tmp_path / "res").result)
    assert "train_loss_sum" not in content["results"]
    assert not list((tmp_path / "res" / "tiny" / "checkpoints").glob("*.params"))


def test_resumed_full_model_records_the_same_sums(tiny_experiment, tmp_path):
    _train(tmp_path, "full_repeat0")
    exp = experiments.get("tiny")
    path = results.job_files(exp, FULL_JOB, tmp_path / "res").result
    first = results.read_result(path)
    path.unlink()
    args = ["--experiment", "tiny", "--job", "full_repeat0", "--results-dir",
            str(tmp_path / "res"), "--device", "cpu", "--threads", "1"]
    assert memorization.main(args + ["--stop-after", "1"]) == 3
    assert memorization.main(args) == 0
    assert results.read_result(path) == first


# ----------------------------------------------------------------------------------------------
# every measure, end to end


@pytest.fixture
def trained(tiny_experiment, tmp_path):
    exp = experiments.get("tiny")
    for job in exp.jobs():
        _train(tmp_path, job.tag)
    files = [str(results.job_files(exp, j, tmp_path / "res").result) for j in exp.jobs()]
    out = tmp_path / "analysis" / "tiny.npz"
    assert summarize.main(["--experiment", "tiny", "--result-files", *files, "-o", str(out),
                           "--n-boot", "50", "--n-perm", "50"]) == 0
    return exp, out


def test_measures_cli_writes_every_measure_for_every_example(trained, tmp_path, capsys):
    exp, summary_path = trained
    out = tmp_path / "analysis" / "tiny_measures.npz"
    assert measures_cli.main(["--experiment", "tiny", "--summary", str(summary_path),
                              "--results-dir", str(tmp_path / "res"), "--device", "cpu",
                              "--samples", "200", "--vectors", "2", "-o", str(out)]) == 0
    ms = measures_file.load(out)
    assert list(ms.values) == list(measures.MEASURES)
    assert ms.n == 60 and ms.epochs == exp.eval_epochs()
    for name in measures.ONE_MODEL:
        v = ms.values[name]
        assert v.shape == (60,) and np.isfinite(v).all(), name
    for name in ("final_loss", "loss_sum", "self_influence", "curvature", "curvature_final"):
        assert (ms.values[name] > 0).all(), name
    assert ms.values["copies"].sum() <= 200
    assert 0 <= ms.copying["ratio"] <= 1 and ms.copying["control_n"] == 20
    assert ms.models["M"] == exp.folds * exp.repeats + 1 and ms.models["curvature"] == 1
    # self-influence is evaluated twice: the reliability is a Spearman correlation, kept
    assert -1 <= ms.reliability["self_influence"] <= 1
    assert ms.settings["curvature_h"] is None and ms.settings["curvature_vectors"] == 2
    # the CSV and the table beside it
    csv = out.with_suffix(".csv").read_text().splitlines()
    assert csv[0].split(",") == ["index", *measures.MEASURES] and len(csv) == 61
    table = (tmp_path / "analysis" / "tiny_benchmark.csv").read_text().splitlines()
    # no planted layout: its columns are left out, in the terminal's table too
    assert table[0].split(",") == [c for c in measures.TABLE_COLUMNS
                                   if c not in measures.PLANTED_COLUMNS]
    assert len(table) == 1 + len(measures.MEASURES)
    printed = capsys.readouterr().out
    assert "Spearman M" in printed and "AUROC" not in printed and "dup. pct" not in printed
    assert " nan " not in printed and "flagged: examples " in printed and "regular" not in printed


def test_measures_refuse_a_summary_of_another_experiment(trained, tmp_path, capsys):
    _, summary_path = trained
    assert measures_cli.main(["--experiment", "fashion_demo", "--summary", str(summary_path),
                              "--results-dir", str(tmp_path / "res")]) == 2
    err = capsys.readouterr().err
    assert "not fashion_demo" in err and "Traceback" not in err


def test_benchmark_rows_on_a_planted_layout_with_known_answers():
    n = 14
    role = np.array([0] * 8 + [1, 1] + [2, 2] + [3, 3])
    values = {k: np.zeros(n) for k in measures.MEASURES}
    values["M"] = np.r_[np.arange(12.0), 3.5, 20.0]     # singletons rank 9, 10; one-offs split
    values["neg_log_px"] = np.r_[np.arange(8.0), -1.0, -2.0, 100.0, 100.0, 50.0, 60.0]
    ms = measures_file.MeasureSet("x", np.arange(n), values, {k: 0.0 for k in measures.MEASURES},
                                  {k: 1 for k in measures.MEASURES},
                                  {k: 2.0 for k in measures.MEASURES}, role=role,
                                  group=np.array([-1] * 10 + [0, 0, -1, -1]),
                                  reliability={"self_influence": 0.75})
    rows = {r["measure"]: r for r in measures.benchmark(ms, n_boot=20)}
    assert rows["M"]["auroc"] == 1.0                    # both singletons above every regular
    assert rows["neg_log_px"]["auroc"] == 0.0           # both below
    # one-offs against the 8 regular examples only: 3.5 beats 4 of them, 20 all
    assert rows["M"]["oneoff_auroc"] == pytest.approx((4 / 8 + 1) / 2)
    assert rows["neg_log_px"]["oneoff_auroc"] == 1.0
    assert rows["neg_log_px"]["spearman_M"] == pytest.approx(1.0)
    assert rows["neg_log_px"]["duplicate_percentile"] > rows["M"]["duplicate_percentile"] - 1
    assert rows["M"]["cpu_seconds"] == 2.0
    assert rows["self_influence"]["reliability"] == 0.75 and np.isnan(rows["M"]["reliability"])
    assert rows["M"]["flagged_singletons"] == ""        # no flags given: no counts
    flagged = np.zeros(n, bool)
    flagged[[0, 8, 9, 10, 13]] = True        # a regular, both singletons, a duplicate, a one-off
    rows = {r["measure"]: r for r in measures.benchmark(
        ms, n_boot=0, flagged=flagged, control_flagged=np.array([True, False, False]))}
    assert (rows["M"]["flagged_oneoffs"], rows["M"]["flagged_singletons"],
            rows["M"]["flagged_duplicates"], rows["M"]["flagged_regular"],
            rows["M"]["flagged_controls"]) == ("1/2", "2/2", "1/2", "1/8", "1/3")
    assert rows["neg_log_px"]["flagged_singletons"] == ""   # the flags are M's
    text = measures.table_text(list(rows.values()), ms)
    assert "Spearman 0.750 between two independent evaluations" in text
    assert "AUROC one-offs" in text and "dup. pct" in text and "nan" not in text


def test_measures_over_training_need_every_evaluation_epochs_weights(trained, tmp_path):
    exp, summary_path = trained
    files = results.job_files(exp, FULL_JOB, tmp_path / "res")
    files.weights_at(exp.eval_epochs()[0]).unlink()       # as a full model from before
    out = tmp_path / "analysis" / "tiny_measures.npz"
    assert measures_cli.main(["--experiment", "tiny", "--summary", str(summary_path),
                              "--results-dir", str(tmp_path / "res"), "--device", "cpu",
                              "--samples", "50", "--vectors", "2", "-o", str(out)]) == 0
    ms = measures_file.load(out)
    assert np.isnan(ms.values["self_influence"]).all() and np.isnan(ms.values["curvature"]).all()
    assert np.isfinite(ms.values["curvature_final"]).all() and ms.epochs == [exp.epochs]


def test_a_truncated_measures_file_is_one_clear_error(tmp_path):
    path = tmp_path / "x_measures.npz"
    path.write_bytes(b"PK\x03\x04 truncated")
    with pytest.raises(FileFormatError, match="delete it"):
        measures_file.load(path)


def test_measures_of_an_earlier_summary_are_refused_by_its_content(tmp_path):
    summary_path = tmp_path / "x.npz"
    np.savez_compressed(summary_path, U=np.arange(4.0))
    ms = measures_file.MeasureSet("x", np.arange(4), {"M": np.zeros(4)}, {}, {}, {})
    ms.summary = measures_file.summary_record(summary_path)
    path = tmp_path / "x_measures.npz"
    measures_file.save(ms, path)
    assert measures_file.load(path).summary == ms.summary
    np.savez_compressed(summary_path, U=np.arange(4.0))   # written again, the same content
    assert measures_file.load(path).n == 4
    np.savez_compressed(summary_path, U=np.arange(4.0) + 1)   # summarized again, other numbers
    with pytest.raises(FileFormatError, match="computed from an earlier .* make measures-x"):
        measures_file.load(path)
    summary_path.unlink()            # no summary beside them: nothing to compare with
    assert measures_file.load(path).n == 4


def test_a_resume_file_without_the_new_records_records_none_of_them(tiny_experiment, tmp_path):
    exp = experiments.get("tiny")
    files = results.job_files(exp, FULL_JOB, tmp_path / "res")
    args = ["--experiment", "tiny", "--job", "full_repeat0", "--results-dir",
            str(tmp_path / "res"), "--device", "cpu", "--threads", "1"]
    assert memorization.main(args + ["--stop-after", "1"]) == 3
    state = torch.load(files.resume, weights_only=True)      # as a file from before them
    del state["history"]["loss_sum"], state["history"]["seconds"]
    torch.save(state, files.resume)
    assert memorization.main(args) == 0
    content = results.read_result(files.result)
    assert "train_loss_sum" not in content["results"]   # a sum missing epoch 1 is no sum
    assert not files.cost.exists()                       # nor is a part of the seconds


def test_size_sweep_reports_copies_losses_and_m_per_size(tiny_experiment, tmp_path):
    import sweep
    exp_file, _ = tiny_experiment
    spec = json.loads(exp_file.read_text())["tiny"]
    exp_file.write_text(json.dumps({"tiny": dict(spec, subset=40),
                                    "tiny20": dict(spec, subset=20)}))
    exp = experiments.get("tiny")
    for job in exp.jobs():
        _train(tmp_path, job.tag)
    files = [str(results.job_files(exp, j, tmp_path / "res").result) for j in exp.jobs()]
    assert summarize.main(["--experiment", "tiny", "--result-files", *files, "-o",
                           str(tmp_path / "sums" / "tiny.npz"), "--n-boot", "20",
                           "--n-perm", "20"]) == 0
    out = tmp_path / "sweep.npz"
    # tiny20's full model is trained by the sweep itself; it has no summary
    assert sweep.main(["--sizes", "tiny20", "tiny", "--samples", "30", "--results-dir",
                       str(tmp_path / "res"), "--device", "cpu", "--summaries",
                       str(tmp_path / "sums"), "-o", str(out)]) == 0
    with np.load(out) as z:
        assert z["n"].tolist() == [20, 40]
        assert ((z["ratio"] >= 0) & (z["ratio"] <= 1)).all() and (z["high"] >= z["ratio"]).all()
        assert (z["median_ratio"] <= 1).all() and (z["low_ratio"] <= z["median_ratio"]).all()
        assert np.isnan(z["M_median"][0]) and np.isfinite(z["M_median"][1])
        m = summary_file.load(tmp_path / "sums" / "tiny.npz").M_final
        assert z["M_top"][1] == pytest.approx(np.sort(m)[-10:].mean())
        assert z["M_q95"][1] >= z["M_median"][1]
        assert (z["train_loss"] > 0).all()
        # snapshots: the full model's weights at every checkpoint and evaluation epoch
        exp20 = experiments.get("tiny20")
        want = len(sweep_measures.snapshot_epochs(exp20)) + 1
        assert want > 1 and z["snapshots"].tolist() == [want, want]
        assert (z["ratio_max"] >= z["ratio"]).all()
        assert set(z["ratio_max_epoch"].tolist()) <= set(range(1, exp20.epochs + 1))
    for e in sweep_measures.snapshot_epochs(experiments.get("tiny20")):
        assert results.job_files(experiments.get("tiny20"), FULL_JOB,
                                 tmp_path / "res").weights_at(e).is_file()


def test_top_mean_counts_the_same_examples_at_every_size():
    assert sweep_measures.top_mean(np.arange(250.0)) == pytest.approx(np.arange(240, 250).mean())
    assert sweep_measures.top_mean(np.arange(8000.0)) == pytest.approx(7994.5)
    assert sweep_measures.top_mean(np.array([3.0, 1.0]), k=10) == 2.0
    assert np.isnan(sweep_measures.top_mean(np.array([])))

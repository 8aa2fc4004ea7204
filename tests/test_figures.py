"""Figures and report from small synthetic summaries (offline; LaTeX checks skip without it)."""
from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from memo import figures
from memo.files import measures as measures_file
from memo.files import neighbours as neighbours_file
from memo.files import sweep as sweep_file
from memo.score import summary
from memo.figures import common, logprob, neighbours, qualitative, report

ROOT = Path(__file__).resolve().parents[1]
HAVE_LATEX = common.latex_engine() is not None
N_IS = 64


def write_summary(path: Path, n: int = 300, E: int = 3, R: int = 2, scale=(-5.0, 10.0),
                  seed: int = 0, experiment: str | None = None, data: str = "bmnist",
                  lr: float = 1e-3, losses: bool = True, ess: bool = True,
                  calibrated: bool = True, privacy: dict | None = None) -> Path:
    """A summary file in the format of the summarize step, with M spread over `scale`;
    calibrated=False: a file from before the calibration (no such arrays)."""
    rng = np.random.default_rng(seed)
    lo, hi = scale
    # right-skewed scores: most near the low end, a long tail up to hi
    M_final = lo + (hi - lo) * rng.beta(1.2, 6.0, n)
    M_final[rng.choice(n, 2, replace=False)] = [lo, hi]
    growth = np.linspace(0.4, 1.0, E)[:, None]
    M = growth * M_final[None, :] + rng.normal(0, 0.02 * (hi - lo), (E, n))
    M[-1] = M_final
    U = rng.normal(-100, 15, (E, n)) + 0.1 * M
    V = U - M
    epochs = np.arange(1, E + 1) * 5
    meta = {"experiment": experiment or path.stem, "data": data,
            "dataset": {"bmnist": "BinarizedMNIST", "cifar10": "CIFAR10"}.get(data, "npz"),
            "model": "BernoulliMLPVAE", "latent_dim": 16, "lr": lr, "epochs": int(epochs[-1]),
            "n_is": N_IS, "folds": 10, "repeats": R, "seed": 42, "n": n,
            "eval_epochs": epochs.tolist(), "ess_threshold": 10.0}
    if privacy:
        meta["privacy"] = privacy
    se = np.full(n, np.nan) if R < 2 else np.abs(rng.normal(0.05 * (hi - lo), 0.01 * (hi - lo), n))
    arrays = dict(
        meta=np.array(json.dumps(meta)), epochs=epochs, index=np.arange(n, dtype=np.int64),
        labels=rng.integers(0, 10, n).astype(np.int64), U=U, V=V, M=M,
        n_in=np.full(n, 9 * R), n_out=np.full(n, R),
        in_lse=rng.normal(size=(R, n)), in_count=np.full((R, n), 9),
        out_lse=rng.normal(size=(R, n)), out_count=np.ones((R, n)),
        M_se=se, M_ci_low=M_final - 1.96 * se, M_ci_high=M_final + 1.96 * se,
        split_half=np.float64(0.8 if R >= 2 else np.nan),
        ess_in=rng.uniform(1, N_IS, n) if ess else np.full(n, np.nan),
        ess_out=rng.uniform(1, N_IS, n) if ess else np.full(n, np.nan),
        full_losses_train=np.linspace(200, 90, 15) if losses else np.array([]),
        full_losses_test=np.linspace(205, 100, 15) if losses else np.array([]))
    if calibrated:
        null_mean = np.abs(rng.normal(1.0, 0.5, n))
        p = rng.uniform(0, 1, n)
        p[np.argsort(M_final)[-10:]] = 1 / 2001      # the highest scores reach the minimum
        flagged = p <= 10 / n * 0.05
        meta["calibration"] = {"n_perm": 2000, "exact": False, "labellings": 10 ** R,
                               "labellings_used": 2000, "min_p": 1 / 2001, "fdr_q": 0.05,
                               "bh_first_threshold": 0.05 / n, "flagged": int(flagged.sum()),
                               "can_flag": 1 / 2001 <= 0.05 / n, "needed_at_min_p": 1,
                               "seed": 42, "interval": "shifted"}
        meta["split_half_repeats"] = [R // 2, R - R // 2]
        arrays.update(
            meta=np.array(json.dumps(meta)),
            values=rng.normal(-100, 3, (R, 10, n)).astype(np.float32),
            held_out=rng.integers(0, 10, (R, n)).astype(np.int16), null_mean=null_mean,
            M_corrected=M_final - null_mean, p_value=p, memorized=flagged,
            M_corrected_ci_low=M_final - null_mean - 1.96 * se,
            M_corrected_ci_high=M_final - null_mean + 1.96 * se,
            reliability=np.float64(0.8 * 2 / 1.8), split_half_corrected=np.float64(0.7),
            reliability_corrected=np.float64(1.4 / 1.7))
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, **arrays)
    return path


def write_nn(summary_path: Path, seed: int = 1) -> Path:
    with np.load(summary_path) as z:
        n = z["M"].shape[1]
    rng = np.random.default_rng(seed)
    d_model = rng.uniform(2, 6, n)
    d_valid = d_model * rng.lognormal(0, 0.2, n)
    path = neighbours_file.path_for(summary_path)
    np.savez(path, rho=d_valid / d_model, d_valid=d_valid, d_model=d_model)
    return path


def fake_measures(summary_path: Path, seed: int = 3, planted_roles: bool = True):
    """A measures set of the summary's examples (memo.measures), saved beside it, with planted
    roles: singletons scored high by M, duplicates low."""
    from memo.measures import measures
    from memo.data import planted
    s = summary.load(summary_path)
    rng = np.random.default_rng(seed)
    n = s.n
    values = {k: rng.normal(size=n) + 0.5 * s.M_final for k in measures.MEASURES}
    values["M"], values["M_corrected"] = s.M_final, s.M_corrected
    values["copies"] = rng.poisson(0.2, n).astype(float)
    role = group = None
    if planted_roles:
        role = np.zeros(n, np.int64)
        order = np.argsort(s.M_final)
        role[order[-5:]] = planted.SINGLETON
        role[order[:6]] = planted.DUPLICATE
        group = np.where(role == planted.DUPLICATE, np.arange(n) % 2, -1)
    ms = measures_file.MeasureSet(s.name, s.index, values, {k: 1.0 for k in measures.MEASURES},
                                  {k: 1 for k in measures.MEASURES},
                                  {k: 10.0 for k in measures.MEASURES},
                                  copying={"ratio": 0.001, "low": 0.0, "high": 0.005,
                                           "samples": 1000, "control_ratio": 0.002,
                                           "control_low": 0.0, "control_high": 0.007,
                                           "control_n": 300},
                                  epochs=[5, 10, 15], role=role, group=group)
    measures_file.save(ms, measures_file.path_for(summary_path))
    return ms


def write_sweep(path: Path) -> Path:
    n = np.array([250, 500, 1000, 2000])
    arrays = {k: np.linspace(0.01, 0.001, 4) for k in sweep_file.FIELDS}
    arrays.update(n=n.astype(float), epochs=80_000 / n, low=np.zeros(4), median_ratio=np.full(4, 0.8),
                  high=np.linspace(0.02, 0.004, 4), control_high=np.full(4, 0.01),
                  train_loss=np.linspace(200, 240, 4), test_loss=np.linspace(300, 250, 4),
                  M_median=np.linspace(8, 2, 4), M_top=np.linspace(60, 20, 4),
                  snapshots=np.full(4, 4.0),
                  meta=np.array(json.dumps({"experiments": ["a", "b", "c", "d"],
                                            "samples": 1000})))
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, **arrays)
    return path


def fake_families(path: Path, a, b) -> dict:
    """A family comparison file (memo/files/families.py) of two summaries, loaded."""
    from memo.files import families as families_file
    from memo.score import families
    r = families.compare(a.M_final, b.M_final, a.memorized, b.memorized)
    rows = [{**dict.fromkeys(families_file.ROW_FIELDS), "experiment": s.name,
             "model": s.meta["model"], "M_median": 1.0, "M_95": 5.0, "M_99.9": 9.0}
            for s in (a, b)]
    pair = {"data": a.meta["data"], "n": a.n, "families": rows, "index": a.index,
            "M_a": a.M_final, "M_b": b.M_final, "flagged_a": a.memorized,
            "flagged_b": b.memorized, "top_a": families.top_set(a.M_final, 0.05),
            "top_b": families.top_set(b.M_final, 0.05), "role": None,
            **{k: r[k] for k in ("spearman", "top_overlap", "only_a", "only_b", "flags_a",
                                 "flags_b", "flags_both")}}
    families_file.write(path, 0.05, [pair])
    return families_file.load(path)


def fake_images(n: int, channels: int = 1, seed: int = 2) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, channels, 32, 32), dtype=np.uint8)


def pdf_producer(path: Path) -> str:
    if shutil.which("pdfinfo"):
        out = subprocess.run(["pdfinfo", str(path)], capture_output=True, text=True).stdout
        m = re.search(r"^Producer:\s*(.*)$", out, re.M)
        return m.group(1) if m else ""
    m = re.search(rb"/Producer\s*\((.*?)\)", path.read_bytes())
    return m.group(1).decode("latin-1") if m else ""


def pdf_pages(path: Path) -> int:
    if shutil.which("pdfinfo"):
        out = subprocess.run(["pdfinfo", str(path)], capture_output=True, text=True).stdout
        return int(re.search(r"^Pages:\s*(\d+)", out, re.M).group(1))
    return len(re.findall(rb"/Type\s*/Page\b", path.read_bytes()))


# ----------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """Every figure of one experiment, plus the learning-rate comparison, built once."""
    tmp = tmp_path_factory.mktemp("fig")
    s3 = write_summary(tmp / "analysis" / "bmnist_lr3.npz", seed=0, lr=1e-3)
    s4 = write_summary(tmp / "analysis" / "bmnist_lr4.npz", seed=1, lr=1e-4, scale=(-3, 6))
    write_nn(s3)
    ms = fake_measures(s3)
    sw = sweep_file.load(write_sweep(tmp / "analysis" / "fashion_sizes_sweep.npz"))
    a = summary.load(s3)
    b = summary.load(s4)
    nn = neighbours_file.load(neighbours_file.path_for(s3), a.n)
    images = fake_images(a.n)
    out = tmp / "output"
    private = summary.load(write_summary(
        tmp / "analysis" / "bmnist_lr3_dp1.npz", seed=5, scale=(-2, 4),
        privacy={"epsilon": 1.0, "delta": 1e-5, "max_grad_norm": 1.0, "epsilon_spent": 0.998,
                 "noise_multiplier": 4.69}))
    fam = fake_families(tmp / "analysis" / "families.json", a, b)
    for name in figures.FIGURES:
        group = [a, private] if name in figures.GROUP_ONLY else [a]
        with pytest.MonkeyPatch.context() as mp:   # the family figure's images, by position
            mp.setattr("memo.figures.families.training_images",
                       lambda data, what: fake_images(a.n))
            figures.build(name, group, out / "bmnist_lr3", nn=nn, images=images,
                          measures_set=ms, sweep=sw, families=fam)
    for name in figures.SERIES:
        figures.build(name, [a, b], out / "bmnist")
    return tmp


@pytest.mark.parametrize("name", figures.FIGURES)
def test_each_figure_writes_nonempty_pdf_png_pgf_tex(built, name):
    d = built / "output" / "bmnist_lr3"
    for ext in ("pdf", "png", "pgf", "tex", "json"):
        assert (d / f"{name}.{ext}").stat().st_size > 0, ext
    assert (d / f"{name}.pdf").read_bytes().startswith(b"%PDF")
    assert (d / f"{name}.png").read_bytes().startswith(b"\x89PNG")
    doc = json.loads((d / f"{name}.json").read_text())
    assert doc["skip"] is None and doc["caption"]
    assert not list(d.glob(f".{name}-*")), "temporary folder left behind"


@pytest.mark.parametrize("name", figures.SERIES)
def test_comparison_figures_draw_both_learning_rates(built, name):
    doc = json.loads((built / "output" / "bmnist" / f"{name}.json").read_text())
    assert doc["experiments"] == ["bmnist_lr3", "bmnist_lr4"]
    assert "bmnist\\_lr4" in doc["caption"]


@pytest.mark.skipif(not HAVE_LATEX, reason="no LaTeX installed")
@pytest.mark.parametrize("name", figures.FIGURES)
def test_pdf_is_typeset_by_latex(built, name):
    producer = pdf_producer(built / "output" / "bmnist_lr3" / f"{name}.pdf")
    assert "pdfTeX" in producer or "LuaTeX" in producer, producer


@pytest.mark.skipif(not HAVE_LATEX, reason="no LaTeX installed")
def test_pgf_images_are_written_beside_it_and_the_wrapper_compiles_there(built, tmp_path):
    d = built / "output" / "bmnist_lr3"
    pgf = (d / "logprob.pgf").read_text()
    refs = re.findall(r"\{(logprob-img\d+\.png)\}", pgf)
    assert refs and all((d / r).exists() for r in refs)
    # the .tex wrapper compiles from a copy of the output folder
    work = tmp_path / "copy"
    shutil.copytree(d, work)
    subprocess.run([common.latex_engine(), "-interaction=nonstopmode", "-halt-on-error",
                    "logprob.tex"], cwd=work, check=True, capture_output=True)
    assert (work / "logprob.pdf").stat().st_size > 0


@pytest.mark.skipif(not HAVE_LATEX, reason="no LaTeX installed")
def test_latex_pdfs_are_byte_reproducible(tmp_path):
    s = summary.load(write_summary(tmp_path / "x.npz"))
    figures.build("quantiles", [s], tmp_path / "a")
    figures.build("quantiles", [s], tmp_path / "b")
    assert (tmp_path / "a" / "quantiles.pdf").read_bytes() == \
        (tmp_path / "b" / "quantiles.pdf").read_bytes()


@pytest.mark.parametrize("scale", [(-5.0, 10.0), (-450.0, 6500.0), (0.001, 0.004)])
def test_bins_follow_the_scale_of_the_data(tmp_path, scale):
    s = summary.load(write_summary(tmp_path / "x.npz", n=2000, scale=scale))
    M = s.M_final
    edges = common.edges_for(M, 30)
    step = edges[1] - edges[0]   # nice_edges treats values within 1e-9 steps of an edge as on it
    assert edges[0] <= M.min() + 1e-9 * step and edges[-1] >= M.max() - 1e-9 * step
    assert 10 <= len(edges) - 1 <= 80
    width = neighbours.bin_width(M)
    centers, mean, se, n = neighbours.binned_means(M, np.ones_like(M), width)
    assert 5 <= len(centers) <= 200 and n.sum() <= M.size
    U = s.U_final
    ue = common.edges_for(U, logprob.TARGET_BINS, logprob.RANGE_Q)
    assert 10 <= len(ue) - 1 <= 60


def test_bin_width_is_the_papers_two_for_an_mnist_like_spread_and_scales_with_m():
    rng = np.random.default_rng(0)
    M = np.concatenate([rng.uniform(-5, 40, 60000), [210.0]])   # bulk over 45 nats, one outlier
    assert neighbours.bin_width(M) == 2
    assert neighbours.bin_width(100 * M) == 200


def test_nice_edges_cover_degenerate_ranges():
    e = common.nice_edges(3.0, 3.0)
    assert e[0] <= 3.0 <= e[-1] and len(e) >= 2


def test_highly_memorized_is_the_top_five_percent_by_percentile():
    M = np.arange(1000, dtype=float)
    M[0] = np.nan
    mem, thr = common.highly_memorized(M)
    assert 49 <= mem.sum() <= 51 and not mem[0]
    assert M[mem].min() >= thr > M[~mem & np.isfinite(M)].max()


def test_qualitative_picks_lowest_median_highest_without_overlap():
    M = np.random.default_rng(0).normal(size=301)
    sel = qualitative.select(M)
    order = np.argsort(M)
    assert set(sel["low"]) == set(order[:15]) and set(sel["high"]) == set(order[-15:])
    assert np.median(M) >= M[sel["median"]].min() and np.median(M) <= M[sel["median"]].max()
    assert all(np.all(np.diff(M[v]) >= 0) for v in sel.values())
    assert len(set(np.concatenate(list(sel.values())))) == 45


def test_example_selection_is_deterministic_for_a_seed(tmp_path):
    s = summary.load(write_summary(tmp_path / "x.npz", n=3000))
    U, M = s.U_final, s.M_final
    mem, _ = common.highly_memorized(M)
    edges = common.edges_for(U, logprob.TARGET_BINS, logprob.RANGE_Q)
    a = logprob.select_examples(U, mem, edges, seed=7)
    b = logprob.select_examples(U, mem, edges, seed=7)
    c = logprob.select_examples(U, mem, edges, seed=8)
    assert [(k, i.tolist()) for k, i in a] == [(k, i.tolist()) for k, i in b]
    assert [i.tolist() for _, i in a] != [i.tolist() for _, i in c]
    bins = [k for k, _ in a]
    assert bins == sorted(bins) and len(bins) == logprob.N_COLS
    for k, idx in a:
        assert len(set(idx)) == logprob.N_ROWS
        assert np.all(common.bin_of(U[idx], edges) == k)
        if mem[common.bin_of(U, edges) == k].any():
            assert mem[idx].any()


def test_no_latex_fallback_writes_matplotlib_pdf_with_one_warning(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(shutil, "which", lambda *a, **k: None)
    monkeypatch.setattr(common, "_WARNED", set())
    assert common.latex_engine() is None
    s = summary.load(write_summary(tmp_path / "x.npz"))
    figures.build("distribution", [s], tmp_path / "out")
    figures.build("quantiles", [s], tmp_path / "out")
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("warning:")     # one line, not one per figure
    pdf = tmp_path / "out" / "distribution.pdf"
    assert pdf.read_bytes().startswith(b"%PDF") and "Matplotlib" in pdf_producer(pdf)
    assert (tmp_path / "out" / "distribution.png").stat().st_size > 0


def test_missing_inputs_give_placeholders_the_report_skips(tmp_path, monkeypatch):
    monkeypatch.setenv("MEMO_NO_LATEX", "1")
    s = summary.load(write_summary(tmp_path / "x.npz", R=1, losses=False, ess=False))
    for name in ("losses", "uncertainty", "neighbours", "qualitative"):
        figures.build(name, [s], tmp_path / "out")
        doc = json.loads((tmp_path / "out" / f"{name}.json").read_text())
        assert doc["skip"], name


def test_summary_without_required_arrays_is_refused(tmp_path):
    np.savez(tmp_path / "bad.npz", x=np.zeros(3))
    with pytest.raises(summary.SummaryError, match="not a summary"):
        summary.load(tmp_path / "bad.npz")


def test_cli_loads_images_through_the_data_module(tmp_path, monkeypatch):
    import types

    import analysis
    import memo

    monkeypatch.setenv("MEMO_NO_LATEX", "1")
    path = write_summary(tmp_path / "analysis" / "demo.npz", n=120)
    loaded = []

    class Missing(Exception):
        pass

    def load(spec, split="train"):
        loaded.append((spec, split))
        return types.SimpleNamespace(images=fake_images(200))
    fake = types.SimpleNamespace(load=load, DataMissingError=Missing)
    monkeypatch.setattr(memo, "data", fake, raising=False)
    monkeypatch.setitem(sys.modules, "memo.data", fake)
    assert analysis.main(["qualitative", str(path), "--out", str(tmp_path / "o")]) == 0
    assert loaded == [("bmnist", "train")]
    assert json.loads((tmp_path / "o" / "qualitative.json").read_text())["skip"] is None


def test_measures_figure_carries_the_benchmark_table_into_the_report(built, tmp_path,
                                                                    monkeypatch):
    doc = json.loads((built / "output" / "bmnist_lr3" / "measures.json").read_text())
    from memo.measures import measures
    assert doc["table"]["columns"][1].startswith("AUROC")
    assert len(doc["table"]["rows"]) == len(measures.MEASURES)
    m_row = doc["benchmark"][0]
    assert m_row["measure"] == "M" and m_row["auroc"] == 1.0   # singletons are M's top 5
    tex = report.figure_table_tex(doc)
    assert tex.count(r"\\") == 1 + len(measures.MEASURES) and r"\toprule" in tex
    sweep_doc = json.loads((built / "output" / "bmnist_lr3" / "sweep.json").read_text())
    assert sweep_doc["sizes"] == [250, 500, 1000, 2000] and "below $1/3$" in sweep_doc["caption"]
    assert "(c) Quantiles of $M$" in sweep_doc["caption"]
    assert "size and passes" in sweep_doc["caption"]          # the confound, said beside it
    assert "mean of the 10 largest" in sweep_doc["caption"]
    assert "snapshots (4 per size)" in sweep_doc["caption"]


def test_privacy_figure_orders_by_epsilon_and_tabulates_the_budget(built):
    doc = json.loads((built / "output" / "bmnist_lr3" / "privacy.json").read_text())
    assert [r[0] for r in doc["table"]["rows"]] == ["none", "1"]
    assert doc["rows"][1]["spent"] == 0.998 and doc["rows"][1]["sigma"] == 4.69
    assert "fold" in doc["caption"] and "0.998" in doc["caption"]


def test_key_numbers_name_the_measure_closest_to_m(built):
    from memo.measures import measures
    s = summary.load(built / "analysis" / "bmnist_lr3.npz")
    ms = measures_file.load(measures_file.path_for(s.path))
    rows = dict(report.key_numbers(s, None, ms))
    value = rows["Spearman of $M$ with the closest other measure"]
    best = max((r for r in measures.benchmark(ms, n_boot=0)
                if r["measure"] in measures.ONE_MODEL and np.isfinite(r["spearman_M"])),
               key=lambda r: r["spearman_M"])
    assert value.endswith(f"({measures.MEASURES[best['measure']]})")
    assert dict(report.key_numbers(s))["Spearman of $M$ with the closest other measure"] == "--"


def test_report_has_a_table_and_the_figures(built):
    out = built / "output" / "report.pdf"
    report.build(sorted((built / "analysis").glob("bmnist_lr?.npz")),
                 sorted((built / "output").glob("*/*.json")), out)
    assert pdf_pages(out) >= 4
    tex = (built / "output" / "report.tex").read_text()
    assert "bmnist\\_lr3" in tex and "Spearman" in tex
    assert tex.count("\\includegraphics") == len(figures.FIGURES) + len(figures.SERIES)


def test_report_without_latex_is_put_together_by_matplotlib(built, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("MEMO_NO_LATEX", "1")
    out = tmp_path / "report.pdf"
    report.build(sorted((built / "analysis").glob("bmnist_lr?.npz")),
                 sorted((built / "output").glob("bmnist/*.json")), out)
    assert capsys.readouterr().err.count("warning:") == 1
    assert pdf_pages(out) == 1 + len(figures.SERIES)


# ----------------------------------------------------------------------------------------------
# the Make fragment, dry runs in a scratch tree

def make(tree: Path, *args: str) -> str:
    return subprocess.run(["make", "--no-print-directory", "-C", str(tree), *args], check=True,
                          capture_output=True, text=True).stdout


@pytest.fixture
def tree(tmp_path):
    """A scratch project: scripts/ linked, three summaries (bmnist pair + demo), one nn file."""
    (tmp_path / "scripts").symlink_to(ROOT / "scripts")
    (tmp_path / "Makefile").write_text(
        f"PY := {sys.executable}\ninclude {ROOT / 'analysis.mk'}\n"
        "print-%: ; @echo $($*)\n")
    for name in ("bmnist_lr3", "bmnist_lr4", "demo"):
        write_summary(tmp_path / "analysis" / f"{name}.npz", n=40)
    write_nn(tmp_path / "analysis" / "demo.npz")
    fake_measures(tmp_path / "analysis" / "demo.npz")
    write_sweep(tmp_path / "analysis" / "fashion_sizes_sweep.npz")
    return tmp_path


@pytest.mark.skipif(not shutil.which("make"), reason="no make")
def test_make_plans_one_command_per_figure_and_compares_the_bmnist_pair(tree):
    cmds = [l for l in make(tree, "-n", "figures").splitlines() if "analysis.py" in l]
    assert len(cmds) == len(set(cmds))
    figs = [c.split("analysis.py ")[1] for c in cmds]
    assert "losses analysis/bmnist_lr3.npz analysis/bmnist_lr4.npz --out output/bmnist" in figs
    # the pair's members get no single-experiment versions of the compared figures
    assert not any(f.startswith(figures.SERIES) and "--out output/bmnist_" in f for f in figs)
    assert "neighbours analysis/demo.npz --out output/demo" in figs
    assert not any(f.startswith("neighbours analysis/bmnist") for f in figs)
    assert "measures analysis/demo.npz --out output/demo" in figs
    assert "sweep analysis/fashion_sizes_sweep.npz --out output/size_sweep" in figs
    # the files beside the summaries are not taken for summaries
    assert make(tree, "print-AN_EXPS").split() == ["bmnist_lr3", "bmnist_lr4", "demo"]
    singles = len(make(tree, "print-AN_SINGLE").split())
    # singles of the pair, demo's own (singles, series, neighbours, measures), bmnist
    # comparisons, the sweep
    assert len(figs) == 2 * singles + (singles + 3 + 2) + 3 + 1


@pytest.mark.skipif(not shutil.which("make"), reason="no make")
def test_make_rebuilds_only_the_figures_of_a_changed_summary(tree):
    import os
    files = make(tree, "print-AN_FIGURES").split()
    for f in files:
        p = tree / f
        p.parent.mkdir(parents=True, exist_ok=True)
        p.touch()
        os.utime(p, (2e9, 2e9))
    assert "analysis.py" not in make(tree, "-n", "figures")
    os.utime(tree / "analysis" / "demo.npz", (2.1e9, 2.1e9))
    cmds = [l for l in make(tree, "-n", "figures").splitlines() if "analysis.py" in l]
    assert cmds and all("analysis/demo.npz" in c and "output/demo" in c for c in cmds)


def test_ess_threshold_is_the_summarys_or_the_projects_flagging_rule():
    from memo.score import uncertainty as unc
    from memo.figures.uncertainty import ess_threshold
    assert ess_threshold({"ess_threshold": 10.0, "n_is": 256}) == 10.0
    assert ess_threshold({"n_is": 256}) == pytest.approx(float(unc.ess_threshold(256)))
    assert ess_threshold({}) is None


def test_figures_read_summaries_through_the_summary_module(tmp_path, capsys):
    bad = tmp_path / "analysis" / "bad.npz"
    bad.parent.mkdir()
    np.savez(bad, meta=np.array("{}"), epochs=np.arange(3), U=np.zeros((3, 5)),
             V=np.zeros((3, 5)), M=np.zeros((3, 5)), M_se=np.zeros(4))
    with pytest.raises(summary.SummaryError, match=r"bad\.npz: M_se has shape \(4,\)"):
        summary.load(bad)
    import analysis
    assert analysis.main(["quantiles", str(bad), "--out", str(tmp_path / "o")]) == 1  # a bad file
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(bad) in err[0] and err[0].startswith("analysis.py: error: ")
    # what the figures read is what summary.save writes
    s = summary.load(write_summary(tmp_path / "x.npz"))
    summary.save(s, tmp_path / "y.npz")
    t = summary.load(tmp_path / "y.npz")
    assert t.meta == s.meta and t.repeats == s.repeats == 2
    for key in summary.ARRAYS:
        np.testing.assert_array_equal(getattr(t, key), getattr(s, key), err_msg=key)

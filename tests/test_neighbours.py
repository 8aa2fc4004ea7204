import json

import numpy as np
import pytest
import torch

from memo import data, models
from memo.config import experiments
from memo.measures import neighbours
from memo.errors import FileFormatError
from memo.files import neighbours as neighbours_file
from memo.files import results


def _brute(q, r):
    d = torch.cdist(q.double(), r.double(), compute_mode="donot_use_mm_for_euclid_dist")
    val, idx = d.min(dim=1)
    return val, idx


def test_nearest_distances_match_brute_force_with_uneven_blocks():
    g = torch.Generator().manual_seed(0)
    q = torch.rand((23, 7), generator=g)
    r = torch.rand((17, 7), generator=g)
    r[5] = q[3]                       # exact duplicate
    r[16] = q[20]                     # duplicate in the last, partial column block
    for rows, cols in [(4, 5), (23, 17), (1, 1), (100, 100), (7, 3)]:
        dist, idx = neighbours.nearest_distances(q, r, block_rows=rows, block_cols=cols)
        want, want_idx = _brute(q, r)
        torch.testing.assert_close(dist, want, rtol=0, atol=1e-12)
        assert torch.equal(idx, want_idx)
        assert dist[3].item() == 0.0 and idx[3].item() == 5
        assert dist[20].item() == 0.0 and idx[20].item() == 16


def test_each_row_gets_its_own_minimum():
    # references on a line at 0, 10, 20, ...; query j sits next to reference perm[j], so the
    # rows of one block have different nearest neighbours (row 0's would be wrong for the rest)
    refs = torch.arange(12, dtype=torch.float32)[:, None] * 10.0
    perm = torch.tensor([0, 7, 3, 11, 5, 9, 1, 4, 10, 2, 8, 6])
    offsets = torch.linspace(-2, 2, 12)
    queries = refs[perm] + offsets[:, None]
    dist, idx = neighbours.nearest_distances(queries, refs, block_rows=5, block_cols=4)
    assert torch.equal(idx, perm)
    torch.testing.assert_close(dist, offsets.abs().double(), rtol=0, atol=1e-5)  # float32 inputs


def test_duplicates_of_real_images_are_exact_zeros_and_beat_near_duplicates():
    g = torch.Generator().manual_seed(1)
    train = torch.randint(0, 256, (6, 3, 32, 32), generator=g, dtype=torch.uint8)
    valid = torch.randint(0, 256, (9, 3, 32, 32), generator=g, dtype=torch.uint8)
    valid[4] = train[2]                              # exact duplicate
    valid[7] = train[2]
    valid[7, 0, 0, 0] ^= 1                            # near duplicate: one pixel off by one
    valid[1] = train[5]
    valid[1, 2, 10, 10] ^= 1                          # train[5] has only a near duplicate
    q, r = neighbours.downsample(train), neighbours.downsample(valid)
    assert q.shape == (6, 3 * 16 * 16) and float(q.max()) <= 1.0
    dist, idx = neighbours.nearest_distances(q, r, block_rows=4, block_cols=2)
    assert dist[2].item() == 0.0 and idx[2].item() == 4
    assert idx[5].item() == 1
    assert dist[5].item() == pytest.approx(1 / 1020, rel=1e-4)  # 1/255 over 4 pixels, float32
    want, _ = _brute(q, r)
    torch.testing.assert_close(dist, want, rtol=0, atol=1e-12)


def test_downsample_is_average_pooling_in_unit_range():
    x = torch.zeros((1, 1, 32, 32), dtype=torch.uint8)
    x[0, 0, 0, 0] = 255
    v = neighbours.downsample(x)
    assert v.shape == (1, 256)
    assert v[0, 0].item() == pytest.approx(0.25) and v[0, 1:].abs().sum() == 0
    f = torch.full((2, 1, 32, 32), 0.5)            # decoder means are already in [0, 1]
    assert torch.allclose(neighbours.downsample(f), torch.full((2, 256), 0.5))


def test_distance_ratio_special_cases():
    d_valid = np.array([2.0, 0.0, 1.0, 0.0, np.nan, 3.0])
    d_model = np.array([1.0, 2.0, 0.0, 0.0, 1.0, 6.0])
    rho, code = neighbours.distance_ratio(d_valid, d_model)
    np.testing.assert_array_equal(rho[[0, 1, 2, 5]], [2.0, 0.0, np.inf, 0.5])
    assert np.isnan(rho[3]) and np.isnan(rho[4])
    np.testing.assert_array_equal(code, [neighbours.REGULAR, neighbours.VALID_DUPLICATE,
                                         neighbours.MODEL_DUPLICATE, neighbours.BOTH_DUPLICATE,
                                         neighbours.INVALID, neighbours.REGULAR])
    # every non-finite rho carries a code
    assert np.all(code[~np.isfinite(rho)] != neighbours.REGULAR)
    assert neighbours.special_counts(code) == {"valid_duplicate": 1, "model_duplicate": 1,
                                               "both_duplicate": 1, "invalid": 1}


# ----------------------------------------------------------------------------------------------
# the CLI, end to end on a tiny experiment

def _tiny_experiment(tmp_path, monkeypatch, subset=0):
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, size=(30, 28, 28), dtype=np.uint8)
    x_test = rng.integers(0, 256, size=(12, 28, 28), dtype=np.uint8)
    x_test[2] = x[5]                  # exact duplicate of a training image
    npz = tmp_path / "x.npz"
    np.savez(npz, x=x, x_test=x_test)
    spec = {"tiny": {"data": f"npz:{npz}", "model": "BernoulliMLPVAE", "latent_dim": 4,
                     "lr": 0.001, "epochs": 1, "eval_every": 1, "n_is": 4, "folds": 2,
                     "repeats": 1, "subset": subset}}
    exp_file = tmp_path / "experiments.json"
    exp_file.write_text(json.dumps(spec))
    monkeypatch.setenv("EXPERIMENTS_FILE", str(exp_file))
    return f"npz:{npz}"


def _save_checkpoint(results_dir, latent_dim=4):
    torch.manual_seed(0)
    model = models.build("BernoulliMLPVAE", latent_dim, in_channels=1)
    path = results.job_files(experiments.get("tiny"), experiments.FULL_JOB, results_dir).checkpoint
    path.parent.mkdir(parents=True)
    torch.save(model.state_dict(), path)
    return model.eval()


def test_cli_end_to_end(tmp_path, monkeypatch, capsys):
    import nearest_neighbours as cli

    spec = _tiny_experiment(tmp_path, monkeypatch)
    model = _save_checkpoint(tmp_path / "res")
    out = tmp_path / "out" / "tiny_nn.npz"
    rc = cli.main(["--experiment", "tiny", "--results-dir", str(tmp_path / "res"),
                   "--device", "cpu", "-o", str(out), "--block-rows", "7", "--block-cols", "5"])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "valid_duplicate 1" in printed and "model_duplicate 0" in printed
    with np.load(out) as z:
        res = {k: z[k] for k in z.files}
    meta = json.loads(str(res["meta"]))
    assert meta["n_train"] == 30 and meta["n_samples"] == 12 and meta["reference_split"] == "test"
    assert meta["special_counts"]["valid_duplicate"] == 1
    assert dict(zip(res["special_names"], res["special"]))["valid_duplicate"] == 1
    assert not list(out.parent.glob(".*tmp"))        # no temporary file left behind

    # brute force: the same data, the same seeded samples from the same model
    q = neighbours.downsample(data.load(spec, "train").images)
    r = neighbours.downsample(data.load(spec, "test").images)
    z = torch.randn((12, 4), generator=torch.Generator().manual_seed(42))
    with torch.no_grad():
        s = neighbours.downsample(model.pixel_mean(z))
    dv, iv = _brute(q, r)
    dm, _ = _brute(q, s)
    np.testing.assert_allclose(res["d_valid"], dv.numpy(), atol=1e-9)
    np.testing.assert_allclose(res["d_model"], dm.numpy(), atol=1e-6)
    np.testing.assert_array_equal(res["nn_valid"], iv.numpy())
    assert res["d_valid"][5] == 0.0 and res["rho"][5] == 0.0
    assert res["special_code"][5] == neighbours.VALID_DUPLICATE
    others = np.arange(30) != 5
    np.testing.assert_allclose(res["rho"][others], (dv / dm).numpy()[others], rtol=1e-6)
    # the samples are kept, 8-bit, for the gallery: those the nearest indices point at
    assert meta["format"] == neighbours_file.FORMAT and res["samples"].dtype == np.uint8
    with torch.no_grad():
        kept = (model.pixel_mean(z) * 255).round().to(torch.uint8).numpy()
    np.testing.assert_array_equal(res["samples"], kept.reshape(12, 1, 32, 32))
    loaded = neighbours_file.load(out, 30)
    np.testing.assert_array_equal(loaded.samples, res["samples"])
    np.testing.assert_array_equal(loaded.nn_model, res["nn_model"])


def test_nn_files_without_samples_still_load(tmp_path):
    path = tmp_path / "old_nn.npz"
    np.savez(path, rho=np.ones(4), d_valid=np.ones(4), d_model=np.ones(4),
             nn_model=np.zeros(4, np.int64))                 # format 1: no samples
    nn = neighbours_file.load(path, 4)
    assert nn.samples is None and nn.nn_model is None
    np.savez(path, rho=np.ones(4), nn_model=np.full(4, 3),
             samples=np.zeros((2, 1, 32, 32), np.uint8))   # index 3 of 2 samples
    with pytest.raises(FileFormatError, match="do not fit together"):
        neighbours_file.load(path, 4)


def test_cli_subset_uses_first_images(tmp_path, monkeypatch):
    import nearest_neighbours as cli

    _tiny_experiment(tmp_path, monkeypatch, subset=10)
    _save_checkpoint(tmp_path / "res")
    out = tmp_path / "nn.npz"
    assert cli.main(["--experiment", "tiny", "--results-dir", str(tmp_path / "res"),
                     "--device", "cpu", "-o", str(out)]) == 0
    with np.load(out) as z:
        assert z["rho"].shape == (10,) and z["d_valid"][5] == 0.0


def test_cli_missing_checkpoint_is_a_clear_error(tmp_path, monkeypatch, capsys):
    import nearest_neighbours as cli

    _tiny_experiment(tmp_path, monkeypatch)
    out = tmp_path / "nn.npz"
    rc = cli.main(["--experiment", "tiny", "--results-dir", str(tmp_path / "res"),
                   "--device", "cpu", "-o", str(out)])
    assert rc == 1
    err = capsys.readouterr().err
    assert "npz_BernoulliMLPVAE_512-256-4_seed42_full_repeat0_epoch1.params" in err
    assert "memorization-tiny" in err and "Traceback" not in err
    assert "npz_BernoulliMLPVAE_512-256-4_seed42_full_repeat0.json.gz" in err
    assert not out.exists()


def test_cli_unknown_experiment(tmp_path, monkeypatch, capsys):
    import nearest_neighbours as cli

    monkeypatch.delenv("EXPERIMENTS_FILE", raising=False)
    assert cli.main(["--experiment", "nope", "--results-dir", str(tmp_path)]) == 2  # usage
    assert "nearest_neighbours.py: error: unknown experiment" in capsys.readouterr().err

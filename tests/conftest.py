import json
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
sys.path.insert(0, str(ROOT / "tools"))  # the local SLURM cluster the tests use

TINY = {"data": None, "model": "BernoulliMLPVAE", "latent_dim": 4, "lr": 1e-3, "epochs": 3,
        "eval_every": 2, "n_is": 8, "batch_size": 16, "folds": 3, "repeats": 2,
        "checkpoint_every": 1}


def write_tiny_npz(path: Path, n: int = 60, n_test: int = 20, seed: int = 0) -> Path:
    """Grey 28x28 images of random rectangles (uint8), in the npz format users supply."""
    rng = np.random.default_rng(seed)

    def images(m):
        x = np.zeros((m, 28, 28), dtype=np.uint8)
        for i in range(m):
            r0, c0 = rng.integers(0, 14, 2)
            h, w = rng.integers(6, 14, 2)
            x[i, r0:r0 + h, c0:c0 + w] = rng.integers(120, 256)
        return x

    np.savez(path, x=images(n), y=rng.integers(0, 3, n), x_test=images(n_test))
    return path


@pytest.fixture
def tiny_experiment(tmp_path, monkeypatch):
    """A tiny npz data set and an EXPERIMENTS_FILE defining experiment 'tiny' on it.

    Returns (experiments_file, npz_path). EXPERIMENTS_FILE is set in the environment.
    """
    npz = write_tiny_npz(tmp_path / "tiny.npz")
    spec = dict(TINY, data=f"npz:{npz}")
    exp_file = tmp_path / "experiments.json"
    exp_file.write_text(json.dumps({"tiny": spec}))
    monkeypatch.setenv("EXPERIMENTS_FILE", str(exp_file))
    return exp_file, npz

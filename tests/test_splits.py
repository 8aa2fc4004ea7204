"""K-fold splits: a partition of [n], the paper's fold sizes, keyed by (seed, repeat)."""
import numpy as np
import pytest
import torch

from memo.config import splits


@pytest.mark.parametrize("n,k", [(60000, 10), (103, 10), (17, 3), (5, 5)])
def test_folds_partition_the_data(n, k):
    for repeat in range(3):
        folds = splits.folds(n, k, seed=42, repeat=repeat)
        allidx = np.concatenate(folds)
        assert len(allidx) == n and np.array_equal(np.sort(allidx), np.arange(n))
        sizes = [len(f) for f in folds]
        # floor(n/K) each, the remainder spread one each over the first folds
        assert sizes == [n // k + (1 if i < n % k else 0) for i in range(k)]


def test_every_index_held_out_once_per_repeat_and_train_is_the_rest():
    n, k = 103, 10
    for repeat in range(2):
        held = np.zeros(n, dtype=int)
        for fold in range(k):
            tr, te = splits.train_test_indices(n, k, 42, repeat, fold)
            assert len(np.intersect1d(tr, te)) == 0 and len(tr) + len(te) == n
            held[te] += 1
        assert (held == 1).all()


def test_repeat_depends_only_on_seed_and_repeat():
    a = splits.permutation(1000, 42, 3)
    np.random.seed(0)
    torch.manual_seed(123)
    np.random.rand(10)
    for r in range(3):  # running other repeats first changes nothing
        splits.permutation(1000, 42, r)
    assert np.array_equal(a, splits.permutation(1000, 42, 3))
    assert not np.array_equal(a, splits.permutation(1000, 42, 4))
    assert not np.array_equal(a, splits.permutation(1000, 43, 3))


def test_full_model_trains_on_everything():
    tr, te = splits.train_test_indices(10, 3, 42, 0, splits.FULL_FOLD)
    assert np.array_equal(tr, np.arange(10)) and len(te) == 0


def test_model_seeds_are_distinct_and_stable():
    seeds = {splits.model_seed(42, r, k) for r in range(10) for k in [splits.FULL_FOLD, *range(10)]}
    assert len(seeds) == 110
    assert splits.model_seed(42, 3, 7) == splits.model_seed(42, 3, 7)


def test_bad_fold_is_an_error():
    with pytest.raises(ValueError):
        splits.train_test_indices(10, 3, 42, 0, 3)
    with pytest.raises(ValueError):
        splits.folds(3, 5, 42, 0)

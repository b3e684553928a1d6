"""Evaluation protocols and paired statistics: user folds are disjoint and cover every user once,
each fold is a complete training set, and the bootstrap interval behaves."""

from __future__ import annotations

import json

import numpy as np
import pyarrow.parquet as pq
import pytest

from training.metrics import auc
from training.protocols import build_user_kfold, user_folds
from training.stats import Unit, paired_auc_difference, weighted_auc
from training.synthetic import write_trainset
from training.vocab import Vocab


def _users(root, split):
    return set(pq.read_table(root / split, columns=["user_id"])["user_id"].to_pylist())


def test_user_folds_are_balanced_and_seeded():
    folds = user_folds(np.arange(1, 24), 5, seed=3)
    sizes = np.bincount(list(folds.values()))
    assert sizes.max() - sizes.min() <= 1 and sizes.sum() == 23
    assert (
        user_folds(np.arange(1, 24), 5, seed=3) == folds != user_folds(np.arange(1, 24), 5, seed=4)
    )
    with pytest.raises(ValueError):
        user_folds([1, 2], 5, seed=0)


def test_user_kfold_tests_every_user_once_and_never_trains_on_them(tmp_path):
    source = write_trainset(tmp_path / "syn")
    out = build_user_kfold(source, folds=4, seed=1)
    everyone = set().union(*(_users(source, s) for s in ("train", "valid", "test")))
    tested, rows = [], 0
    for k in range(4):
        root = out / f"fold{k}"
        train, valid, test = (_users(root, s) for s in ("train", "valid", "test"))
        assert not (train & test) and not (valid & test) and not (train & valid)
        assert train | valid | test == everyone
        tested.append(test)
        meta = json.loads((root / "meta.json").read_text())
        assert meta["protocol"] == "user-kfold" and sum(meta["rows"].values()) == 900
        rows += meta["rows"]["test"]
        vocab = Vocab.load(root)
        assert (vocab.user_index(sorted(test)) == 0).all()  # test users are unknown to the model
        assert (vocab.user_index(sorted(train)) > 0).all()
        assert (root / "item_mm").is_dir()
    assert set().union(*tested) == everyone and sum(map(len, tested)) == len(everyone)
    assert rows == 900  # every row is tested exactly once


def test_weighted_auc_with_unit_weights_is_the_auc():
    rng = np.random.default_rng(0)
    y, s = rng.integers(0, 2, 300), rng.random(300)
    got = weighted_auc(np.argsort(s), y, np.ones((1, 300)))[0]
    assert got == pytest.approx(auc(y, s), abs=1e-12)


def test_paired_difference_interval_separates_a_better_model_from_noise():
    rng = np.random.default_rng(1)
    users = rng.integers(0, 200, 4000)
    y = rng.integers(0, 2, 4000)
    weak = y * 0.3 + rng.random(4000)
    strong = y * 1.0 + rng.random(4000)
    better = paired_auc_difference([Unit(users, y, strong, weak)], resamples=300)
    assert better.shown and better.low < better.mean < better.high
    noise = paired_auc_difference(
        [Unit(users, y, weak + 1e-3 * rng.random(4000), weak)], resamples=300
    )
    assert not noise.shown and noise.low < 0 < noise.high


def test_paired_mean_difference_resamples_groups():
    from training.stats import paired_mean_difference

    rng = np.random.default_rng(2)
    groups = rng.integers(0, 100, 5000)
    base = rng.random(5000) < 0.3
    better = base | (rng.random(5000) < 0.1)
    shown = paired_mean_difference(better, base, groups, resamples=300)
    assert shown.shown and shown.mean == pytest.approx(better.mean() - base.mean())
    same = paired_mean_difference(base, base, groups, resamples=50)
    assert same.mean == same.low == same.high == 0.0 and not same.shown

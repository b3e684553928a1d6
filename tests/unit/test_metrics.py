"""training.metrics: AUC / GAUC against brute-force pairwise counts, logloss known values,
decile ids under ties and tiny inputs."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from training.metrics import auc, by_decile, gauc, logloss


def _pairwise_auc(labels, scores):
    pos = [s for y, s in zip(labels, scores) if y]
    neg = [s for y, s in zip(labels, scores) if not y]
    if not pos or not neg:
        return float("nan")
    wins = sum(1.0 if p > q else 0.5 if p == q else 0.0 for p, q in itertools.product(pos, neg))
    return wins / (len(pos) * len(neg))


def test_auc_known_values():
    assert auc([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8]) == pytest.approx(0.75)
    assert auc([0, 1], [0.2, 0.9]) == 1.0
    assert auc([1, 0], [0.2, 0.9]) == 0.0
    assert auc([0, 1, 0, 1], [0.5, 0.5, 0.5, 0.5]) == 0.5  # all tied
    assert auc([True, False, True], [3, 1, 1]) == pytest.approx(0.75)  # one tie, one win


def test_auc_one_class_or_empty_is_nan():
    assert math.isnan(auc([1, 1, 1], [0.1, 0.2, 0.3]))
    assert math.isnan(auc([0, 0], [0.1, 0.2]))
    assert math.isnan(auc([], []))


def test_auc_matches_brute_force_pairs_with_many_ties():
    rng = np.random.default_rng(0)
    for _ in range(20):
        N = int(rng.integers(2, 60))
        y = rng.random(N) < 0.4
        s = rng.integers(0, 5, N) / 4.0  # heavy ties
        want = _pairwise_auc(y, s)
        got = auc(y, s)
        assert (math.isnan(want) and math.isnan(got)) or abs(got - want) < 1e-12


def test_auc_matches_sklearn_when_available():
    metrics = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(1)
    y = rng.random(5000) < 0.3
    s = np.round(rng.normal(size=5000) + y, 1)
    assert auc(y, s) == pytest.approx(metrics.roc_auc_score(y, s), abs=1e-12)
    p = 1 / (1 + np.exp(-s))
    assert logloss(y, p) == pytest.approx(metrics.log_loss(y, p), abs=1e-9)


def test_auc_rejects_bad_input():
    with pytest.raises(ValueError, match="binary"):
        auc([0, 2], [0.1, 0.2])
    with pytest.raises(ValueError, match="finite"):
        auc([0, 1], [0.1, float("nan")])
    with pytest.raises(ValueError, match="scores for"):
        auc([0, 1], [0.1])


def test_gauc_weights_users_by_impressions_and_skips_one_class_users():
    users = [7, 7, 7, 7, 3, 3, 9, 9, 9]
    labels = [1, 0, 0, 1, 0, 1, 1, 1, 1]
    scores = [0.9, 0.1, 0.8, 0.2, 0.3, 0.2, 0.5, 0.1, 0.3]
    # user 7: pos {0.9, 0.2} vs neg {0.1, 0.8}: wins 1 + 1 + 0 + 1 of 4 -> 0.75, 4 impressions
    # user 3: 0.0 with 2 impressions; user 9 has only positives: skipped
    assert gauc(users, labels, scores) == pytest.approx((0.75 * 4 + 0.0 * 2) / 6)


def test_gauc_matches_brute_force_per_user():
    rng = np.random.default_rng(2)
    N = 400
    users = rng.integers(100, 130, N)
    y = rng.random(N) < 0.5
    s = rng.integers(0, 6, N).astype(float)
    num = den = 0.0
    for u in np.unique(users):
        sel = users == u
        a = _pairwise_auc(y[sel], s[sel])
        if not math.isnan(a):
            num += a * sel.sum()
            den += sel.sum()
    assert gauc(users, y, s) == pytest.approx(num / den, abs=1e-12)
    # one user: GAUC == AUC; string ids work
    assert gauc(["a"] * N, y, s) == pytest.approx(auc(y, s), abs=1e-12)


def test_gauc_nan_without_any_two_class_user():
    assert math.isnan(gauc([1, 1, 2], [1, 1, 0], [0.1, 0.2, 0.3]))
    assert math.isnan(gauc([], [], []))


def test_logloss_known_values_and_clipping():
    assert logloss([1, 0], [0.5, 0.5]) == pytest.approx(math.log(2))
    assert logloss([1, 0, 1], [0.9, 0.2, 0.6]) == pytest.approx(
        -(math.log(0.9) + math.log(0.8) + math.log(0.6)) / 3
    )
    assert logloss([1, 0], [1.0, 0.0]) == pytest.approx(-math.log(1 - 1e-7), rel=1e-6)
    worst = logloss([1], [0.0])
    assert math.isfinite(worst) and worst == pytest.approx(-math.log(1e-7))
    assert logloss([0], [0.3], eps=0.4) == pytest.approx(-math.log(0.6))


def test_by_decile_uniform_keys():
    keys = np.arange(100)
    ids = by_decile(keys, keys)
    assert ids.dtype == np.int64
    np.testing.assert_array_equal(np.bincount(ids), [10] * 10)
    assert (np.diff(ids) >= 0).all()  # monotone in the key


def test_by_decile_ties_share_a_decile_and_small_inputs_work():
    keys = np.array([0] * 50 + list(range(1, 51)))  # half the items are brand new (age 0)
    ids = by_decile(keys, keys)
    assert len(set(ids[:50])) == 1 and ids[0] == 0
    assert ids.min() == 0 and ids.max() == 9 and (np.diff(ids) >= 0).all()
    assert (by_decile([5.0, 5.0, 5.0], [5.0, 5.0, 5.0]) == 0).all()
    tiny = by_decile([1, 2, 3], [1, 2, 3])
    assert (np.diff(tiny) > 0).all() and tiny[0] == 0 and tiny[-1] == 9
    assert by_decile([42], [42]).tolist() == [0]


def test_by_decile_values_cut_at_reference_keys_nonfinite_is_minus_one():
    keys = np.arange(1, 101, dtype=float)  # quantile edges 10.9, 20.8, ... 90.1
    ids = by_decile([-5, 1, 10.9, 11, 55, 1e9, np.nan, np.inf], np.r_[keys, np.nan])
    assert ids.tolist() == [0, 0, 0, 1, 5, 9, -1, -1]
    assert by_decile(np.arange(12).reshape(3, 4), keys).shape == (3, 4)
    with pytest.raises(ValueError, match="finite"):
        by_decile([1.0], [np.nan])

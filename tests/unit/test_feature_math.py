"""mminterest.feature_math: hand-computed cases, contract invariants, and a brute-force
Python reference on random data."""

from __future__ import annotations

import math

import numpy as np
import pytest

from mminterest import feature_math as fm


def _reference(target, history, mask, l, n):
    """Element by element, straight from CONTRACTS.md."""
    B, T, _ = history.shape
    sim = np.zeros((B, T), np.float32)
    valid = np.zeros((B, T), bool)
    dist = np.zeros((B, l, n), np.float32)
    for b in range(B):
        tn = math.sqrt(sum(float(x) ** 2 for x in target[b]))
        for t in range(T):
            hn = math.sqrt(sum(float(x) ** 2 for x in history[b, t]))
            if not mask[b, t] or tn == 0 or hn == 0:
                continue
            cos = sum(float(a) * float(c) for a, c in zip(target[b], history[b, t])) / (tn * hn)
            r = np.float32((min(max(cos, -1.0), 1.0) + 1) / 2)
            sim[b, t], valid[b, t] = r, True
            i = next(i for i in range(l) if i * T / l <= t < (i + 1) * T / l)
            dist[b, i, min(int(math.floor(float(r) * n)), n - 1)] += 1.0 / T
    return sim, valid, dist


def test_two_item_history_with_known_cosines():
    target = np.array([[1.0, 0.0]], np.float32)
    history = np.array([[[0.0, 3.0], [-2.0, 0.0], [1.0, 1.0], [0.0, 0.0]]], np.float32)
    mask = np.array([[True, True, True, False]])
    sim, _ = fm.similarity_scores(target, history, mask)
    assert sim.dtype == np.float32 and sim.shape == (1, 4)
    # cos = 0, -1, 1/sqrt(2); padding -> 0
    np.testing.assert_allclose(sim[0], [0.5, 0.0, (1 + 1 / math.sqrt(2)) / 2, 0.0], atol=1e-7)
    dist = fm.interest_distribution(sim, mask, l=2, n=4)
    want = np.zeros((2, 4), np.float32)
    want[0, 2] = 0.25  # r = 0.5 -> bin floor(2.0) = 2, slice 0 (positions 0, 1)
    want[0, 0] = 0.25  # r = 0 -> bin 0
    want[1, 3] = 0.25  # r = 0.854 -> bin 3, slice 1 (positions 2, 3)
    np.testing.assert_array_equal(dist[0], want)


def test_bin_edges_r_one_goes_to_last_bin_and_exact_edges_go_up():
    scores = np.array([[1.0, 0.0, 0.1, 0.5, 0.99999, 0.3]], np.float32)
    mask = np.ones_like(scores, bool)
    dist = fm.interest_distribution(scores, mask, l=1, n=10)[0, 0] * 6
    # floor(0.1f * 10) = floor(1.0000000149) = 1; 0.3f * 10 rounds to 3.0 in float32
    want = np.zeros(10)
    for j in (9, 0, 1, 5, 9, 3):
        want[j] += 1
    np.testing.assert_allclose(dist, want, atol=1e-6)
    # identical target and item: cos = 1 -> r = 1 -> last bin
    v = np.array([[0.3, -0.4, 1.2]], np.float32)
    sim, _ = fm.similarity_scores(v, v[:, None, :], np.ones((1, 1), bool))
    assert sim[0, 0] == pytest.approx(1.0, abs=1e-7)
    assert fm.interest_distribution(sim, np.ones((1, 1), bool), l=1, n=10)[0, 0, 9] == 1.0


def test_scores_parallel_and_antiparallel_are_bounded():
    rng = np.random.default_rng(0)
    v = rng.normal(size=(5, 16)).astype(np.float32)
    history = np.stack([v, -v, 7.5 * v], axis=1)
    sim, _ = fm.similarity_scores(v, history, np.ones((5, 3), bool))
    assert (sim >= 0).all() and (sim <= 1).all()
    np.testing.assert_allclose(sim, np.tile([1.0, 0.0, 1.0], (5, 1)), atol=1e-6)


def test_distribution_sums_to_valid_fraction_and_short_histories_fill_first_slices():
    rng = np.random.default_rng(1)
    B, T, d = 6, 20, 8
    history = rng.normal(size=(B, T, d)).astype(np.float32)
    target = rng.normal(size=(B, d)).astype(np.float32)
    lengths = np.array([0, 1, 3, 7, 19, 20])
    mask = np.arange(T)[None] < lengths[:, None]
    mask[5, 4] = False  # a history item without this modality
    out = fm.target_features({"txt": target}, {"txt": history}, {"txt": mask}, l=5, n=4)
    dist, sim, valid = out["dist_txt"], out["sim_txt"], out["sim_mask_txt"]
    assert dist.shape == (B, 5, 4) and dist.dtype == np.float32
    assert ((dist >= 0) & (dist <= 1)).all()
    np.testing.assert_allclose(dist.sum(axis=(1, 2)), mask.sum(1) / T, atol=1e-6)
    np.testing.assert_array_equal(valid, mask)
    assert (sim[~mask] == 0).all() and (sim[mask] > 0).all()
    # length 3 with 4 positions per slice: everything in slice 0
    np.testing.assert_allclose(dist[2, 0].sum(), 3 / T, atol=1e-7)
    assert dist[2, 1:].sum() == 0
    # length 7: 4 in slice 0, 3 in slice 1
    np.testing.assert_allclose(dist[3].sum(axis=1), [4 / T, 3 / T, 0, 0, 0], atol=1e-7)
    assert (dist[0] == 0).all()


def test_missing_modality_target_and_zero_vectors_are_masked_without_nan():
    rng = np.random.default_rng(2)
    B, T = 3, 10
    img_t = rng.normal(size=(B, 5)).astype(np.float32)
    img_t[1] = 0.0  # target without a poster
    img_h = rng.normal(size=(B, T, 5)).astype(np.float32)
    img_h[2, 1] = 0.0  # a history item without a poster, but flagged as real
    txt_t = rng.normal(size=(B, 3)).astype(np.float32)
    txt_h = rng.normal(size=(B, T, 3)).astype(np.float32)
    mask = np.ones((B, T), bool)
    with np.errstate(all="raise"):  # not even a warning on 0 / 0
        out = fm.target_features(
            {"img": img_t, "txt": txt_t}, {"img": img_h, "txt": txt_h}, {"img": mask, "txt": mask}
        )
    assert set(out) == {f"{k}_{m}" for k in ("sim", "sim_mask", "dist") for m in ("img", "txt")}
    for v in out.values():
        assert not np.isnan(v.astype(np.float64)).any()
    assert not out["sim_mask_img"][1].any() and (out["sim_img"][1] == 0).all()
    assert (out["dist_img"][1] == 0).all()
    assert not out["sim_mask_img"][2, 1] and out["sim_img"][2, 1] == 0
    assert out["sim_mask_img"].sum() == B * T - T - 1
    np.testing.assert_allclose(out["dist_img"].sum(axis=(1, 2)), [1.0, 0.0, 0.9], atol=1e-6)
    assert out["sim_mask_txt"].all()
    assert out["dist_txt"].shape == (B, 10, 10)


def test_non_finite_vectors_are_masked_silently():
    target = np.array([[1.0, 0.0], [np.nan, 1.0], [1.0, 1.0]], np.float32)
    history = np.array(
        [[[1.0, 0.0], [np.inf, 0.0]], [[1.0, 0.0], [0.0, 1.0]], [[1.0, 1.0], [-np.inf, np.nan]]],
        np.float32,
    )
    with np.errstate(all="raise"):
        sim, _ = fm.similarity_scores(target, history, np.ones((3, 2), bool))
    np.testing.assert_allclose(sim, [[1.0, 0.0], [0.0, 0.0], [1.0, 0.0]], atol=1e-7)


def test_bad_l_or_n_raises_a_clear_error():
    scores, mask = np.zeros((2, 64), np.float32), np.ones((2, 64), bool)
    with pytest.raises(ValueError, match="shorter than the number of time slices l=65"):
        fm.interest_distribution(scores, mask, l=65, n=10)
    with pytest.raises(ValueError, match=">= 1"):
        fm.interest_distribution(scores, mask, l=0, n=10)
    with pytest.raises(ValueError, match=">= 1"):
        fm.interest_distribution(scores, mask, l=8, n=0)
    with pytest.raises(TypeError):
        fm.interest_distribution(scores, mask, l=2.5, n=10)
    with pytest.raises(ValueError, match="time slices"):
        fm.target_features(
            {"t": np.ones((1, 2))}, {"t": np.ones((1, 3, 2))}, {"t": np.ones((1, 3), bool)}, l=4
        )
    assert fm.interest_distribution(scores, mask, l=64, n=10).shape == (2, 64, 10)


def test_default_t64_l10_slices_follow_the_contract():
    """T = 64 is not a multiple of l = 10: slice i is [6.4 i, 6.4 (i + 1)), 7 or 6 positions."""
    T = 64
    scores = np.full((1, T), 0.55, np.float32)
    dist = fm.interest_distribution(scores, np.ones((1, T), bool))  # defaults l = n = 10
    per_slice = np.rint(dist[0].sum(axis=1) * T).astype(int)
    want = [sum(1 for t in range(T) if i * 6.4 <= t < (i + 1) * 6.4) for i in range(10)]
    np.testing.assert_array_equal(per_slice, want)
    assert per_slice.sum() == T and set(want) == {6, 7}
    assert (dist[0][:, 5] == dist[0].sum(axis=1)).all()  # r = 0.55 -> bin 5
    # a history of 7 items fills slice 0 exactly; the 8th item starts slice 1
    short = fm.interest_distribution(scores, np.arange(T)[None] < 8)
    np.testing.assert_allclose(short[0].sum(axis=1)[:3], [7 / T, 1 / T, 0])


def test_shape_mismatch_and_missing_modality_keys_raise():
    with pytest.raises(ValueError, match="shape mismatch"):
        fm.similarity_scores(np.zeros((2, 3)), np.zeros((2, 4, 5)), np.ones((2, 4), bool))
    with pytest.raises(ValueError, match="lack history"):
        fm.target_features({"img": np.zeros((1, 2))}, {}, {})


@pytest.mark.parametrize("T,l,n", [(12, 4, 5), (64, 10, 10), (13, 5, 3)])
def test_vectorised_matches_brute_force_reference_on_random_data(T, l, n):
    rng = np.random.default_rng(T)
    B, d = 9, 7
    target = rng.normal(size=(B, d)).astype(np.float32)
    target[0] = 0.0
    history = rng.normal(size=(B, T, d)).astype(np.float32)
    history[1, :3] = target[1] * np.float32(2.0)  # exact cos = 1
    history[2, :2] = -target[2]  # exact cos = -1
    history[3, 5] = 0.0
    mask = rng.random((B, T)) < 0.8
    sim_ref, valid_ref, dist_ref = _reference(target, history, mask, l, n)
    out = fm.target_features({"m": target}, {"m": history}, {"m": mask}, l=l, n=n)
    np.testing.assert_array_equal(out["sim_mask_m"], valid_ref)
    assert np.abs(out["sim_m"] - sim_ref).max() < 1e-6
    assert np.abs(out["dist_m"] - dist_ref).max() < 1e-6


def test_rows_do_not_depend_on_the_batch_or_a_broadcast_history():
    """The offline job (chunks of many rows) and the ranker (one shared history broadcast to B
    candidates) must produce the same bits for the same (user, item)."""
    rng = np.random.default_rng(4)
    B, T, d = 50, 64, 33
    target = rng.normal(size=(B, d)).astype(np.float32)
    shared = rng.normal(size=(T, d)).astype(np.float32)
    mask = np.arange(T) < 41
    full = fm.target_features(
        {"x": target}, {"x": np.tile(shared, (B, 1, 1))}, {"x": np.tile(mask, (B, 1))}
    )
    view = fm.target_features(
        {"x": target},
        {"x": np.broadcast_to(shared, (B, T, d))},
        {"x": np.broadcast_to(mask, (B, T))},
    )
    one = fm.target_features({"x": target[7:8]}, {"x": shared[None]}, {"x": mask[None]})
    for k in full:
        np.testing.assert_array_equal(full[k], view[k], err_msg=k)
        np.testing.assert_array_equal(full[k][7:8], one[k], err_msg=k)


def test_inputs_are_not_modified_and_float64_inputs_give_float32():
    rng = np.random.default_rng(5)
    target = rng.normal(size=(2, 4))
    history = rng.normal(size=(2, 10, 4))
    mask = np.ones((2, 10), bool)
    copies = target.copy(), history.copy(), mask.copy()
    out = fm.target_features({"t": target}, {"t": history}, {"t": mask}, l=5, n=2)
    assert out["sim_t"].dtype == out["dist_t"].dtype == np.float32
    assert out["sim_mask_t"].dtype == bool
    for a, b in zip((target, history, mask), copies):
        np.testing.assert_array_equal(a, b)


def test_empty_batch():
    out = fm.target_features(
        {"t": np.zeros((0, 4), np.float32)},
        {"t": np.zeros((0, 10, 4), np.float32)},
        {"t": np.zeros((0, 10), bool)},
        l=5,
        n=3,
    )
    assert out["sim_t"].shape == (0, 10) and out["dist_t"].shape == (0, 5, 3)


def test_stack_ragged_arrow_layout_keeps_most_recent_and_pads_right():
    # rows [5, 6, 7], [], [8, 9, 10, 11, 12] (cut to T = 4), [13]; offsets not starting at 0
    values = np.array([0, 0, 5, 6, 7, 8, 9, 10, 11, 12, 13], np.int64)
    offsets = np.array([2, 5, 5, 10, 11])
    ids, mask = fm.stack_ragged(offsets, values, 4)
    np.testing.assert_array_equal(ids, [[5, 6, 7, 0], [0, 0, 0, 0], [8, 9, 10, 11], [13, 0, 0, 0]])
    np.testing.assert_array_equal(mask.sum(1), [3, 0, 4, 1])
    vecs, vmask = fm.stack_ragged(
        np.array([0, 1, 3]), np.arange(6, dtype=np.float32).reshape(3, 2), 2
    )
    assert vecs.shape == (2, 2, 2)
    np.testing.assert_array_equal(vecs[0], [[0, 1], [0, 0]])
    np.testing.assert_array_equal(vecs[1], [[2, 3], [4, 5]])
    np.testing.assert_array_equal(vmask, [[True, False], [True, True]])
    with pytest.raises(ValueError):
        fm.stack_ragged(np.array([3, 1]), values, 4)


def test_missing_history_vectors_and_targets_are_masked():
    hist = np.array([[[1.0, 0.0], [0.0, 0.0]], [[0.0, 1.0], [1.0, 0.0]]], np.float32)
    mask = np.array([[True, False], [True, True]])
    target = np.array([[1.0, 0.0], [0.0, 0.0]], np.float32)  # second target lacks the modality
    out = fm.target_features({"img": target}, {"img": hist}, {"img": mask}, l=1, n=2)
    np.testing.assert_array_equal(out["sim_img"], [[1.0, 0.0], [0.0, 0.0]])
    np.testing.assert_array_equal(out["sim_mask_img"], [[True, False], [False, False]])
    np.testing.assert_array_equal(out["dist_img"][:, 0], [[0.0, 0.5], [0.0, 0.0]])

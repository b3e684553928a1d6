"""Target-dependent features: THE one definition, shared by the offline Spark job
(`spark_jobs/interest_features.py`, on Arrow batches) and the online ranker
(`serving/online.py`, one user against ~200 candidates). numpy only.

Conventions (CONTRACTS.md):

- A history is **most recent first**: position 0 is the latest item; arrays are right-padded to
  T and `mask` (B, T) is True at real positions. A history shorter than T therefore fills the
  first time slices; a longer one is cut to its T most recent items by the stacking helpers.
- Similarity score r = (cos(target, item) + 1) / 2, in [0, 1], float32; 0 where masked.
- A missing modality is an all-zero vector (an item without a poster has no `img`). A zero-norm
  or non-finite vector, target or history, is treated as masked: a target lacking a modality
  gets all positions masked, never NaN.
- Interest distribution P (l, n): time slice i covers positions [i*T/l, (i+1)*T/l), slice 0 the
  most recent, i.e. position t is in slice floor(t * l / T) (exact integer arithmetic; T need not
  be a multiple of l: the default T = 64, l = 10 gives slices of 7 or 6 positions); similarity
  bin j = min(floor(r * n), n - 1) (r = 1.0 goes to the last bin); p_ij = count / T, so the
  cells sum to (valid positions) / T.
- Deterministic and row-independent: cosines are accumulated in float64 and rounded once to
  float32, and bins are taken from that float32 score, so a row gets the same features whether
  it is computed in a Spark chunk of thousands of rows or in an online batch of 200.
"""

from __future__ import annotations

import operator
from collections.abc import Mapping

import numpy as np

__all__ = ["similarity_scores", "interest_distribution", "target_features", "stack_ragged"]


def _norms(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(L2 norms over the last axis, True where the norm is > 0 and finite) of a float64 array."""
    with np.errstate(invalid="ignore", over="ignore"):
        sq = np.einsum("...d,...d->...", x, x)
    ok = np.isfinite(sq) & (sq > 0)
    return np.sqrt(np.where(ok, sq, 1.0)), ok


def similarity_scores(
    target: np.ndarray, history: np.ndarray, mask: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """(scores r = (cos + 1) / 2, (B, T) float32, 0 where not valid; valid (B, T) bool: masked in
    and both vectors non-zero and finite).

    target (B, d), history (B, T, d), mask (B, T) bool. `history` may be a broadcast view of one
    shared (T, d) history (stride 0 on the batch axis): it is then read once, not B times.
    """
    target = np.asarray(target)
    history = np.asarray(history)
    mask = np.asarray(mask, dtype=bool)
    if target.ndim != 2 or history.ndim != 3 or mask.ndim != 2:
        raise ValueError(
            f"expected target (B, d), history (B, T, d), mask (B, T); got "
            f"{target.shape}, {history.shape}, {mask.shape}"
        )
    B, T, d = history.shape
    if target.shape != (B, d) or mask.shape != (B, T):
        raise ValueError(
            f"shape mismatch: target {target.shape}, history {history.shape}, mask {mask.shape}"
        )
    # float64 accumulation, rounded once to float32; a vector that is zero or non-finite is
    # masked (its NaN/inf dot products are never read)
    t = np.ascontiguousarray(target, dtype=np.float64)
    t_norm, t_ok = _norms(t)
    if B > 0 and history.strides[0] == 0:  # one history shared by all targets: read it once
        h = np.ascontiguousarray(history[0], dtype=np.float64)[None]  # (1, T, d)
    else:
        h = np.ascontiguousarray(history, dtype=np.float64)
    h_norm, h_ok = _norms(h)
    h_norm, h_ok = np.broadcast_to(h_norm, (B, T)), np.broadcast_to(h_ok, (B, T))
    # one (T, d) @ (d,) product per row in both branches: a row's result never depends on the batch
    with np.errstate(invalid="ignore", over="ignore"):  # inf * 0 in a masked vector
        dot = np.matmul(h, t[:, :, None])[..., 0]
    valid = mask & t_ok[:, None] & h_ok
    denom = t_norm[:, None] * h_norm
    cos = np.divide(dot, denom, out=np.zeros((B, T)), where=valid)
    r = ((np.clip(cos, -1.0, 1.0) + 1.0) * 0.5).astype(np.float32)
    r[~valid] = 0.0
    return r, valid


def interest_distribution(
    scores: np.ndarray, mask: np.ndarray, l: int = 10, n: int = 10
) -> np.ndarray:
    """Interest distribution (B, l, n) float32: p_ij = #{valid positions in time slice i with
    score in bin j} / T, T = scores.shape[1], slice i = positions [i*T/l, (i+1)*T/l). Scores are
    clipped to [0, 1]; non-finite ones count as masked. Raises ValueError unless 1 <= l <= T
    (every slice holds at least one position) and n >= 1."""
    scores = np.asarray(scores)
    mask = np.asarray(mask, dtype=bool)
    if scores.ndim != 2 or mask.shape != scores.shape:
        raise ValueError(
            f"expected scores and mask of one (B, T) shape; got {scores.shape}, {mask.shape}"
        )
    l, n = operator.index(l), operator.index(n)  # TypeError for 2.5, not a silent 2
    B, T = scores.shape
    if l < 1 or n < 1:
        raise ValueError(f"time slices l and similarity bins n must be >= 1; got l={l}, n={n}")
    if T < l:
        raise ValueError(
            f"history length T={T} is shorter than the number of time slices l={l}: "
            f"slice i covers positions [i*T/l, (i+1)*T/l), so some would be empty"
        )
    r = scores.astype(np.float32)
    valid = mask & np.isfinite(r)
    r = np.where(valid, r, np.float32(0))
    bins = np.clip(np.floor(r * np.float32(n)), 0, n - 1).astype(np.int64)
    slices = np.arange(T, dtype=np.int64) * l // T  # t in [i*T/l, (i+1)*T/l)  <=>  i = floor(t*l/T)
    cell = (np.arange(B, dtype=np.int64)[:, None] * l + slices) * n + bins
    counts = np.bincount(cell[valid], minlength=B * l * n)
    return (counts.astype(np.float32) / np.float32(T)).reshape(B, l, n)


def target_features(
    target_vecs: Mapping[str, np.ndarray],
    history_vecs: Mapping[str, np.ndarray],
    history_masks: Mapping[str, np.ndarray],
    l: int = 10,
    n: int = 10,
) -> dict[str, np.ndarray]:
    """Per modality m of `target_vecs`: `sim_{m}` (B, T) float32, `sim_mask_{m}` (B, T) bool (real
    position and both vectors present) and `dist_{m}` (B, l, n) float32.

    target_vecs[m] (B, d_m), all-zero rows for targets lacking m; history_vecs[m] (B, T, d_m);
    history_masks[m] (B, T) bool, True at real history items that have modality m."""
    missing = [m for m in target_vecs if m not in history_vecs or m not in history_masks]
    if missing:
        raise ValueError(f"modalities {missing} lack history vectors or masks")
    out: dict[str, np.ndarray] = {}
    for m, target in target_vecs.items():
        sim, valid = similarity_scores(target, history_vecs[m], history_masks[m])
        out[f"sim_{m}"] = sim
        out[f"sim_mask_{m}"] = valid
        out[f"dist_{m}"] = interest_distribution(sim, valid, l, n)
    return out


def stack_ragged(
    offsets: np.ndarray, values: np.ndarray, T: int, fill=0
) -> tuple[np.ndarray, np.ndarray]:
    """Arrow list layout -> right-padded (B, T, *values.shape[1:]) array and (B, T) mask.

    Row b is values[offsets[b]:offsets[b+1]] (offsets (B+1,), absolute into `values`, as pyarrow's
    `ListArray.offsets` / `.values` give them); its first T entries (the most recent) are kept,
    padding is `fill`. No Python loop."""
    offsets = np.asarray(offsets, dtype=np.int64)
    values = np.asarray(values)
    if offsets.ndim != 1 or len(offsets) < 1 or np.any(np.diff(offsets) < 0):
        raise ValueError("offsets must be a non-decreasing 1-D array of B + 1 positions")
    B = len(offsets) - 1
    lengths = np.minimum(np.diff(offsets), T)
    mask = np.arange(T)[None, :] < lengths[:, None]
    out = np.full((B, T) + values.shape[1:], fill, dtype=values.dtype)
    src = (offsets[:-1, None] + np.arange(T)[None, :])[mask]
    out[mask] = values[src]
    return out, mask

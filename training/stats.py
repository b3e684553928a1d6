"""Paired comparisons of two models on the same test rows (numpy only).

`paired_auc_difference` estimates AUC(a) - AUC(b) and a 95% bootstrap interval over test users:
each resample draws users with replacement (a user's rows move together, so the interval reflects
how many users were tested, not how many rows), and the statistic is the mean over units (folds x
seeds) of the AUC difference on the resampled users. A claim "a > b" is shown when the interval's
lower end is above 0.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

CHUNK = 64  # resamples evaluated at once


@dataclass(frozen=True)
class Unit:
    """One test set scored by both models: row-aligned users, labels and the two models' scores."""

    users: np.ndarray
    labels: np.ndarray
    score_a: np.ndarray
    score_b: np.ndarray


@dataclass(frozen=True)
class Difference:
    mean: float
    low: float
    high: float
    resamples: int

    @property
    def shown(self) -> bool:
        return self.low > 0

    def text(self) -> str:
        return f"{self.mean:+.4f} [{self.low:+.4f}, {self.high:+.4f}]"


def weighted_auc(order: np.ndarray, labels: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """AUC of rows sorted ascending by score (`order`), each resample's row weights in `weights`
    (R, N); ties between scores count as ordered (float scores rarely tie). Returns (R,)."""
    y = labels[order].astype(bool)
    w = weights[:, order]
    neg_below = np.cumsum(np.where(y, 0.0, w), axis=1)  # weight of negatives at or below each row
    pos = np.where(y, w, 0.0)
    total_pos, total_neg = pos.sum(1), neg_below[:, -1]
    with np.errstate(invalid="ignore", divide="ignore"):
        return (pos * neg_below).sum(1) / (total_pos * total_neg)


def _resampled_counts(
    n_groups: int, resamples: int, seed: int
) -> Iterator[tuple[slice, np.ndarray]]:
    """Bootstrap draws of groups, CHUNK resamples at a time: (their slice, (chunk, n_groups) counts)."""
    rng = np.random.default_rng(seed)
    for start in range(0, resamples, CHUNK):
        draws = rng.integers(0, n_groups, (min(CHUNK, resamples - start), n_groups))
        yield (
            slice(start, start + len(draws)),
            np.stack([np.bincount(d, minlength=n_groups) for d in draws]).astype(np.float64),
        )


def paired_auc_difference(units: list[Unit], resamples: int = 1000, seed: int = 0) -> Difference:
    """Mean over `units` of AUC(a) - AUC(b), with a 95% percentile interval over user resamples. One
    draw of users serves every unit, so seeds that share a test set share the resample."""
    from training.metrics import auc

    if not units:
        raise ValueError("no test units to compare")
    point = float(np.mean([auc(u.labels, u.score_a) - auc(u.labels, u.score_b) for u in units]))
    users = np.unique(np.concatenate([u.users for u in units]))
    codes = [np.searchsorted(users, u.users) for u in units]
    orders = [
        (np.argsort(u.score_a, kind="stable"), np.argsort(u.score_b, kind="stable")) for u in units
    ]
    stats = np.zeros(resamples)
    for part, counts in _resampled_counts(len(users), resamples, seed):
        for u, code, (order_a, order_b) in zip(units, codes, orders):
            w = counts[:, code]
            stats[part] += weighted_auc(order_a, u.labels, w) - weighted_auc(order_b, u.labels, w)
    stats /= len(units)
    stats = stats[np.isfinite(stats)]
    low, high = np.quantile(stats, [0.025, 0.975])
    return Difference(point, float(low), float(high), len(stats))


def paired_mean_difference(a, b, groups, resamples: int = 1000, seed: int = 0) -> Difference:
    """mean(a) - mean(b) of row-aligned per-row values (e.g. recall hits of two encoders on the same
    held-out pairs), with a 95% percentile interval resampling `groups` (e.g. users) with replacement."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    keys, codes = np.unique(np.asarray(groups), return_inverse=True)
    diff_sum = np.bincount(codes, weights=a - b, minlength=len(keys))
    size = np.bincount(codes, minlength=len(keys)).astype(np.float64)
    stats = np.empty(resamples)
    for part, counts in _resampled_counts(len(keys), resamples, seed):
        stats[part] = (counts @ diff_sum) / (counts @ size)
    low, high = np.quantile(stats, [0.025, 0.975])
    return Difference(float((a - b).mean()), float(low), float(high), resamples)

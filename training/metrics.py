"""Evaluation metrics for CTR models (numpy only): AUC, GAUC, logloss, and decile ids for the
cold-start breakdown by item age. Labels are binary (0/1 or bool); scores any real numbers."""

from __future__ import annotations

import numpy as np

__all__ = ["auc", "gauc", "logloss", "by_decile", "auc_by_decile", "cold_start"]


def _binary(labels) -> np.ndarray:
    y = np.asarray(labels).ravel()
    if y.dtype != bool:
        if not np.isin(y, (0, 1)).all():
            raise ValueError("labels must be binary (0/1 or bool)")
        y = y.astype(bool)
    return y


def _scores(scores, size: int) -> np.ndarray:
    s = np.asarray(scores, dtype=np.float64).ravel()
    if len(s) != size:
        raise ValueError(f"{len(s)} scores for {size} labels")
    if not np.isfinite(s).all():
        raise ValueError("scores must be finite")
    return s


def _tied_ranks(groups: np.ndarray, s: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(order, rank of each sorted element within its group, 1-based, ties averaged), for
    elements sorted by (group, score)."""
    order = np.lexsort((s, groups))
    g, v = groups[order], s[order]
    N = len(v)
    new_group = np.r_[True, g[1:] != g[:-1]] if N else np.zeros(0, bool)
    new_run = new_group | np.r_[True, v[1:] != v[:-1]] if N else new_group
    pos = np.arange(N)
    group_start = np.maximum.accumulate(np.where(new_group, pos, 0))
    run_id = np.cumsum(new_run) - 1
    run_start = pos[new_run]
    run_end = np.r_[run_start[1:], N] - 1  # last position of each run
    mid = (run_start + run_end)[run_id] / 2.0  # average 0-based position of the tie run
    return order, mid - group_start + 1.0


def _grouped_auc(groups: np.ndarray, y: np.ndarray, s: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(AUC per group, impressions per group) over dense group ids 0..G-1; nan for one-class groups."""
    order, ranks = _tied_ranks(groups, s)
    g, pos_y = groups[order], y[order]
    G = int(groups.max()) + 1 if len(groups) else 0
    n = np.bincount(g, minlength=G).astype(np.float64)
    p = np.bincount(g, weights=pos_y, minlength=G)
    rank_sum = np.bincount(g, weights=ranks * pos_y, minlength=G)
    neg = n - p
    with np.errstate(invalid="ignore", divide="ignore"):
        out = (rank_sum - p * (p + 1) / 2.0) / (p * neg)
    out[(p == 0) | (neg == 0)] = np.nan
    return out, n


def auc(labels, scores) -> float:
    """ROC AUC by ranks (Mann-Whitney U; tied scores count 1/2). nan if only one class is present."""
    y = _binary(labels)
    s = _scores(scores, len(y))
    if not len(y):
        return float("nan")
    return float(_grouped_auc(np.zeros(len(y), np.int64), y, s)[0][0])


def gauc(users, labels, scores) -> float:
    """Group AUC: per-user AUC weighted by the user's impressions, over users with both classes.
    nan if no user has both."""
    y = _binary(labels)
    s = _scores(scores, len(y))
    u = np.asarray(users).ravel()
    if len(u) != len(y):
        raise ValueError(f"{len(u)} users for {len(y)} labels")
    if not len(y):
        return float("nan")
    _, dense = np.unique(u, return_inverse=True)
    per_user, n = _grouped_auc(dense.ravel().astype(np.int64), y, s)
    ok = ~np.isnan(per_user)
    if not ok.any():
        return float("nan")
    return float(np.sum(per_user[ok] * n[ok]) / np.sum(n[ok]))


def logloss(labels, probs, eps: float = 1e-7) -> float:
    """Mean binary cross-entropy, probabilities clipped to [eps, 1 - eps]. nan for no rows."""
    y = _binary(labels).astype(np.float64)
    p = np.clip(_scores(probs, len(y)), eps, 1.0 - eps)
    if not len(y):
        return float("nan")
    return float(-np.mean(y * np.log(p) + (1.0 - y) * np.log1p(-p)))


def by_decile(values, keys, n: int = 10) -> np.ndarray:
    """Decile id (0..n-1, int64) of each of `values`, cut at the quantiles of `keys`.

    Decile k holds values in (q_k, q_{k+1}] with q_k the k/n quantile of the finite keys (the
    first decile also everything below q_1): equal values always share a decile, so heavy ties
    (e.g. many items of age 0) leave some deciles empty instead of splitting arbitrarily. Pass
    the same array twice for plain deciles. Non-finite values get -1. ValueError if `keys` has
    no finite entry."""
    v = np.asarray(values, dtype=np.float64)
    k = np.asarray(keys, dtype=np.float64).ravel()
    k = k[np.isfinite(k)]
    if not len(k):
        raise ValueError("keys have no finite value to take quantiles of")
    edges = np.quantile(k, np.arange(1, n) / n)
    out = np.searchsorted(edges, v, side="left").astype(np.int64)
    return np.where(np.isfinite(v), out, -1)


def auc_by_decile(labels, scores, values, n: int = 10) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(AUC, rows, upper edge of `values`) per decile of `values` (e.g. item age), deciles as in
    `by_decile(values, values)`; AUC is nan for an empty or one-class decile, rows without a finite value
    are left out."""
    y = _binary(labels)
    s = _scores(scores, len(y))
    v = np.asarray(values, dtype=np.float64).ravel()
    d = by_decile(v, v, n)
    out, rows, edge = np.full(n, np.nan), np.zeros(n, np.int64), np.full(n, np.nan)
    for k in range(n):
        mine = d == k
        rows[k] = mine.sum()
        if rows[k]:
            out[k], edge[k] = auc(y[mine], s[mine]), v[mine].max()
    return out, rows, edge


def cold_start(labels, scores, item_age_s, known_item, n: int = 10) -> dict:
    """The cold-start breakdown: AUC per item-age decile (upper edge in days) and AUC on the items
    without an id embedding (`known_item` False: not in the training vocabulary)."""
    y, s = _binary(labels), _scores(scores, len(np.asarray(labels).ravel()))
    aucs, rows, edges = auc_by_decile(y, s, item_age_s, n)
    new = ~np.asarray(known_item, dtype=bool).ravel()
    return {
        "deciles": [
            {"decile": k, "rows": int(r), "max_age_days": float(e / 86_400.0), "auc": float(a)}
            for k, (a, r, e) in enumerate(zip(aucs, rows, edges))
        ],
        "new_items": {
            "rows": int(new.sum()),
            "auc": auc(y[new], s[new]) if new.any() else float("nan"),
        },
    }

"""Online/offline parity: the ranker's features against a recomputation from the Delta tables.

The online store holds each user's LATEST behaviour state, so sampled interest_features rows are
compared at that state: offline, the user's newest user_behaviour row and the item vectors with
timestamps up to each view's last materialisation end are read from Delta and passed through the
same assembly and feature_math; online, `OnlineFeatures.fetch` reads Feast's online store (item
cache off). Also reported: the stored rows of the Spark job whose history IS that latest state
(row time >= the state's time), compared with the online values directly.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from feature_repo.delta_offline_store import live_dataset
from mminterest.candidates import CandidateFeatures, ItemVectors, candidate_features
from mminterest.schemas import MODALITIES, VECTORS
from serving.online import OnlineFeatures

COMPARED = ("target_mm", "hist_mm") + tuple(
    f"{k}_{m}" for m in MODALITIES for k in ("sim", "sim_mask", "dist")
)


@dataclass
class ParityReport:
    rows: int
    users: int
    max_abs_diff: float  # over COMPARED (masks as 0/1) and history ids, online vs recomputed
    per_feature: dict[str, float] = field(default_factory=dict)
    not_found_online: int = 0  # sampled items with vectors offline but none online
    stored_rows: int = 0  # sampled rows whose stored history is the latest state
    stored_max_abs_diff: float = 0.0  # online vs the Spark job's stored values for those rows
    seconds: float = 0.0

    def line(self) -> str:
        worst = (
            max(self.per_feature, key=self.per_feature.__getitem__) if self.max_abs_diff else "-"
        )
        return (
            f"parity: rows {self.rows} ({self.users} users), max |online - offline| "
            f"{self.max_abs_diff:.3g} (worst {worst}), not found online {self.not_found_online}; "
            f"stored rows at the latest state {self.stored_rows}, max |online - stored| "
            f"{self.stored_max_abs_diff:.3g}; {self.seconds:.1f} s"
        )


def check(cfg, sample: int = 200, store=None) -> ParityReport:
    """Compare `sample` random (user, item, ts) rows of interest_features online vs offline."""
    from feature_repo.store_config import open_store

    started = time.time()
    store = store or open_store(cfg)
    online = OnlineFeatures(store, cfg.seq_len, cfg.time_slices, cfg.sim_bins, item_cache_s=0)
    cut = {name: _materialized_until(store, name) for name in ("user_behaviour", "item_embeddings")}
    rows = _sample(cfg.table("interest_features"), sample, cfg.seed)
    users = np.unique(rows["user_id"].to_numpy())
    histories, state_ts = _latest_histories(
        cfg.table("user_behaviour"), users, cut["user_behaviour"]
    )
    needed = np.concatenate([rows["item_id"].to_numpy(), *histories.values()])
    offline_vectors = _item_vectors(
        cfg.table("item_embeddings"), np.unique(needed), cut["item_embeddings"]
    )

    per_feature = dict.fromkeys(COMPARED + ("hist_item_ids",), 0.0)
    stored_diff, stored_rows, not_found = 0.0, 0, 0
    user_col, item_col = rows["user_id"].to_numpy(), rows["item_id"].to_numpy()
    ts_col = _micros(rows["event_ts"])
    for user in users:
        at = np.flatnonzero(user_col == user)
        hist = histories.get(int(user), np.zeros(0, np.int64))
        want = candidate_features(
            user, hist, item_col[at], offline_vectors, cfg.seq_len, cfg.time_slices, cfg.sim_bins
        )
        got = online.fetch(int(user), item_col[at])
        for name in COMPARED:
            per_feature[name] = max(
                per_feature[name], _max_diff(getattr(got, name), getattr(want, name))
            )
        per_feature["hist_item_ids"] = max(
            per_feature["hist_item_ids"], float(np.any(got.hist_item_ids != want.hist_item_ids))
        )
        not_found += int(np.sum(want.found & ~got.found))
        latest = at[ts_col[at] >= state_ts.get(int(user), np.iinfo(np.int64).min)]
        stored_rows += len(latest)
        stored_diff = max(stored_diff, _stored_diff(rows, latest, got, np.searchsorted(at, latest)))
    return ParityReport(
        rows=rows.num_rows,
        users=len(users),
        max_abs_diff=max(per_feature.values()),
        per_feature=per_feature,
        not_found_online=not_found,
        stored_rows=stored_rows,
        stored_max_abs_diff=stored_diff,
        seconds=time.time() - started,
    )


def _max_diff(a: np.ndarray, b: np.ndarray) -> float:
    if a.shape != b.shape:
        return float("inf")
    if a.size == 0:
        return 0.0
    return float(np.max(np.abs(a.astype(np.float64) - b.astype(np.float64))))


def _stored_diff(rows: pa.Table, idx: np.ndarray, got: CandidateFeatures, pos: np.ndarray) -> float:
    """Max |online - stored| over the sim/dist arrays of the stored rows `idx` (online row `pos`)."""
    if not len(idx):
        return 0.0
    worst = 0.0
    for m in MODALITIES:
        for name in (f"sim_{m}", f"sim_mask_{m}", f"dist_{m}"):
            stored = np.asarray(rows[name].take(pa.array(idx)).to_pylist(), dtype=np.float64)
            online = getattr(got, name)[pos].reshape(len(pos), -1)
            worst = max(worst, _max_diff(online, stored.reshape(len(idx), -1)))
    return worst


def _materialized_until(store, view: str):
    end = store.get_feature_view(view).most_recent_end_time
    if end is None:
        raise RuntimeError(f"{view} was never materialised: run `mmi features materialize` first")
    return end


def _sample(path: str, n: int, seed: int) -> pa.Table:
    dataset = live_dataset(path)
    keys = dataset.to_table(columns=["user_id", "item_id", "event_ts"])
    rng = np.random.default_rng(seed)
    idx = np.sort(rng.choice(keys.num_rows, size=min(n, keys.num_rows), replace=False))
    return dataset.take(pa.array(idx))


def _latest_histories(path: str, users: np.ndarray, until) -> tuple[dict, dict]:
    """user -> newest hist_item_ids with event_ts <= until, and user -> that state's event_ts (µs)."""
    table = live_dataset(path).to_table(
        columns=["user_id", "event_ts", "hist_item_ids"],
        filter=pc.field("user_id").isin(pa.array(users))
        & (pc.field("event_ts") <= pa.scalar(until)),
    )
    frame = table.select(["user_id", "event_ts"]).to_pandas()
    newest = frame.sort_values("event_ts", kind="stable").drop_duplicates("user_id", keep="last")
    ids = table["hist_item_ids"].take(pa.array(newest.index.to_numpy())).to_pylist()
    ts = _micros(table["event_ts"].take(pa.array(newest.index.to_numpy())))
    users_out = newest["user_id"].tolist()
    return (
        {u: np.asarray(h or [], np.int64) for u, h in zip(users_out, ids)},
        dict(zip(users_out, ts.tolist())),
    )


def _micros(column) -> np.ndarray:
    return column.cast(pa.timestamp("us", tz="UTC")).cast(pa.int64()).to_numpy()


def _item_vectors(path: str, ids: np.ndarray, until) -> ItemVectors:
    table = live_dataset(path).to_table(
        columns=["item_id", *VECTORS],
        filter=pc.field("item_id").isin(pa.array(ids))
        & (pc.field("valid_from_ts") <= pa.scalar(until)),
    )
    return ItemVectors.from_arrow(table, VECTORS)

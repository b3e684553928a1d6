"""Online read path of the ranker: one user, many candidate items -> model-ready features.

Two reads of the Feast online store with the feature refs of the `ctr_serving` service: the
user's behaviour state (`hist_item_ids`), then the vectors of the history and candidate items
together; on Redis through `online_redis.RedisReader` (Feast's own layout, one pipelined batch, the
same values as `get_online_features` in under half its time), on SQLite through
`get_online_features`. The target-dependent features (similarity sequences,
interest distributions) are then computed by `mminterest.candidates.candidate_features`, the
assembly the offline Spark job uses.

Why a serving-side function and not an on-demand feature view: the inputs of these features are
the vectors of the T items *named by* the user's history array. Feast resolves features by the
entity keys of the request row only, so an on-demand view would still need a second lookup keyed
by the history's item ids, done outside Feast, and then runs per row in Python; here one batched
numpy call covers all candidates against the one history.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Sequence

import numpy as np
from cachetools import TTLCache

from mminterest.candidates import CandidateFeatures, ItemVectors, candidate_features
from mminterest.schemas import ITEM_ATTRIBUTES, VECTORS

ITEM_FIELDS = (*VECTORS, *ITEM_ATTRIBUTES)  # what is read online per item, in the cache's row order


class OnlineFeatures:
    """The ranker's reader over a Feast store; build once, call `fetch` per request.

    Item vectors read from the store are kept for `item_cache_s` seconds (0: off): reading ~T + B of
    them is most of a request's time. The cache never serves a superseded vector: `forget` drops
    items this process wrote (POST /items), and the whole cache is dropped when the Feast registry
    changes (a materialisation after a re-embedding records itself there; one stat per request).
    Users' histories are always read fresh; items absent from the store are not cached, so a newly
    materialised item is served at once."""

    def __init__(
        self,
        store,
        seq_len: int = 64,
        time_slices: int = 10,
        sim_bins: int = 10,
        service: str = "ctr_serving",
        item_cache_s: float = 60.0,
        item_cache_size: int = 200_000,
        fast_read: bool = True,
    ):
        from serving import online_redis  # feast: not in the training environment

        self.store = store
        # Redis: read Feast's layout directly (online_redis.py), same values; else get_online_features
        self._redis = online_redis.reader(store) if fast_read else None
        self.seq_len, self.time_slices, self.sim_bins = seq_len, time_slices, sim_bins
        projections = store.get_feature_service(service).feature_view_projections
        refs = [f"{p.name}:{f.name}" for p in projections for f in p.features]
        self._user_refs = [r for r in refs if r == "user_behaviour:hist_item_ids"]
        self._item_refs = [
            r
            for r in refs
            if r.split(":")[0] == "item_embeddings" and r.split(":")[1] in ITEM_FIELDS
        ]
        if not self._user_refs or len(self._item_refs) != len(ITEM_FIELDS):
            raise ValueError(
                f"feature service {service!r} lacks hist_item_ids or item fields {ITEM_FIELDS}"
            )
        # item_id -> values by ITEM_FIELDS; None when caching is off
        self._cache: TTLCache | None = (
            TTLCache(item_cache_size, item_cache_s) if item_cache_s > 0 else None
        )
        self._cache_lock = threading.Lock()
        self._registry_files = _local_registry_files(store)
        self._registry_stamp = self._stamp()
        self._dims: dict[str, int] = {}

    @classmethod
    def from_config(cls, cfg, **kwargs) -> OnlineFeatures:
        from feature_repo.store_config import open_store

        return cls(open_store(cfg), cfg.seq_len, cfg.time_slices, cfg.sim_bins, **kwargs)

    def history(self, user_id: int) -> np.ndarray:
        """The user's latest history (most recent first); empty for an unknown user."""
        values = self._read(self._user_refs, "user_id", [int(user_id)])["hist_item_ids"]
        return np.asarray(values[0] or (), dtype=np.int64)

    def vectors(self, item_ids) -> ItemVectors:
        """Vectors of the distinct `item_ids`: from the cache, the rest from the online store."""
        ids = np.unique(np.asarray(item_ids, dtype=np.int64)).tolist()
        stamp = self._stamp()
        with self._cache_lock:
            if stamp != self._registry_stamp:  # materialised since: any cached vector may be stale
                self._registry_stamp = stamp
                if self._cache is not None:
                    self._cache.clear()
            cached = self._cache if self._cache is not None else {}
            rows = {i: row for i in ids if (row := cached.get(i)) is not None}
        missing = [i for i in ids if i not in rows]
        if missing:
            values = self._read(self._item_refs, "item_id", missing)
            fresh = ItemVectors.from_rows(
                missing,
                {f: values[f] for f in VECTORS},
                self._dims,
                {a: values[a] for a in ITEM_ATTRIBUTES},
            )
            for j, i in enumerate(fresh.ids.tolist()):
                row = tuple(fresh.vecs[f][j] if fresh.present[f][j] else None for f in VECTORS)
                rows[i] = row = row + tuple(fresh.attrs[a][j] for a in ITEM_ATTRIBUTES)
                if self._cache is not None and any(v is not None for v in row[: len(VECTORS)]):
                    with self._cache_lock:
                        self._cache[i] = row
        columns = {f: [rows[i][k] for i in ids] for k, f in enumerate(ITEM_FIELDS)}
        vectors = ItemVectors.from_rows(
            ids,
            {f: columns[f] for f in VECTORS},
            self._dims,
            {a: columns[a] for a in ITEM_ATTRIBUTES},
        )
        self._dims.update({f: v.shape[1] for f, v in vectors.vecs.items() if v.shape[1]})
        return vectors

    def fetch(self, user_id: int, item_ids: Sequence[int]) -> CandidateFeatures:
        """Features of the candidates `item_ids` for `user_id`, from the latest online state."""
        hist = self.history(user_id)[: self.seq_len]
        items = np.asarray(item_ids, dtype=np.int64)
        vectors = self.vectors(np.concatenate([hist, items]))
        return candidate_features(
            user_id, hist, items, vectors, self.seq_len, self.time_slices, self.sim_bins
        )

    def forget(self, item_ids: Sequence[int]) -> None:
        """Drop `item_ids` from the item cache (their vectors were just rewritten)."""
        if self._cache is None:
            return
        with self._cache_lock:
            for item_id in item_ids:
                self._cache.pop(int(item_id), None)

    def _stamp(self) -> tuple[int, ...]:
        """Modification times of the local registry files (0 for an absent one)."""
        return tuple(
            os.stat(f).st_mtime_ns if os.path.exists(f) else 0 for f in self._registry_files
        )

    def _read(self, refs: list[str], key: str, ids: list[int]) -> dict[str, list]:
        """feature name -> per-id list of values (None where absent), decoded from the proto."""
        if self._redis is not None:
            protos = self._redis.read(refs, key, ids)
        else:
            proto = self.store.get_online_features(features=refs, entity_rows={key: ids}).proto
            protos = {n: r.values for n, r in zip(proto.metadata.feature_names.val, proto.results)}
        return {name: [_decode(v) for v in values] for name, values in protos.items()}


def _local_registry_files(store) -> list[str]:
    """The files of a local Feast registry (a file registry, or SQLite with its WAL); [] when remote."""
    registry = store.config.registry
    path = str(getattr(registry, "path", "") or "")
    if path.startswith("sqlite:///"):
        path = path.removeprefix("sqlite:///")
        return [path, path + "-wal"]
    return [path] if path and "://" not in path else []


def _decode(value):
    """A Feast Value proto -> its list payload (a sequence) or scalar; None when unset."""
    kind = value.WhichOneof("val")
    if kind is None or kind == "null_val":
        return None
    payload = getattr(value, kind)
    return payload.val if kind.endswith("_list_val") else payload

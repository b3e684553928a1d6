"""Online read path of the ranker: one user, many candidate items -> model-ready features.

Two reads of the Feast online store with the feature refs of the `ctr_serving` service: the
user's behaviour state (`hist_item_ids`), then the vectors of the history and candidate items
together; on Redis through `online_redis.RedisReader` (Feast's own layout, one pipelined batch, the
same values as `get_online_features` in under half its time), on SQLite through
`get_online_features`. The target-dependent features (similarity sequences,
interest distributions) are then computed by `feature_math.target_features`, the function the
offline Spark job uses.

Why a serving-side function and not an on-demand feature view: the inputs of these features are
the vectors of the T items *named by* the user's history array. Feast resolves features by the
entity keys of the request row only, so an on-demand view would still need a second lookup keyed
by the history's item ids, done outside Feast, and then runs per row in Python; here one batched
numpy call covers all candidates against the one history.
"""

from __future__ import annotations

import dataclasses
import os
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from feature_repo import feature_math
from mminterest.schemas import ITEM_ATTRIBUTES, MODALITIES, VECTORS

ITEM_FIELDS = (*VECTORS, *ITEM_ATTRIBUTES)  # what is read online per item, in the cache's row order


@dataclass(frozen=True)
class ItemVectors:
    """Vectors of a set of items: ids sorted ascending; per field a (K, D) float32 array (zeros
    where absent) and a (K,) presence mask; per attribute (category, has_img) a (K,) object array
    (None where absent)."""

    ids: np.ndarray
    vecs: dict[str, np.ndarray]
    present: dict[str, np.ndarray]
    attrs: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)

    @classmethod
    def from_rows(
        cls,
        ids,
        rows: dict[str, Sequence],
        dims: dict[str, int] | None = None,
        attrs: dict[str, Sequence] | None = None,
    ) -> ItemVectors:
        """Build from per-field sequences aligned with `ids` (None = absent). `dims` gives the
        width of a field none of whose rows is present (else 0); `attrs` are per-item values."""
        ids = np.asarray(ids, dtype=np.int64)
        order = np.argsort(ids, kind="stable")
        vecs, present = {}, {}
        for field, values in rows.items():
            has = np.fromiter((v is not None and len(v) > 0 for v in values), bool, len(ids))
            width = len(next((v for v, h in zip(values, has) if h), ())) or (dims or {}).get(
                field, 0
            )
            out = np.zeros((len(ids), width), dtype=np.float32)
            if has.any():
                out[has] = np.asarray([v for v, h in zip(values, has) if h], dtype=np.float32)
            vecs[field], present[field] = out[order], has[order]
        attr_values: dict[str, np.ndarray] = {}
        for name, column in (attrs or {}).items():
            attr_values[name] = np.empty(len(ids), dtype=object)
            attr_values[name][:] = list(column)
            attr_values[name] = attr_values[name][order]
        return cls(ids[order], vecs, present, attr_values)

    def take(
        self, item_ids, fields: Sequence[str] | None = None
    ) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
        """(vectors, presence) per field (default: all) for `item_ids`, in that order; unknown ids
        are absent."""
        item_ids = np.asarray(item_ids, dtype=np.int64)
        fields = list(self.vecs) if fields is None else fields
        if not len(self.ids):
            none = np.zeros(len(item_ids), bool)
            return (
                {f: np.zeros((len(item_ids), self.vecs[f].shape[1]), np.float32) for f in fields},
                {f: none for f in fields},
            )
        pos = np.minimum(np.searchsorted(self.ids, item_ids), len(self.ids) - 1)
        hit = self.ids[pos] == item_ids
        present = {f: self.present[f][pos] & hit for f in fields}
        vecs = {f: np.where(present[f][:, None], self.vecs[f][pos], np.float32(0)) for f in fields}
        return vecs, present

    def attr(self, name: str, item_ids) -> np.ndarray:
        """Attribute `name` of `item_ids` (object array, that shape; None for unknown ids)."""
        item_ids = np.asarray(item_ids, dtype=np.int64)
        out = np.full(item_ids.shape, None, dtype=object)
        if len(self.ids) and name in self.attrs:
            pos = np.minimum(np.searchsorted(self.ids, item_ids), len(self.ids) - 1)
            hit = self.ids[pos] == item_ids
            out[hit] = self.attrs[name][pos[hit]]
        return out


@dataclass(frozen=True)
class CandidateFeatures:
    """Features of B candidates for one user; names follow the CTR batch of CONTRACTS.md.

    `found[b]` is False for a candidate without vectors in the store: its sims are masked and
    its target_mm is zeros. A user without a behaviour state has an empty history. `category`
    and `hist_category` are the items' categories read online (None where the store has none)."""

    user_id: int
    item_ids: np.ndarray  # (B,) int64
    found: np.ndarray  # (B,) bool
    present: dict[str, np.ndarray]  # per VECTORS field, (B,) bool: the candidate has that vector
    category: np.ndarray  # (B,) object: category name or None
    hist_category: np.ndarray  # (T,) object
    hist_item_ids: np.ndarray  # (T,) int64, 0-padded, most recent first
    hist_mask: np.ndarray  # (T,) bool
    target_mm: np.ndarray  # (B, D) float32
    hist_mm: np.ndarray  # (T, D) float32
    sim_img: np.ndarray  # (B, T) float32
    sim_txt: np.ndarray
    sim_mask_img: np.ndarray  # (B, T) bool
    sim_mask_txt: np.ndarray
    dist_img: np.ndarray  # (B, l, n) float32
    dist_txt: np.ndarray

    @property
    def hist_len(self) -> int:
        return int(self.hist_mask.sum())


def target_inputs(vectors: ItemVectors, item_ids, hist_ids, hist_mask) -> dict[str, tuple]:
    """Per modality, the arguments of feature_math.target_features: target vectors (B, D),
    history vectors (B, T, D) and valid positions (B, T). A position is valid when it holds a real
    history item and both it and the target have that modality's vector. `hist_ids`/`hist_mask`
    are (T,), one history shared by all B targets (broadcast, not copied), or (B, T)."""
    target, target_has = vectors.take(item_ids, MODALITIES)
    history, history_has = vectors.take(np.ravel(hist_ids), MODALITIES)
    shape = (len(target_has[MODALITIES[0]]),) + np.shape(hist_ids)[-1:]
    out = {}
    for m in MODALITIES:
        hist_vecs = history[m].reshape(np.shape(hist_ids) + history[m].shape[-1:])
        valid = np.asarray(hist_mask) & history_has[m].reshape(np.shape(hist_ids))
        out[m] = (
            target[m],
            np.broadcast_to(hist_vecs, shape + hist_vecs.shape[-1:]),
            target_has[m][:, None] & np.broadcast_to(valid, shape),
        )
    return out


def candidate_features(
    user_id: int,
    hist_item_ids: Sequence[int] | np.ndarray,
    item_ids: Sequence[int] | np.ndarray,
    vectors: ItemVectors,
    seq_len: int,
    time_slices: int,
    sim_bins: int,
) -> CandidateFeatures:
    """Assemble one user's history against B candidates and compute the target-dependent
    features with feature_math (the one definition shared with the offline job)."""
    items = np.asarray(item_ids, dtype=np.int64)
    hist = np.zeros(seq_len, dtype=np.int64)
    real = np.asarray(hist_item_ids, dtype=np.int64)[:seq_len]
    hist[: len(real)] = real
    hist_mask = np.arange(seq_len) < len(real)
    inputs = target_inputs(vectors, items, hist, hist_mask)  # m -> (target, history, valid)
    per_modality = feature_math.target_features(
        {m: i[0] for m, i in inputs.items()},
        {m: i[1] for m, i in inputs.items()},
        {m: i[2] for m, i in inputs.items()},
        time_slices,
        sim_bins,
    )
    target, found = vectors.take(items)
    history, _ = vectors.take(hist, ["fused"])
    return CandidateFeatures(
        user_id=int(user_id),
        item_ids=items,
        found=np.logical_or.reduce([found[f] for f in VECTORS]),
        present={f: found[f] for f in VECTORS},
        category=vectors.attr("category", items),
        # numpy's stub rejects the None scalar that makes an object array with None in the gaps
        hist_category=np.where(hist_mask, vectors.attr("category", hist), None),  # type: ignore[call-overload]
        hist_item_ids=hist,
        hist_mask=hist_mask,
        target_mm=target["fused"],
        hist_mm=history["fused"] * hist_mask[:, None],
        **per_modality,
    )


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
        from feature_repo import online_redis  # feast: not in the training environment

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
        self.item_cache_s, self.item_cache_size = item_cache_s, item_cache_size
        self._cache: dict[
            int, tuple[float, tuple]
        ] = {}  # item_id -> (expiry, values by ITEM_FIELDS)
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
        if stamp != self._registry_stamp:  # materialised since: every cached vector may be stale
            with self._cache_lock:
                self._cache.clear()
                self._registry_stamp = stamp
        now = time.monotonic()
        rows = {i: hit[1] for i in ids if (hit := self._cache.get(i)) and hit[0] > now}
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
                if self.item_cache_s > 0 and any(v is not None for v in row[: len(VECTORS)]):
                    self._remember(i, row, now + self.item_cache_s)
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
        with self._cache_lock:
            for item_id in item_ids:
                self._cache.pop(int(item_id), None)

    def _stamp(self) -> tuple[int, ...]:
        """Modification times of the local registry files (0 for an absent one)."""
        return tuple(
            os.stat(f).st_mtime_ns if os.path.exists(f) else 0 for f in self._registry_files
        )

    def _remember(self, item_id: int, row: tuple, expiry: float) -> None:
        with self._cache_lock:
            if len(self._cache) >= self.item_cache_size:
                self._cache.pop(next(iter(self._cache)))  # oldest insertion
            self._cache.pop(item_id, None)
            self._cache[item_id] = (expiry, row)

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

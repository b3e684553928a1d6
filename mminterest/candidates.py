"""Candidate features from item vectors: the assembly shared by the offline job and the ranker.

`ItemVectors` holds a set of items' vectors and attributes; `candidate_features` lines one user's
history up against B candidates and computes the target-dependent features with `feature_math`
(the one definition). The Spark interest job and the online reader (serving/online.py) both call
it, so offline and online rows agree by construction. numpy only.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from mminterest import feature_math
from mminterest.schemas import MODALITIES, VECTORS


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

    @classmethod
    def from_arrow(cls, table, fields: Sequence[str]) -> ItemVectors:
        """From an Arrow table with `item_id` and the list columns `fields` (null = absent)."""
        return cls.from_rows(
            table["item_id"].to_numpy(),
            {f: table[f].to_numpy(zero_copy_only=False) for f in fields},
        )

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

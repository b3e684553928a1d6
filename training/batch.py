"""numpy feature columns -> the CTR batch of CONTRACTS.md (torch + numpy only; the ranker imports it).

The one conversion used by training and by the online ranker: raw ids become dense indices through a
`Vocab`, history ids at padded positions become 0, list columns (object arrays of arrays, as pandas
gives them) are stacked, and flat interest distributions (B, l*n) become (B, l, n).
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch

from training.vocab import Vocab, named

FLOAT_SEQS = ("sim_img", "sim_txt")
MASKS = ("sim_mask_img", "sim_mask_txt")
DISTS = ("dist_img", "dist_txt")
COLUMNS = (
    "user_id",
    "item_id",
    "hist_item_ids",
    "hist_mask",
    *FLOAT_SEQS,
    *MASKS,
    *DISTS,
    "target_mm",
    "hist_mm",
)


def stack(values, dtype) -> np.ndarray:
    """A dense array of `dtype`; an object array of equal-length arrays (a pandas list column) is stacked."""
    arr = np.asarray(values)
    if arr.dtype == object:
        arr = np.stack([np.asarray(v, dtype=dtype) for v in arr]) if len(arr) else arr.astype(dtype)
    return np.ascontiguousarray(arr, dtype=dtype)


def _grid(dist: np.ndarray, shape: tuple[int, int] | None) -> np.ndarray:
    """(B, l, n) from (B, l, n) or (B, l*n); without `shape` a flat grid must be square (l = n)."""
    if dist.ndim == 3:
        return dist
    if shape is None:
        side = int(round(np.sqrt(dist.shape[1])))
        if side * side != dist.shape[1]:
            raise ValueError(f"cannot infer (l, n) from {dist.shape[1]} cells; pass dist_shape")
        shape = (side, side)
    return dist.reshape(len(dist), *shape)


def _cats(vocab: Vocab, names, item_ids: np.ndarray) -> np.ndarray:
    """Category indices: of the given names where present, else of the item ids' catalogue entry.
    Broadcast names (the ranker's one history for B candidates) are mapped once, not per row."""
    if names is None:
        return vocab.item_cat(item_ids)
    names = np.broadcast_to(np.asarray(names, dtype=object), item_ids.shape)
    core = names[tuple(0 if step == 0 else slice(None) for step in names.strides)]
    shape = tuple(1 if step == 0 else n for step, n in zip(names.strides, names.shape))
    known = named(core).reshape(shape)
    return np.where(known, vocab.cat_index(core).reshape(shape), vocab.item_cat(item_ids))


def make_batch(
    columns: Mapping[str, np.ndarray], vocab: Vocab, dist_shape: tuple[int, int] | None = None
) -> dict[str, torch.Tensor]:
    """CTR batch from columns user_id, item_id (B,), hist_item_ids (B,T) 0-padded, hist_mask (B,T),
    sim_img, sim_txt, sim_mask_img, sim_mask_txt (B,T), dist_img, dist_txt (B,l,n) or (B,l*n),
    target_mm (B,D), hist_mm (B,T,D), an optional label (B,) and optional category names
    `category` (B,) / `hist_category` (B,T) (None where unknown: the vocabulary's catalogue
    category of the item id is used, as in training)."""
    missing = [c for c in COLUMNS if c not in columns]
    if missing:
        raise KeyError(f"make_batch: missing columns {missing}")
    mask = stack(columns["hist_mask"], bool)
    hist_ids = stack(columns["hist_item_ids"], np.int64)
    if hist_ids.shape != mask.shape:
        raise ValueError(f"hist_item_ids {hist_ids.shape} and hist_mask {mask.shape} differ")
    item_ids = stack(columns["item_id"], np.int64)
    arrays = {
        "user": vocab.user_index(stack(columns["user_id"], np.int64)),
        "item": vocab.item_index(item_ids),
        "cat": _cats(vocab, columns.get("category"), item_ids),
        "hist_item": np.where(mask, vocab.item_index(hist_ids), 0),
        "hist_cat": np.where(mask, _cats(vocab, columns.get("hist_category"), hist_ids), 0),
        "hist_mask": mask,
        **{k: stack(columns[k], np.float32) for k in FLOAT_SEQS},
        **{k: stack(columns[k], bool) for k in MASKS},
        **{k: _grid(stack(columns[k], np.float32), dist_shape) for k in DISTS},
        "target_mm": stack(columns["target_mm"], np.float32),
        "hist_mm": stack(columns["hist_mm"], np.float32),
    }
    if "label" in columns:
        arrays["label"] = stack(columns["label"], np.float32)
    return {k: torch.from_numpy(v) for k, v in arrays.items()}

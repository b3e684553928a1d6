"""Retrieval metrics for the content encoder (cosine = dot product of L2-normalised vectors)."""

from __future__ import annotations

import numpy as np
import pandas as pd

from training.content.encoders import MultimodalEncoder
from training.content.items import ItemTable


def embed_items(
    encoder: MultimodalEncoder, items: pd.DataFrame, batch_size: int = 128
) -> dict[str, np.ndarray]:
    """Embeddings of every distinct item: dict(item_id, img, img_mask, txt, fused), row-aligned."""
    table = ItemTable.from_frame(items, encoder.image_size)
    out = encoder.embed(table.texts, table.images, batch_size=batch_size)
    out["item_id"] = table.item_ids
    return out


def _hits_at_k(
    queries: np.ndarray,
    keys: np.ndarray,
    targets: np.ndarray,
    k: int,
    exclude: np.ndarray | None,
    chunk: int = 1024,
) -> np.ndarray:
    """hit[i] = targets[i] is among the k best keys for queries[i] (optionally excluding a key per row)."""
    hits = np.zeros(len(queries), dtype=bool)
    for start in range(0, len(queries), chunk):
        scores = queries[start : start + chunk] @ keys.T
        rows = np.arange(scores.shape[0])
        if exclude is not None:
            scores[rows, exclude[start : start + chunk]] = -np.inf
        target_score = scores[rows, targets[start : start + chunk]]
        better = (scores > target_score[:, None]).sum(
            axis=1
        )  # rank of the target, ties in its favour
        hits[start : start + chunk] = better < k
    return hits


def interest_hits(
    encoder: MultimodalEncoder,
    items: pd.DataFrame,
    heldout_pairs: pd.DataFrame,
    k: int = 10,
    embeddings: dict[str, np.ndarray] | None = None,
) -> pd.DataFrame:
    """Per held-out (query_item, pos_item) pair whose items are both known: `hit` = the positive is among
    the k items nearest to the query's fused vector, over the whole catalogue minus the query itself."""
    emb = embed_items(encoder, items) if embeddings is None else embeddings
    index = {int(i): r for r, i in enumerate(emb["item_id"])}
    known = heldout_pairs["query_item"].map(lambda i: int(i) in index) & heldout_pairs[
        "pos_item"
    ].map(lambda i: int(i) in index)
    pairs = heldout_pairs.loc[known].reset_index(drop=True)
    q = np.array([index[int(i)] for i in pairs["query_item"]], dtype=np.int64)
    p = np.array([index[int(i)] for i in pairs["pos_item"]], dtype=np.int64)
    hits = (
        _hits_at_k(emb["fused"][q], emb["fused"], p, k, exclude=q)
        if len(pairs)
        else np.zeros(0, bool)
    )
    return pairs.assign(hit=hits)


def interest_recall_at_k(
    encoder: MultimodalEncoder,
    items: pd.DataFrame,
    heldout_pairs: pd.DataFrame,
    k: int = 10,
    embeddings: dict[str, np.ndarray] | None = None,
) -> float:
    """Share of `interest_hits` that hit (nan without a known pair)."""
    hits = interest_hits(encoder, items, heldout_pairs, k, embeddings)["hit"]
    return float(hits.mean()) if len(hits) else float("nan")


def image_text_recall_at_k(
    encoder: MultimodalEncoder,
    items: pd.DataFrame,
    k: int = 10,
    embeddings: dict[str, np.ndarray] | None = None,
) -> float:
    """Image -> text retrieval among items with an image: the item's own text within the top k."""
    emb = embed_items(encoder, items) if embeddings is None else embeddings
    rows = np.flatnonzero(emb["img_mask"])
    if not len(rows):
        return float("nan")
    img, txt = emb["img"][rows], emb["txt"][rows]
    return float(_hits_at_k(img, txt, np.arange(len(rows)), k, exclude=None).mean())

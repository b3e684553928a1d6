"""C-SFT: contrastive fine-tuning of the encoder on user-interest pairs (MIM).

Interest pairs are the MovieLens analogue of MIM's <image query, purchased item>: for each user,
sort the positively engaged events (label == 1) by (event_ts, item_id); every two *consecutive*
positives at most `window` apart (default 1 hour, i.e. one viewing/rating session) form a pair
(query_item = the earlier item, pos_item = the later one). Pairs of the same item are dropped, and
so are repeats of one (user, query_item, pos_item). Ties in event_ts are ordered by item_id.

Training: each step encodes the distinct items of N (query, positive, hard negative) triples once,
then `losses.csft_loss` with a queue of the last k batches (2NP(k+1)-1 negatives per query). By
default the queue keeps backbone features re-embedded by the current heads, and candidate slots
that hold the query's own positive item or the query item itself are masked (see losses.py).
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch

from training.distributed import broadcast_module, rank, shard_order, world_size
from training.content.encoders import MultimodalEncoder
from training.content.items import ItemTable
from training.content.losses import NegativeQueue, csft_loss
from training.content.trainer import OptimConfig, Progress, make_optimizer, optimizer_step

log = logging.getLogger(__name__)


def _epoch_seconds(ts: pd.Series) -> np.ndarray:
    """event_ts as float epoch seconds (numbers are taken as seconds already)."""
    if pd.api.types.is_numeric_dtype(ts):
        return ts.astype("float64").to_numpy()
    dt = pd.to_datetime(ts, utc=True)
    return (dt - pd.Timestamp(0, tz="UTC")).dt.total_seconds().to_numpy()


def mine_interest_pairs(interactions: pd.DataFrame, window: pd.Timedelta = pd.Timedelta(hours=1)) -> pd.DataFrame:
    """interactions[user_id, item_id, event_ts, label] -> pairs[user_id, query_item, pos_item, event_ts]
    (event_ts of the positive event), in (user_id, event_ts) order."""
    pos = interactions.loc[interactions["label"] == 1, ["user_id", "item_id", "event_ts"]].copy()
    pos["_t"] = _epoch_seconds(pos["event_ts"])
    pos = pos.sort_values(["user_id", "_t", "item_id"], kind="mergesort").reset_index(drop=True)
    same_user = pos["user_id"].eq(pos["user_id"].shift(1))
    gap = pos["_t"] - pos["_t"].shift(1)
    prev_item = pos["item_id"].shift(1)
    keep = same_user & (gap <= window.total_seconds()) & prev_item.ne(pos["item_id"])
    pairs = pd.DataFrame({"user_id": pos.loc[keep, "user_id"].astype("int64"),
                          "query_item": prev_item[keep].astype("int64"),
                          "pos_item": pos.loc[keep, "item_id"].astype("int64"),
                          "event_ts": pos.loc[keep, "event_ts"]})
    return pairs.drop_duplicates(["user_id", "query_item", "pos_item"]).reset_index(drop=True)


def hard_negatives(pairs: pd.DataFrame, items: pd.DataFrame, seed: int = 0) -> np.ndarray:
    """One item per pair from the positive's category (items.category), never the pair's own items.

    Falls back to any catalogue item when the category holds no other item. Deterministic per seed.
    """
    cats = items.drop_duplicates("item_id").set_index("item_id")["category"].fillna("unknown").astype(str)
    all_ids = cats.index.to_numpy(dtype=np.int64)
    pair_cat = pairs["pos_item"].map(cats).fillna("\0none").to_numpy()
    pos_ids, query_ids = pairs["pos_item"].to_numpy(np.int64), pairs["query_item"].to_numpy(np.int64)
    out = np.empty(len(pairs), dtype=np.int64)
    rng = np.random.default_rng(seed)
    by_cat = {c: g.index.to_numpy(dtype=np.int64) for c, g in cats.groupby(cats, sort=True)}
    for cat in sorted(set(pair_cat)):
        where = np.flatnonzero(pair_cat == cat)
        out[where] = _draw(by_cat.get(cat, all_ids), pos_ids[where], query_ids[where], all_ids, rng)
    return out


def _draw(pool: np.ndarray, pos: np.ndarray, query: np.ndarray, fallback: np.ndarray,
          rng: np.random.Generator) -> np.ndarray:
    picked = pool[rng.integers(len(pool), size=len(pos))]
    for _ in range(20):  # redraw collisions with the pair's own items
        bad = np.flatnonzero((picked == pos) | (picked == query))
        if not len(bad):
            return picked
        picked[bad] = pool[rng.integers(len(pool), size=len(bad))]
    bad = np.flatnonzero((picked == pos) | (picked == query))
    for i in bad:  # tiny category: any other catalogue item
        choices = fallback[(fallback != pos[i]) & (fallback != query[i])]
        picked[i] = choices[rng.integers(len(choices))] if len(choices) else pos[i]
    return picked


@dataclass(frozen=True)
class CsftConfig:
    epochs: int = 1
    batch_size: int = 32  # N pairs per worker and step
    queue_batches: int = 10  # k
    alpha: float = 0.5  # weight of L_q2txt
    beta: float = 0.5  # weight of L_q2img
    temperature: float = 0.07
    requeue_features: bool = True  # queue backbone features, re-embedded by the current heads (no drift)
    mask_false_negatives: bool = True  # drop candidate slots holding the positive's / query's own item
    max_steps: int = 0  # per epoch; 0 = all pairs
    seed: int = 7
    log_every: int = 20
    optim: OptimConfig = field(default_factory=OptimConfig)


def _pair_batches(n_pairs: int, cfg: CsftConfig, epoch: int) -> list[np.ndarray]:
    """This worker's share of the pairs in full batches only (so N is the same on every rank)."""
    order = shard_order(n_pairs, cfg.seed, epoch, drop_last=True)
    batches = [order[i:i + cfg.batch_size] for i in range(0, len(order) - cfg.batch_size + 1, cfg.batch_size)]
    return batches[:cfg.max_steps] if cfg.max_steps > 0 else batches


def train_csft(encoder: MultimodalEncoder, items: pd.DataFrame, pairs: pd.DataFrame, cfg: CsftConfig) -> dict:
    """Fine-tune `encoder` in place on (query_item, pos_item) pairs; returns a summary dict."""
    start = time.time()
    torch.manual_seed(cfg.seed)
    table = ItemTable.from_frame(items, encoder.image_size)
    known = table.contains(pairs["query_item"]) & table.contains(pairs["pos_item"])
    usable = pairs.loc[known].reset_index(drop=True)
    if len(usable) < cfg.batch_size * world_size():
        raise ValueError(f"{len(usable)} usable pairs: fewer than one batch of {cfg.batch_size} per worker")
    broadcast_module(encoder)
    optimizer = make_optimizer(encoder, cfg.optim)
    queue = NegativeQueue(cfg.queue_batches)
    encoder.train()
    steps, first = 0, None
    last: dict[str, float] = {}
    for epoch in range(cfg.epochs):
        negs = table.rows(hard_negatives(usable, items, seed=cfg.seed + epoch))
        q_rows, p_rows = table.rows(usable["query_item"]), table.rows(usable["pos_item"])
        batches = _pair_batches(len(usable), cfg, epoch)
        progress = Progress(f"csft epoch {epoch + 1}", len(batches), cfg.log_every)
        for idx in batches:
            n = len(idx)
            # encode each distinct item of the step once (popular items recur as query / positive / negative)
            uniq, inverse = np.unique(np.concatenate([q_rows[idx], p_rows[idx], negs[idx]]), return_inverse=True)
            out = encoder.encode(*table.batch(uniq))
            if cfg.mask_false_negatives:
                out["item_id"] = torch.from_numpy(table.item_ids[uniq])
            out = {k: v[torch.from_numpy(inverse)] for k, v in out.items()}
            q, p, ng = ({k: v[i * n:(i + 1) * n] for k, v in out.items()} for i in range(3))
            loss, last = csft_loss(q, p, ng, queue, cfg.alpha, cfg.beta, cfg.temperature,
                                   heads=encoder.heads if cfg.requeue_features else None)
            optimizer_step(loss, optimizer, cfg.optim.grad_clip)
            first = last["loss"] if first is None else first
            steps += 1
            progress.update(last["loss"], f"negatives {last['n_negatives']}")
    encoder.eval()
    summary = {"stage": "csft", "pairs_in": len(pairs), "pairs_used": len(usable), "workers": world_size(),
               "epochs": cfg.epochs, "steps": steps, "n_negatives": last.get("n_negatives"),
               "first_loss": first, "last_loss": last.get("loss"), "seconds": round(time.time() - start, 1)}
    if rank() == 0:
        log.info("csft done: %d pairs (%d usable), %d worker(s), %d steps, %s negatives/query, "
                 "loss %.4f -> %.4f, %.1fs", summary["pairs_in"], summary["pairs_used"], summary["workers"],
                 steps, summary["n_negatives"], first or float("nan"), last.get("loss", float("nan")),
                 summary["seconds"])
    return summary


def split_pairs(pairs: pd.DataFrame, heldout_fraction: float) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Temporal split: the pairs whose positive comes in the last `heldout_fraction` of time are held out."""
    if not 0.0 < heldout_fraction < 1.0:
        return pairs, pairs.iloc[0:0]
    t = _epoch_seconds(pairs["event_ts"])
    cut = np.quantile(t, 1.0 - heldout_fraction)
    return pairs.loc[t < cut].reset_index(drop=True), pairs.loc[t >= cut].reset_index(drop=True)

"""C-SFT: contrastive fine-tuning of the encoder on user-interest pairs (MIM).

Interest pairs, the MovieLens analogue of MIM's <image query, purchased item> (`PairConfig`):
- a user's *top* events are the ratings >= max(min_rating = 4, the user_quantile = 80th percentile of
  that user's own ratings), so every user contributes the top of their own scale (a user who rates
  everything 4-5 contributes only their 5s); without a rating column, label == 1 events;
- each top event is paired with `partners` (3) other top events of the same user, drawn uniformly
  at random (seeded) among those within `window` (14 days) of it, never the same item. The pair is
  unordered in meaning; it is stored earlier event -> later event (ties by item_id), with event_ts =
  the later event's time. Repeats of one (user, query_item, pos_item) are dropped.
Why not consecutive ratings: MovieLens timestamps are rating-*entry* times; most users rate their
whole history within an hour (median span of a user's ratings: 78 minutes), in the order the site
lists movies, so "consecutive" mostly encodes the listing order. Random partners within a window
keep the co-liking signal, and a fixed number of partners per event keeps the pair count linear in
a user's top events, so bulk raters do not dominate with quadratically many pairs.

Leakage guard (`split_interest_pairs`): with the CTR training cut (80% event-time quantile), the
training pairs are mined from the events before the cut only (top-of-scale thresholds included), so
the later event of every training pair lies before the cut; held-out pairs are those mined from all
events whose later event is at or after the cut.

Training (`train_csft`), two modes:
- cached (default, CPU): the frozen backbones' pooled features (MiniLM text, EfficientNet image) are
  computed once per item, then only the heads (text / image projections + TFN fusion) train, for whole
  epochs over all pairs;
- full fine-tuning (`cached_features=False`, for a GPU): each step re-encodes its items through the
  trainable top backbone layers.
Each step takes N (query, positive, hard negative) triples; `losses.csft_loss` with a queue of the
last k batches (2NP(k+1)-1 negatives per query). The queue keeps backbone features re-embedded by the
current heads, and candidate slots holding the query's own positive item or the query item itself
are masked (see losses.py).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch
from tqdm import tqdm

from mminterest.schemas import category
from training.content.encoders import MultimodalEncoder
from training.content.items import ItemTable
from training.content.losses import NegativeQueue, csft_loss
from training.content.trainer import OptimConfig, Progress, make_optimizer, optimizer_step
from training.distributed import broadcast_module, rank, shard_order, world_size

log = logging.getLogger(__name__)
DAY = 86400.0


def _epoch_seconds(ts: pd.Series) -> np.ndarray:
    """event_ts as float epoch seconds (numbers are taken as seconds already)."""
    if pd.api.types.is_numeric_dtype(ts):
        return ts.astype("float64").to_numpy()
    dt = pd.to_datetime(ts, utc=True)
    return (dt - pd.Timestamp(0, tz="UTC")).dt.total_seconds().to_numpy()


def _seconds(cut) -> float:
    """A cut (Timestamp, datetime string or epoch seconds) as epoch seconds."""
    if isinstance(cut, (int, float, np.integer, np.floating)):
        return float(cut)
    ts = pd.Timestamp(cut)
    ts = ts.tz_localize("UTC") if ts.tzinfo is None else ts
    return (ts - pd.Timestamp(0, tz="UTC")).total_seconds()


@dataclass(frozen=True)
class PairConfig:
    """Definition of an interest pair (module doc)."""

    min_rating: float = 4.0  # a top event's rating is at least this...
    user_quantile: float = 0.8  # ...and at least this quantile of the user's own ratings
    window_days: float = 14.0  # the two events of a pair are at most this far apart
    partners: int = 3  # partners drawn per top event (pairs grow linearly with a user's top events)
    seed: int = 0


def top_events(interactions: pd.DataFrame, cfg: PairConfig) -> pd.DataFrame:
    """The top-of-scale events (user_id, item_id, event_ts, _t seconds), sorted by (user, _t, item)."""
    frame = interactions[
        ["user_id", "item_id", "event_ts"] + (["rating"] if "rating" in interactions else ["label"])
    ].copy()
    if "rating" in frame:
        rating = frame["rating"].astype("float64")
        own = rating.groupby(frame["user_id"]).transform(lambda r: r.quantile(cfg.user_quantile))
        keep = rating >= np.maximum(cfg.min_rating, own)
    else:
        keep = frame["label"] == 1
    top = frame.loc[keep, ["user_id", "item_id", "event_ts"]].copy()
    top["_t"] = _epoch_seconds(top["event_ts"])
    return top.sort_values(["user_id", "_t", "item_id"], kind="mergesort").reset_index(drop=True)


def mine_interest_pairs(interactions: pd.DataFrame, cfg: PairConfig = PairConfig()) -> pd.DataFrame:
    """interactions[user_id, item_id, event_ts, rating (or label)] -> pairs[user_id, query_item,
    pos_item, event_ts] (event_ts of the later event), in (user_id, event_ts) order; see module doc."""
    top = top_events(interactions, cfg)
    users, t = top["user_id"].to_numpy(), top["_t"].to_numpy()
    rng = np.random.default_rng(cfg.seed)
    firsts, seconds = [], []
    bounds = (
        np.flatnonzero(np.r_[True, users[1:] != users[:-1], True]) if len(top) else np.array([0])
    )
    for lo_u, hi_u in zip(bounds[:-1], bounds[1:]):
        tt = t[lo_u:hi_u]
        lo = np.searchsorted(tt, tt - cfg.window_days * DAY, side="left")
        hi = np.searchsorted(tt, tt + cfg.window_days * DAY, side="right")
        others = hi - lo - 1  # candidates in the window, the event itself excluded
        me = np.flatnonzero(others > 0)
        if not len(me) or cfg.partners <= 0:
            continue
        draw = (rng.random((len(me), cfg.partners)) * others[me, None]).astype(np.int64) + lo[
            me, None
        ]
        own = np.arange(len(tt))[me, None]
        draw += draw >= own  # skip the event itself
        firsts.append(lo_u + np.minimum(own, draw).ravel())
        seconds.append(lo_u + np.maximum(own, draw).ravel())
    if not firsts:
        return pd.DataFrame(
            {
                "user_id": pd.Series(dtype="int64"),
                "query_item": pd.Series(dtype="int64"),
                "pos_item": pd.Series(dtype="int64"),
                "event_ts": top["event_ts"].iloc[0:0],
            }
        )
    a, b = np.concatenate(firsts), np.concatenate(seconds)
    items = top["item_id"].to_numpy()
    pairs = pd.DataFrame(
        {
            "user_id": users[b].astype("int64"),
            "query_item": items[a].astype("int64"),
            "pos_item": items[b].astype("int64"),
            "event_ts": top["event_ts"].to_numpy()[b],
            "_order": b,
        }
    )
    pairs = pairs.loc[pairs["query_item"] != pairs["pos_item"]]
    pairs = pairs.drop_duplicates(["user_id", "query_item", "pos_item"]).sort_values(
        ["_order", "query_item"]
    )
    return pairs.drop(columns="_order").reset_index(drop=True)


def split_interest_pairs(
    interactions: pd.DataFrame, cut, cfg: PairConfig = PairConfig()
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(training pairs mined from the events before `cut` only, held-out pairs whose later event is at
    or after `cut`, mined from all events). `cut`: a Timestamp or epoch seconds; None = no held-out."""
    if cut is None:
        return mine_interest_pairs(interactions, cfg), mine_interest_pairs(
            interactions.iloc[0:0], cfg
        )
    t, cut_s = _epoch_seconds(interactions["event_ts"]), _seconds(cut)
    train = mine_interest_pairs(interactions.loc[t < cut_s], cfg)
    every = mine_interest_pairs(interactions, cfg)
    heldout = every.loc[_epoch_seconds(every["event_ts"]) >= cut_s].reset_index(drop=True)
    return train, heldout


def hard_negatives(pairs: pd.DataFrame, items: pd.DataFrame, seed: int = 0) -> np.ndarray:
    """One item per pair from the positive's category (items.category), never the pair's own items.

    Falls back to any catalogue item when the category holds no other item. Deterministic per seed.
    """
    cats = items.drop_duplicates("item_id").set_index("item_id")["category"].map(category)
    all_ids = cats.index.to_numpy(dtype=np.int64)
    pair_cat = pairs["pos_item"].map(cats).fillna("\0none").to_numpy()
    pos_ids, query_ids = (
        pairs["pos_item"].to_numpy(np.int64),
        pairs["query_item"].to_numpy(np.int64),
    )
    out = np.empty(len(pairs), dtype=np.int64)
    rng = np.random.default_rng(seed)
    by_cat = {c: g.index.to_numpy(dtype=np.int64) for c, g in cats.groupby(cats, sort=True)}
    for cat in sorted(set(pair_cat)):
        where = np.flatnonzero(pair_cat == cat)
        out[where] = _draw(by_cat.get(cat, all_ids), pos_ids[where], query_ids[where], all_ids, rng)
    return out


def _draw(
    pool: np.ndarray,
    pos: np.ndarray,
    query: np.ndarray,
    fallback: np.ndarray,
    rng: np.random.Generator,
) -> np.ndarray:
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
    cached_features: bool = (
        True  # frozen backbones, features computed once, heads train (CPU); False = full
    )
    requeue_features: bool = (
        True  # queue backbone features, re-embedded by the current heads (no drift)
    )
    mask_false_negatives: bool = (
        True  # drop candidate slots holding the positive's / query's own item
    )
    max_steps: int = 0  # per epoch; 0 = all pairs
    seed: int = 7
    log_every: int = 100
    optim: OptimConfig = field(default_factory=OptimConfig)


def _pair_batches(n_pairs: int, cfg: CsftConfig, epoch: int) -> list[np.ndarray]:
    """This worker's share of the pairs in full batches only (so N is the same on every rank)."""
    order = shard_order(n_pairs, cfg.seed, epoch, drop_last=True)
    batches = [
        order[i : i + cfg.batch_size]
        for i in range(0, len(order) - cfg.batch_size + 1, cfg.batch_size)
    ]
    return batches[: cfg.max_steps] if cfg.max_steps > 0 else batches


@torch.no_grad()
def backbone_features(
    encoder: MultimodalEncoder, table: ItemTable, batch_size: int = 64
) -> dict[str, torch.Tensor]:
    """Pooled backbone outputs of every item of `table`, row-aligned: txt_feat, img_feat, img_mask
    (eval mode: no dropout, BatchNorm statistics as stored)."""
    was_training = encoder.training
    encoder.eval()
    start = time.time()
    parts: dict[str, list[torch.Tensor]] = {"txt_feat": [], "img_feat": [], "img_mask": []}
    try:
        for lo in tqdm(
            range(0, len(table), batch_size),
            desc="csft: backbone features",
            unit="batch",
            leave=False,
            disable=rank() != 0,
            mininterval=2.0,
        ):
            feats = encoder.features(*table.batch(range(lo, min(lo + batch_size, len(table)))))
            for key in parts:
                parts[key].append(feats[key])
    finally:
        encoder.train(was_training)
    out = {key: torch.cat(vals) for key, vals in parts.items()}
    secs = time.time() - start
    if rank() == 0:
        log.info(
            "csft: backbone features of %d items (%d images) cached in %.1fs (%.1f items/s)",
            len(table),
            int(out["img_mask"].sum()),
            secs,
            len(table) / max(secs, 1e-9),
        )
    return out


def train_csft(
    encoder: MultimodalEncoder, items: pd.DataFrame, pairs: pd.DataFrame, cfg: CsftConfig
) -> dict:
    """Fine-tune `encoder` in place on (query_item, pos_item) pairs; returns a summary dict.

    cfg.cached_features: only the heads train, on backbone features computed once per item; else every
    step re-encodes its items through the trainable backbone layers (full fine-tuning)."""
    start = time.time()
    torch.manual_seed(cfg.seed)
    table = ItemTable.from_frame(items, encoder.image_size)
    known = table.contains(pairs["query_item"]) & table.contains(pairs["pos_item"])
    usable = pairs.loc[known].reset_index(drop=True)
    if len(usable) < cfg.batch_size * world_size():
        raise ValueError(
            f"{len(usable)} usable pairs: fewer than one batch of {cfg.batch_size} per worker"
        )
    broadcast_module(encoder)
    cache = backbone_features(encoder, table) if cfg.cached_features else None
    optimizer = make_optimizer(encoder, cfg.optim, parts=("heads",) if cache is not None else None)
    queue = NegativeQueue(cfg.queue_batches)
    encoder.train()
    steps, first = 0, None
    last: dict[str, float] = {}
    epoch_losses: list[float] = []
    q_rows, p_rows = table.rows(usable["query_item"]), table.rows(usable["pos_item"])
    for epoch in range(cfg.epochs):
        negs = table.rows(hard_negatives(usable, items, seed=cfg.seed + epoch))
        batches = _pair_batches(len(usable), cfg, epoch)
        progress = Progress(f"csft epoch {epoch + 1}/{cfg.epochs}", len(batches), cfg.log_every)
        losses = []
        for idx in batches:
            n = len(idx)
            rows = np.concatenate([q_rows[idx], p_rows[idx], negs[idx]])
            if cache is not None:
                feats = {key: value[torch.from_numpy(rows)] for key, value in cache.items()}
                out = {
                    **feats,
                    **encoder.heads(feats["txt_feat"], feats["img_feat"], feats["img_mask"]),
                }
            else:  # encode each distinct item of the step once (popular items recur in a step)
                uniq, inverse = np.unique(rows, return_inverse=True)
                out = encoder.encode(*table.batch(uniq))
                out = {k: v[torch.from_numpy(inverse)] for k, v in out.items()}
            if cfg.mask_false_negatives:
                out["item_id"] = torch.from_numpy(table.item_ids[rows])
            q, p, ng = ({k: v[i * n : (i + 1) * n] for k, v in out.items()} for i in range(3))
            loss, last = csft_loss(
                q,
                p,
                ng,
                queue,
                cfg.alpha,
                cfg.beta,
                cfg.temperature,
                heads=encoder.heads if cfg.requeue_features else None,
            )
            optimizer_step(loss, optimizer, cfg.optim.grad_clip)
            first = last["loss"] if first is None else first
            steps += 1
            losses.append(last["loss"])
            progress.update(last["loss"], f"negatives {last['n_negatives']}")
        epoch_losses.append(float(np.mean(losses)) if losses else float("nan"))
        if rank() == 0:
            log.info(
                "csft epoch %d/%d: %d steps x %d pairs, mean loss %.4f, %.1fs",
                epoch + 1,
                cfg.epochs,
                len(batches),
                cfg.batch_size,
                epoch_losses[-1],
                progress.seconds,
            )
    encoder.eval()
    summary = {
        "stage": "csft",
        "mode": "cached features, heads only" if cache is not None else "full",
        "pairs_in": len(pairs),
        "pairs_used": len(usable),
        "workers": world_size(),
        "epochs": cfg.epochs,
        "steps": steps,
        "n_negatives": last.get("n_negatives"),
        "first_loss": first,
        "last_loss": last.get("loss"),
        "epoch_loss": epoch_losses,
        "seconds": round(time.time() - start, 1),
    }
    if rank() == 0:
        log.info(
            "csft done (%s): %d pairs (%d usable), %d worker(s), %d steps, %s negatives/query, "
            "loss %.4f -> %.4f, %.1fs",
            summary["mode"],
            summary["pairs_in"],
            summary["pairs_used"],
            summary["workers"],
            steps,
            summary["n_negatives"],
            first or float("nan"),
            last.get("loss", float("nan")),
            summary["seconds"],
        )
    return summary

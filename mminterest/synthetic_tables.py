"""Feature tables for tests and benchmarks, independent of the Spark jobs that normally write them.

From an interactions frame (user_id, item_id, event_ts, label) this writes the three Delta tables
of CONTRACTS.md: item_embeddings (random vectors; no img where `without_img`), user_behaviour
(one state per positive event, valid from its time + 1 µs, most recent first, <= T) and
interest_features (one row per labelled row, computed against the state in force, with the online
path's assembly and feature_math). Only the vectors are made up: ids and times are the input's.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
from deltalake import write_deltalake

from mminterest import schemas
from mminterest.candidates import ItemVectors, candidate_features
from mminterest.schemas import MODALITIES

_TS = schemas.TS
# Vector widths for tables made here when the embedding job has not run: MiniLM text (384),
# a ViT-base image tower (768), a 256-wide fused vector.
DIMS = {"img": 768, "txt": 384, "fused": 256}
_ONE_US = pd.Timedelta(microseconds=1)


def random_interactions(
    users: int, items: int, rows: int, start, days: int = 60, seed: int = 0
) -> pd.DataFrame:
    """Random labelled events (user_id 1..users, item_id 1..items) over `days` from `start`."""
    rng = np.random.default_rng(seed)
    seconds = rng.integers(0, days * 86_400, rows)
    return pd.DataFrame(
        {
            "user_id": rng.integers(1, users + 1, rows).astype(np.int64),
            "item_id": rng.integers(1, items + 1, rows).astype(np.int64),
            "event_ts": pd.Timestamp(start) + pd.to_timedelta(seconds, unit="s"),
            "label": rng.integers(0, 2, rows).astype(np.int32),
        }
    )


def item_embeddings(
    item_ids,
    valid_from,
    dims: dict[str, int],
    without_img: Iterable[int] = (),
    seed: int = 0,
    version: str = "synthetic-v1",
    categories=None,
) -> pa.Table:
    """Random unit-free vectors per item; `valid_from` (per item) becomes valid_from_ts;
    `categories` (per item) the category column (null when not given)."""
    rng = np.random.default_rng(seed)
    ids = np.asarray(item_ids, dtype=np.int64)
    has_img = ~np.isin(ids, np.fromiter(without_img, np.int64))
    vectors = {
        f: pa.FixedSizeListArray.from_arrays(
            pa.array(rng.standard_normal(len(ids) * d).astype(np.float32)), d
        ).cast(pa.list_(pa.float32()))
        for f, d in dims.items()
    }
    vectors["img"] = pa.array(
        [v if h else None for v, h in zip(vectors["img"].to_pylist(), has_img)],
        pa.list_(pa.float32()),
    )
    valid = pa.array(pd.to_datetime(pd.Series(valid_from), utc=True), _TS)
    return schemas.table(
        "item_embeddings",
        {
            "item_id": ids,
            "encoder_version": [version] * len(ids),
            **vectors,
            "has_img": has_img,
            "content_hash": [f"{version}:{i}" for i in ids],
            "valid_from_ts": valid,
            "updated_ts": valid,
            "category": [None] * len(ids) if categories is None else list(categories),
        },
    )


def behaviour_states(interactions: pd.DataFrame, seq_len: int) -> pd.DataFrame:
    """One state per positive event: user_id, event_ts (+1 µs), hist_item_ids, hist_ts, hist_len."""
    # ties in one instant: highest item_id first, as spark_jobs/behaviour.py orders them
    positives = interactions[interactions["label"] == 1].sort_values(
        ["user_id", "event_ts", "item_id"], kind="stable"
    )
    out: dict[str, list[Any]] = {"user_id": [], "event_ts": [], "hist_item_ids": [], "hist_ts": []}
    for user, group in positives.groupby("user_id", sort=True):
        items: list[int] = []
        seconds: list[int] = []
        for item, ts in zip(group["item_id"].tolist(), group["event_ts"]):
            items, seconds = ([item] + items)[:seq_len], ([int(ts.timestamp())] + seconds)[:seq_len]
            out["user_id"].append(user)
            out["event_ts"].append(ts + _ONE_US)
            out["hist_item_ids"].append(items)
            out["hist_ts"].append(seconds)
    # positives in the same instant make one state (key: user_id, event_ts)
    frame = pd.DataFrame(out).drop_duplicates(["user_id", "event_ts"], keep="last")
    frame = frame.reset_index(drop=True)
    frame["hist_len"] = frame["hist_item_ids"].map(len).astype(np.int32)
    return frame


def interest_rows(
    interactions: pd.DataFrame,
    states: pd.DataFrame,
    vectors: ItemVectors,
    seq_len: int,
    time_slices: int,
    sim_bins: int,
) -> pa.Table:
    """interest_features of every labelled row, against the user's state in force at its time."""
    rows = interactions.sort_values(["user_id", "event_ts"], kind="stable").reset_index(drop=True)
    state_at = np.full(len(rows), -1)  # index into `states` (sorted by user, time), -1: none yet
    state_ts, row_ts = states["event_ts"].to_numpy(), rows["event_ts"].to_numpy()
    per_user = states.groupby("user_id").indices
    for user, idx in rows.groupby("user_id").indices.items():
        mine = per_user.get(user, np.zeros(0, np.int64))
        pos = np.searchsorted(state_ts[mine], row_ts[idx], side="right") - 1
        state_at[idx] = np.where(pos >= 0, mine[np.maximum(pos, 0)] if len(mine) else -1, -1)
    columns = {
        f"{k}_{m}": [None] * len(rows) for m in MODALITIES for k in ("sim", "sim_mask", "dist")
    }
    hist_len = np.zeros(len(rows), np.int32)
    groups = rows.assign(state=state_at).groupby(["user_id", "state"]).indices
    for (user, state), idx in groups.items():
        hist = states.at[state, "hist_item_ids"] if state >= 0 else []
        got = candidate_features(
            user, hist, rows.loc[idx, "item_id"].to_numpy(), vectors, seq_len, time_slices, sim_bins
        )
        hist_len[idx] = got.hist_len
        for name in columns:
            values = getattr(got, name).reshape(len(idx), -1)
            for j, i in enumerate(idx):
                columns[name][i] = values[j]
    return schemas.table(
        "interest_features",
        {
            "user_id": rows["user_id"].to_numpy(np.int64),
            "item_id": rows["item_id"].to_numpy(np.int64),
            "event_ts": rows["event_ts"],
            "hist_len": hist_len,
            **columns,
        },
    )


def write_tables(
    cfg,
    interactions: pd.DataFrame,
    dims: dict[str, int],
    without_img: Iterable[int] = (),
    items: pd.DataFrame | None = None,
) -> None:
    """Write item_embeddings, user_behaviour and interest_features under `cfg` (overwrite).

    `items` (item_id, valid_from_ts) defaults to every interacted item, valid from its first
    interaction."""
    interactions = interactions.assign(event_ts=pd.to_datetime(interactions["event_ts"], utc=True))
    if items is None:
        items = (
            interactions.groupby("item_id", as_index=False)["event_ts"]
            .min()
            .rename(columns={"event_ts": "valid_from_ts"})
        )
    embeddings = item_embeddings(
        items["item_id"], items["valid_from_ts"], dims, without_img, seed=cfg.seed
    )
    states = behaviour_states(interactions, cfg.seq_len)
    vectors = ItemVectors.from_rows(
        embeddings["item_id"].to_numpy(),
        {f: embeddings[f].to_numpy(zero_copy_only=False) for f in dims},
    )
    interest = interest_rows(
        interactions, states, vectors, cfg.seq_len, cfg.time_slices, cfg.sim_bins
    )
    behaviour = schemas.table(
        "user_behaviour", {c: states[c] for c in schemas.USER_BEHAVIOUR.names}
    )
    for name, table in (
        ("item_embeddings", embeddings),
        ("user_behaviour", behaviour),
        ("interest_features", interest),
    ):
        write_deltalake(cfg.table(name), table, mode="overwrite", schema_mode="overwrite")


def write_ingested(cfg, interactions: pd.DataFrame, categories: list[str]) -> None:
    """The `interactions` (rating 4.0) and `items` tables as ingest leaves them: item i + 1 has
    categories[i] and is first seen at its first interaction."""
    write_deltalake(cfg.table("interactions"), interactions.assign(rating=4.0))
    first = interactions.groupby("item_id")["event_ts"].min()
    ids = np.arange(1, len(categories) + 1)
    items = pd.DataFrame({"item_id": ids, "category": categories})
    items["first_seen_ts"] = pd.to_datetime(items["item_id"].map(first), utc=True)
    write_deltalake(cfg.table("items"), items)

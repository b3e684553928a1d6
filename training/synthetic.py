"""A small synthetic training set in the layout of `training/trainset.py`, for tests and benchmarks only
(no Feast, so it is written in either environment). Labels carry a learnable signal: an item whose id
is a multiple of 3 is clicked with p = 0.8, any other with p = 0.2; categories and content vectors
follow the same split, so models can also score items they have no id embedding for."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from training.trainset import SPLITS, to_arrow, write_parquet
from training.vocab import Vocab


def write_trainset(
    root: str | Path,
    rows: tuple[int, int, int] = (600, 150, 150),
    users: int = 40,
    items: int = 60,
    seq_len: int = 8,
    time_slices: int = 2,
    sim_bins: int = 4,
    mm_dim: int = 6,
    seed: int = 0,
    row_group_size: int = 64,
) -> Path:
    """Write train/valid/test, item_mm/, vocab.json and meta.json under `root`; returns `root`."""
    rng = np.random.default_rng(seed)
    root = Path(root)
    T, l, n = seq_len, time_slices, sim_bins  # noqa: E741  (the papers' symbols)
    liked = np.arange(items + 1) % 3 == 0
    centre = rng.normal(size=(2, mm_dim))
    item_ids = np.arange(1, items + 1)
    fused = (centre[liked[item_ids].astype(int)] + 0.5 * rng.normal(size=(items, mm_dim))).astype(
        np.float32
    )
    catalogue = pd.DataFrame(
        {
            "item_id": item_ids,
            "category": np.where(liked[item_ids], "Liked|X", "Other"),
            "first_seen_ts": pd.Timestamp("2020-01-01", tz="UTC"),
        }
    )
    total = sum(rows)
    item = rng.integers(1, items + 1, total)
    hist_len = rng.integers(0, T + 1, total)
    mask = np.arange(T)[None, :] < hist_len[:, None]
    sim = {m: np.where(mask, rng.random((total, T)), 0).astype(np.float32) for m in ("img", "txt")}
    dist = {m: rng.dirichlet(np.ones(l * n), total).astype(np.float32) for m in ("img", "txt")}
    columns = {
        "user_id": rng.integers(1, users + 1, total),
        "item_id": item,
        "event_ts": pd.Timestamp("2020-02-01").value + np.arange(total) * 60_000_000_000,
        "label": (rng.random(total) < np.where(liked[item], 0.8, 0.2)).astype(np.int32),
        "category": catalogue["category"].to_numpy(object)[item - 1],
        "item_age_s": rng.exponential(86_400 * 30, total),
        "hist_len": hist_len.astype(np.int32),
        "hist_item_ids": np.where(mask, rng.integers(1, items + 1, (total, T)), 0),
        "hist_mask": mask,
        **{f"sim_{m}": v for m, v in sim.items()},
        **{f"sim_mask_{m}": mask for m in sim},
        **{f"dist_{m}": v for m, v in dist.items()},
        "target_mm": fused[item - 1],
    }
    columns["event_ts"] = columns["event_ts"].astype("datetime64[ns]")
    bounds = np.cumsum((0, *rows))
    for k, split in enumerate(SPLITS):
        part = slice(bounds[k], bounds[k + 1])
        write_parquet(
            to_arrow({c: v[part] for c, v in columns.items()}), root / split, row_group_size
        )
    train = pd.DataFrame({"user_id": columns["user_id"][: rows[0]], "item_id": item[: rows[0]]})
    vocab = Vocab.from_frames(train, catalogue)
    vocab.save(root)
    write_parquet(to_arrow({"item_id": item_ids, "fused": fused}), root / "item_mm")
    meta = {
        "name": root.name,
        "rows": dict(zip(SPLITS, rows)),
        "seq_len": seq_len,
        "time_slices": time_slices,
        "sim_bins": sim_bins,
        "mm_dim": mm_dim,
        "n_users": vocab.n_users,
        "n_items": vocab.n_items,
        "n_cats": vocab.n_cats,
        "synthetic": True,
    }
    (root / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")
    return root

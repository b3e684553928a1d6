"""`mmi trainset build`: a point-in-time CTR training set as Parquet (runs in the platform env, .venv).

Entity frame = the labelled interactions in [start, end); features come from Feast's `ctr_training`
service as of each row's event time (`get_training_frame` keeps every row). The rows are split by
event time at the 80% and 90% quantiles into train / valid / test: every train row is strictly
earlier than every valid row, and valid than test; the vocabulary is built from the train rows only.

Layout under `<home>/trainsets/<name>/`:
  train/, valid/, test/  Parquet rows: user_id, item_id, event_ts, label, category, item_age_s
                         (event_ts - the item's first_seen_ts), hist_len and fixed-length lists
                         hist_item_ids, hist_mask (T), sim_*, sim_mask_* (T), dist_* (l*n), target_mm (D)
  item_mm/               item_id, fused: the loader gathers hist_mm (B, T, D) from it (a per-row copy
                         would be T times the size of the whole set)
  vocab.json, meta.json
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from mminterest.config import Config, get_config
from mminterest.schemas import MODALITIES, utc
from training.vocab import Vocab

log = logging.getLogger(__name__)

SPLITS = ("train", "valid", "test")
CUTS = (0.8, 0.9)  # event-time quantiles: train < cut 0 <= valid < cut 1 <= test
ROW_GROUP = 4096
SLICE_BYTES = 256 << 20  # dense output bytes per slice of the build, when not configured


@dataclass
class Summary:
    name: str
    path: str
    rows: dict[str, int]
    users: int
    items: int
    cuts: list[str]
    restored_rows: int
    seconds: float
    slices: int = 1

    def line(self) -> str:
        parts = " / ".join(f"{k} {v:,}" for k, v in self.rows.items())
        return (
            f"trainset {self.name}: rows {sum(self.rows.values()):,} ({parts}), vocab users {self.users:,} "
            f"items {self.items:,}, cuts {self.cuts[0]} | {self.cuts[1]}, restored {self.restored_rows}, "
            f"{self.slices} slice(s), {self.seconds:.0f} s -> {self.path}"
        )


def trainset_dir(cfg: Config, name: str) -> Path:
    return cfg.home / "trainsets" / name


def _read(cfg: Config, table: str, columns: list[str]) -> pd.DataFrame:
    from deltalake import DeltaTable

    path = cfg.table(table)
    if not Path(path).exists():
        raise FileNotFoundError(
            f"Delta table {table!r} not found at {path}; build the features first"
        )
    return DeltaTable(path).to_pandas(columns=columns)


def dense(values, width: int, dtype) -> tuple[np.ndarray, np.ndarray]:
    """(N, width) array from a column of arrays / None (None and the tail past `width` -> 0), and
    the lengths."""
    out = np.zeros((len(values), width), dtype)
    cells = [
        np.asarray(v, dtype)[:width] if isinstance(v, (list, np.ndarray)) else out[0, :0]
        for v in values
    ]
    lens = np.fromiter((len(c) for c in cells), np.int64, len(cells))
    if lens.any():
        out[np.arange(width)[None, :] < lens[:, None]] = np.concatenate(cells)
    return out, lens


def feature_columns(frame: pd.DataFrame, T: int, cells: int, mm_dim: int) -> dict[str, np.ndarray]:
    """Fixed-width numpy columns from the Feast frame; rows without a feature value get zeros."""
    hist, hist_len = dense(frame["hist_item_ids"], T, np.int64)
    out = {
        "hist_len": hist_len.astype(np.int32),
        "hist_item_ids": hist,
        "hist_mask": np.arange(T)[None, :] < hist_len[:, None],
    }
    for m in MODALITIES:
        out[f"sim_{m}"] = dense(frame[f"sim_{m}"], T, np.float32)[0]
        out[f"sim_mask_{m}"] = dense(frame[f"sim_mask_{m}"], T, bool)[0]
        out[f"dist_{m}"] = dense(frame[f"dist_{m}"], cells, np.float32)[0]
    out["target_mm"] = dense(frame["fused"], mm_dim, np.float32)[0]
    return out


def to_arrow(columns: dict[str, np.ndarray]):
    """An Arrow table; 2-D numpy columns become list columns."""
    import pyarrow as pa

    arrays = {}
    for name, values in columns.items():
        if values.ndim == 2:
            offsets = pa.array(np.arange(len(values) + 1, dtype=np.int32) * values.shape[1])
            arrays[name] = pa.ListArray.from_arrays(offsets, pa.array(values.ravel()))
        else:
            arrays[name] = pa.array(values)
    return pa.table(arrays)


def write_parquet(table, directory: Path, row_group_size: int = ROW_GROUP) -> None:
    """`table` as `directory/part-00000.parquet` (the folder is what petastorm reads)."""
    import pyarrow.parquet as pq

    directory.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, directory / "part-00000.parquet", row_group_size=row_group_size)


def slice_rows(cfg: Config, cells: int, mm_dim: int) -> int:
    """Entity rows per slice of the build: `trainset_chunk_rows`, or (0) as many as make about
    SLICE_BYTES of dense output (the slice's Feast frame and Parquet copy take a few times that)."""
    if cfg.trainset_chunk_rows > 0:
        return cfg.trainset_chunk_rows
    T = cfg.seq_len
    row = 8 * T + T + 2 * (4 * T + T) + 2 * 4 * cells + 4 * mm_dim + 64  # hist, sim, dist, target
    return max(1, SLICE_BYTES // row)


class SplitWriters:
    """One Parquet file per split (`<dir>/<split>/part-00000.parquet`), written a slice at a
    time in row groups of ROW_GROUP rows; a split that got no rows is written empty."""

    def __init__(self, directory: Path):
        self.directory = directory
        self.writers: dict = {}

    def write(self, split: str, table) -> None:
        import pyarrow.parquet as pq

        if split not in self.writers:
            (self.directory / split).mkdir(parents=True, exist_ok=True)
            path = self.directory / split / "part-00000.parquet"
            self.writers[split] = pq.ParquetWriter(path, table.schema)
        writer = self.writers[split]
        writer.write_table(table.cast(writer.schema), row_group_size=ROW_GROUP)

    def close(self) -> None:
        schema = next((w.schema for w in self.writers.values()), None)
        for writer in self.writers.values():
            writer.close()
        for split in SPLITS:
            if split not in self.writers and schema is not None:
                write_parquet(schema.empty_table(), self.directory / split)


def build(
    cfg: Config | None = None,
    name: str = "default",
    start: str | None = None,
    end: str | None = None,
) -> Summary:
    """Build the training set `name` from the labelled interactions with start <= event_ts < end.

    The features are joined and written in slices of users (`slice_rows`): memory holds the
    labelled rows' keys and one slice, never the feature tables. Train rows are shuffled within
    their slice; the loader shuffles the row groups."""
    from feature_repo.store_config import open_store
    from training.training_frame import training_frames

    cfg = cfg or get_config()
    t0 = time.time()
    rows = _read(cfg, "interactions", ["user_id", "item_id", "event_ts", "label"])
    rows["event_ts"] = pd.to_datetime(rows["event_ts"], utc=True)
    if start:
        rows = rows[rows["event_ts"] >= utc(start)]
    if end:
        rows = rows[rows["event_ts"] < utc(end)]
    rows = rows.dropna(subset=["label"]).sort_values(
        ["event_ts", "user_id", "item_id"], kind="stable"
    )
    if len(rows) < 10:
        raise ValueError(
            f"only {len(rows)} labelled interactions in [{start}, {end}): too few to split"
        )
    items = _read(cfg, "items", ["item_id", "category", "first_seen_ts"]).set_index("item_id")
    entities = rows.rename(columns={"event_ts": "event_timestamp"}).reset_index(drop=True)
    del rows
    ts = entities["event_timestamp"].dt.as_unit("ns").astype("int64").to_numpy()
    cut_ns = [int(np.quantile(ts, q)) for q in CUTS]
    split = np.searchsorted(np.asarray(cut_ns), ts, side="right")  # 0 train, 1 valid, 2 test

    embeddings = _read(cfg, "item_embeddings", ["item_id", "fused"])
    mm_dim = len(embeddings["fused"].iloc[0])
    cells = cfg.time_slices * cfg.sim_bins
    per_slice = slice_rows(cfg, cells, mm_dim)
    log.info(
        "trainset %s: %d labelled rows in [%s, %s), %d catalogued items, slices of %d rows",
        name,
        len(entities),
        start or "-",
        end or "-",
        len(items),
        per_slice,
    )

    out = trainset_dir(cfg, name)
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(cfg.seed)
    counts = dict.fromkeys(SPLITS, 0)
    slices = restored = 0
    writers = SplitWriters(out)
    try:
        for frame in training_frames(open_store(cfg), entities, per_slice, "ctr_training"):
            columns = {
                **_entity_columns(frame, items),
                **feature_columns(frame, cfg.seq_len, cells, mm_dim),
            }
            mine = split[frame.index.to_numpy()]
            for k, part in enumerate(SPLITS):
                idx = np.flatnonzero(mine == k)
                if part == "train":  # row groups of mixed times: shuffling groups shuffles rows
                    idx = rng.permutation(idx)
                if len(idx):
                    writers.write(part, to_arrow({c: v[idx] for c, v in columns.items()}))
                counts[part] += len(idx)
            slices += 1
            restored += int(frame.attrs.get("restored_rows", 0))
            log.info(
                "trainset %s: slice %d, %d of %d rows written in %.0f s",
                name,
                slices,
                sum(counts.values()),
                len(entities),
                time.time() - t0,
            )
    finally:
        writers.close()

    train = entities.iloc[np.flatnonzero(split == 0)]
    vocab = Vocab.from_frames(train, items.reset_index())
    vocab.save(out)
    write_parquet(
        to_arrow(
            {
                "item_id": embeddings["item_id"].to_numpy(np.int64),
                "fused": dense(embeddings["fused"], mm_dim, np.float32)[0],
            }
        ),
        out / "item_mm",
    )
    cuts = [str(pd.Timestamp(c, tz="UTC")) for c in cut_ns]
    meta = {
        "name": name,
        "start": start,
        "end": end,
        "rows": counts,
        "cuts": cuts,
        "seq_len": cfg.seq_len,
        "time_slices": cfg.time_slices,
        "sim_bins": cfg.sim_bins,
        "mm_dim": mm_dim,
        "n_users": vocab.n_users,
        "n_items": vocab.n_items,
        "n_cats": vocab.n_cats,
        "positive_rate": float(entities["label"].mean()),
        "restored_rows": restored,
        "slices": slices,
    }
    (out / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")
    return Summary(
        name,
        str(out),
        counts,
        vocab.n_users - 1,
        vocab.n_items - 1,
        cuts,
        restored,
        time.time() - t0,
        slices,
    )


def _entity_columns(frame: pd.DataFrame, items: pd.DataFrame) -> dict[str, np.ndarray]:
    """The row's own columns: keys, time, label, the item's category and age at the event."""
    item = frame["item_id"]
    first_seen = pd.to_datetime(item.map(items["first_seen_ts"]), utc=True)
    return {
        "user_id": frame["user_id"].to_numpy(np.int64),
        "item_id": item.to_numpy(np.int64),
        "event_ts": frame["event_timestamp"].array,
        "label": frame["label"].to_numpy(np.int32),
        "category": item.map(items["category"]).fillna("").to_numpy(object),
        "item_age_s": (frame["event_timestamp"] - first_seen)
        .dt.total_seconds()
        .to_numpy(np.float64),
    }

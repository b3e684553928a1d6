"""Incremental runs of the feature jobs: what a run for the data interval [start, end) recomputes.

A windowed run of behaviour or interest features recomputes, for each touched user, that user's
rows from a cutoff on (earlier rows cannot see later events, so they stay). Touched users:
  - users with events in the window: cutoff = their earliest event in the window;
  - users whose inputs changed since the job's last run (events newly admitted, late arrivals with
    an earlier event_ts included; updated or removed events; items whose embedding changed):
    cutoff = the earliest such event of the user.
Changes are read from the Delta log, not from the whole table: rows of the files added since the
input version the job last consumed, minus rows of the files removed since (a MERGE rewrites a
file with its old rows). The consumed versions (the job's watermark) are saved after the job's
commit together with the version that commit made; a crash in between only repeats idempotent
work, and a table written by anything else (or a missing watermark) means a full rebuild.
"""

from __future__ import annotations

import json
import operator
from collections import defaultdict
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads
from deltalake import DeltaTable
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql.pandas.types import from_arrow_schema

from mminterest.config import Config
from mminterest.schemas import utc

Cutoffs = dict[int, pd.Timestamp]  # user_id -> earliest event_ts to recompute from
EVENT_COLUMNS = ["user_id", "item_id", "event_ts", "rating", "label"]
EMBEDDING_COLUMNS = ["item_id", "encoder_version", "content_hash"]


def touched(
    cfg: Config, table: str, inputs: dict[str, int], params: dict, start, end
) -> Cutoffs | None:
    """Users to recompute in `table` (with their cutoffs) for a run over [start, end) whose inputs
    are now at `inputs` (interactions, and item_embeddings for interest features); None when only
    a full rebuild is safe (no watermark, other params, the table written by something else).
    Read on the driver with delta-rs and Arrow: the window's rows and the changed files' rows are a
    day's increment, and a Spark job for them would cost more than they do."""
    mark = consumed(cfg, table, params)
    if mark is None or set(mark) != set(inputs):
        return None
    path, at = cfg.table("interactions"), inputs["interactions"]
    events = [_events(path, at, window_filter(start, end))]
    if mark["interactions"] != at:
        rows = changed(path, mark["interactions"], at, EVENT_COLUMNS)
        if rows is None:
            return None
        events.append(rows.select(["user_id", "event_ts"]))
    if "item_embeddings" in inputs and mark["item_embeddings"] != inputs["item_embeddings"]:
        items = changed(
            cfg.table("item_embeddings"),
            mark["item_embeddings"],
            inputs["item_embeddings"],
            EMBEDDING_COLUMNS,
        )
        if items is None:
            return None  # a changed item vector changes every row with the item as target or in history
        events.append(_events(path, at, pads.field("item_id").isin(pc.unique(items["item_id"]))))
    return cutoffs(pa.concat_tables(events))


def version(cfg: Config, table: str) -> int:
    return DeltaTable(cfg.table(table)).version()


def read_at(spark: SparkSession, path: str, at: int) -> DataFrame:
    """The Delta table at `path` as of version `at` (a pinned read: later commits are not seen)."""
    table = DeltaTable(path, version=at)
    files = sorted(table.file_uris())
    if not files:
        return spark.createDataFrame([], from_arrow_schema(pa.schema(table.schema().to_arrow())))
    return spark.read.option("basePath", path).parquet(*files)


def rows_at(spark: SparkSession, path: str, at: int) -> int:
    """Rows of the Delta table at `path` as of version `at`: from the log's per-file record counts
    (no scan), else counted."""
    counts = pa.table(DeltaTable(path, version=at).get_add_actions(flatten=True))["num_records"]
    if counts.null_count:
        return read_at(spark, path, at).count()
    return int(pc.sum(counts).as_py() or 0)


def _events(path: str, at: int, where: pads.Expression) -> pa.Table:
    """(user_id, event_ts) of the interactions at version `at` matching `where`."""
    dataset = DeltaTable(path, version=at).to_pyarrow_dataset()
    return dataset.to_table(columns=["user_id", "event_ts"], filter=where)


def _rows(path: str, table: DeltaTable, files: set[str], columns: list[str]) -> pa.Table:
    """Rows (projected on `columns`) of `table`'s data files `files` (as `file_uris()` names them)."""
    wanted = {_local(f) for f in files}
    dataset = table.to_pyarrow_dataset()  # its fragments' paths are relative to the table
    fragments = [f for f in dataset.get_fragments() if _local(f.path, path) in wanted]
    return pads.FileSystemDataset(
        fragments, dataset.schema, dataset.format, dataset.filesystem
    ).to_table(columns=columns)


def _local(file: str, root: str = "/") -> Path:
    return Path(root, file.removeprefix("file://")).resolve()


def changed(path: str, since: int, now: int, columns: list[str]) -> pa.Table | None:
    """Distinct rows (projected on `columns`) added, removed or updated between versions `since`
    and `now`, from the files those commits added and removed (a MERGE rewrites a file with its
    old rows: those cancel out); None when an old file is gone (vacuumed)."""
    old, new = DeltaTable(path, version=since), DeltaTable(path, version=now)
    before, after = set(old.file_uris()), set(new.file_uris())
    if not all(_local(f).exists() for f in before - after):
        return None
    plus = _rows(path, new, after - before, columns)
    minus = _rows(path, old, before - after, columns)
    both = plus.to_pandas().merge(  # pandas: null keys match, as in a set difference
        minus.to_pandas(), how="outer", on=columns, indicator=True
    )
    diff = both[both["_merge"] != "both"].drop(columns="_merge").drop_duplicates()
    return pa.Table.from_pandas(diff, schema=plus.schema, preserve_index=False)


def window_filter(start, end) -> pads.Expression:
    """Arrow filter of the events in [start, end) (either bound may be None)."""
    where = pads.scalar(True)
    for bound, keep in ((utc(start), operator.ge), (utc(end), operator.lt)):
        if bound is not None:
            where &= keep(pads.field("event_ts"), pa.scalar(bound, pa.timestamp("us", "UTC")))
    return where


def cutoffs(events: pa.Table) -> Cutoffs:
    """user_id -> earliest event_ts of `events` (user_id, event_ts)."""
    earliest = events.group_by("user_id").aggregate([("event_ts", "min")])
    return {
        int(u): utc(t)
        for u, t in zip(
            earliest["user_id"].to_pylist(), earliest["event_ts_min"].to_pylist(), strict=True
        )
    }


def as_frame(spark: SparkSession, cut: Cutoffs) -> DataFrame:
    """The cutoffs as a small DataFrame (user_id, cutoff), to broadcast-join."""
    return spark.createDataFrame(
        [(u, t.to_pydatetime()) for u, t in cut.items()], "user_id long, cutoff timestamp"
    )


def predicate(cut: Cutoffs, op: str) -> str:
    """Delta predicate of the rows to replace: `user_id IN (...) AND event_ts <op> 'cutoff'`, one
    clause per distinct cutoff (OR-ed)."""
    by_time: dict[pd.Timestamp, list[int]] = defaultdict(list)
    for user, t in cut.items():
        by_time[t].append(user)
    return " OR ".join(
        f"(user_id IN ({', '.join(str(u) for u in sorted(users))}) AND "
        f"event_ts {op} '{t.isoformat()}')"
        for t, users in sorted(by_time.items())
    )


# ---- watermarks: the input versions a job's table was last computed from -----------------------


def _watermark_path(cfg: Config, table: str) -> Path:
    return cfg.home / "delta" / "_watermarks" / f"{table}.json"


def consumed(cfg: Config, table: str, params: dict) -> dict[str, int] | None:
    """Input versions (input table -> version) `table` was computed from, or None when unknown, when
    it was computed with other `params`, or when `table` has been written since by anything else
    (then only a full rebuild is safe)."""
    path = _watermark_path(cfg, table)
    if not path.is_file() or not DeltaTable.is_deltatable(cfg.table(table)):
        return None
    mark = json.loads(path.read_text())
    if mark.get("table_version") != version(cfg, table) or mark.get("params") != params:
        return None
    return mark["inputs"]


def save(cfg: Config, table: str, inputs: dict[str, int], params: dict) -> None:
    """Record that `table`, at its current version, was computed from `inputs` (table -> version)
    with `params`."""
    path = _watermark_path(cfg, table)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(
        json.dumps({"table_version": version(cfg, table), "inputs": inputs, "params": params})
    )
    tmp.replace(path)

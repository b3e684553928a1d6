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
from collections import defaultdict
from functools import reduce
from pathlib import Path

import pandas as pd
from deltalake import DeltaTable
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from mminterest.config import Config
from mminterest.schemas import utc

Cutoffs = dict[int, pd.Timestamp]  # user_id -> earliest event_ts to recompute from
EVENT_COLUMNS = ["user_id", "item_id", "event_ts", "rating", "label"]
EMBEDDING_COLUMNS = ["item_id", "encoder_version", "content_hash"]


def touched(
    spark: SparkSession, cfg: Config, table: str, inputs: dict[str, int], params: dict, start, end
) -> Cutoffs | None:
    """Users to recompute in `table` (with their cutoffs) for a run over [start, end) whose inputs
    are now at `inputs` (interactions, and item_embeddings for interest features); None when only
    a full rebuild is safe (no watermark, other params, the table written by something else)."""
    mark = consumed(cfg, table, params)
    if mark is None or set(mark) != set(inputs):
        return None
    path = cfg.table("interactions")
    interactions = read_at(spark, path, inputs["interactions"])
    events = [window_events(interactions, start, end)]
    if mark["interactions"] != inputs["interactions"]:
        rows = changed(spark, path, mark["interactions"], inputs["interactions"], EVENT_COLUMNS)
        if rows is None:
            return None
        events.append(rows.select("user_id", "event_ts"))
    if "item_embeddings" in inputs and mark["item_embeddings"] != inputs["item_embeddings"]:
        items = changed(
            spark,
            cfg.table("item_embeddings"),
            mark["item_embeddings"],
            inputs["item_embeddings"],
            EMBEDDING_COLUMNS,
        )
        if items is None:
            return None  # a changed item vector changes every row with the item as target or in history
        events.append(
            interactions.join(
                F.broadcast(items.select("item_id").distinct()), "item_id", "left_semi"
            ).select("user_id", "event_ts")
        )
    return cutoffs(reduce(DataFrame.unionByName, events))


def version(cfg: Config, table: str) -> int:
    return DeltaTable(cfg.table(table)).version()


def read_at(spark: SparkSession, path: str, at: int) -> DataFrame:
    """The Delta table at `path` as of version `at` (a pinned read: later commits are not seen)."""
    return _read_files(
        spark,
        path,
        DeltaTable(path, version=at).file_uris(),
        DeltaTable(path, version=at).schema().to_arrow(),
    )


def rows_at(spark: SparkSession, path: str, at: int) -> int:
    """Rows of the Delta table at `path` as of version `at`: from the log's per-file record counts
    (no scan), else counted."""
    import pyarrow as pa
    import pyarrow.compute as pc

    counts = pa.table(DeltaTable(path, version=at).get_add_actions(flatten=True))["num_records"]
    if counts.null_count:
        return read_at(spark, path, at).count()
    return int(pc.sum(counts).as_py() or 0)


def _read_files(spark: SparkSession, path: str, files, schema) -> DataFrame:
    import pyarrow as pa
    from pyspark.sql.pandas.types import from_arrow_schema

    files = sorted(files)
    if not files:
        return spark.createDataFrame([], from_arrow_schema(pa.schema(schema)))
    return spark.read.option("basePath", path).parquet(*files)


def changed(
    spark: SparkSession, path: str, since: int, now: int, columns: list[str]
) -> DataFrame | None:
    """Rows (projected on `columns`) added, removed or updated between versions `since` and `now`,
    from the files those commits added and removed; None when an old file is gone (vacuumed)."""
    old, new = DeltaTable(path, version=since), DeltaTable(path, version=now)
    before, after = set(old.file_uris()), set(new.file_uris())
    added, removed = sorted(after - before), sorted(before - after)
    if not all(Path(f.removeprefix("file://")).exists() for f in removed):
        return None
    schema = new.schema().to_arrow()
    plus = _read_files(spark, path, added, schema).select(*columns)
    minus = _read_files(spark, path, removed, schema).select(*columns)
    return plus.subtract(minus).unionByName(minus.subtract(plus))


def window_events(interactions: DataFrame, start, end) -> DataFrame:
    """(user_id, event_ts) of the events in [start, end)."""
    start, end = utc(start), utc(end)
    rows = interactions
    if start is not None:
        rows = rows.where(F.col("event_ts") >= F.lit(start.to_pydatetime()))
    if end is not None:
        rows = rows.where(F.col("event_ts") < F.lit(end.to_pydatetime()))
    return rows.select("user_id", "event_ts")


def cutoffs(events: DataFrame) -> Cutoffs:
    """user_id -> earliest event_ts of `events` (user_id, event_ts), collected on the driver."""
    rows = events.groupBy("user_id").agg(F.min("event_ts").alias("cutoff")).collect()
    return {r["user_id"]: utc(r["cutoff"]) for r in rows}


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

"""Interest features: Delta `interest_features`, one row per labelled interaction.

Each row (user, item, event_ts) takes the user's behaviour state in force at event_ts (an as-of
join on user_behaviour: the latest state with valid-from <= event_ts, i.e. the positives strictly
before event_ts, exactly what Feast's point-in-time join sees). Arrow batches then go through
`feature_math.target_features`, the function the online ranker calls, with the item vectors of
item_embeddings broadcast once per Python worker. `mapInArrow` rather than `mapInPandas`: the
list columns cross as Arrow buffers both ways (offsets + values, stacked without a Python loop),
never as per-row pandas objects. Without a window every row is computed and the table overwritten.
A run for the data interval [start, end) recomputes only the rows of the users with events in the
window, or with events or item vectors changed since its last run, each from its earliest such
event on (spark_jobs/increments.py: late arrivals included), and replaces just those rows
(predicate overwrite); a re-run is idempotent. One commit, after the feature_checks gate.

    spark-submit spark_jobs/interest_features.py [--start ISO] [--end ISO]   or   mmi build interest ...
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Iterator

import numpy as np
import pyarrow as pa
from deltalake import DeltaTable
from pyspark import TaskContext
from pyspark.sql import DataFrame, SparkSession, Window
from pyspark.sql import functions as F

from mminterest import feature_math
from mminterest.candidates import ItemVectors, target_inputs
from mminterest.config import Config, get_config
from mminterest.schemas import MODALITIES, utc
from spark_jobs import delta_io, increments, job
from spark_jobs.behaviour import TABLE as BEHAVIOUR
from spark_jobs.schemas import ddl

log = logging.getLogger("mminterest.interest")
TABLE = "interest_features"
CHUNK_BYTES = 4 << 20  # float64 history vectors per feature_math call: stays in cache
SCHEMA = ddl(TABLE)  # mminterest/schemas.py


def with_history(
    interactions: DataFrame, states: DataFrame, partitions: int | None = None
) -> DataFrame:
    """Labelled rows + `hist_item_ids` of the state in force at event_ts (empty if none): an as-of
    join done as one sort per user (states before rows at equal times: valid-from <= ts), in
    `partitions` tasks (None: as adaptive execution coalesces the shuffle)."""
    rows = interactions.where(F.col("label").isNotNull()).select(
        "user_id",
        "item_id",
        "event_ts",
        F.lit(1).alias("_kind"),
        F.lit(None).cast("array<long>").alias("hist_item_ids"),
    )
    marks = states.select(
        "user_id",
        F.lit(None).cast("long").alias("item_id"),
        "event_ts",
        F.lit(0).alias("_kind"),
        "hist_item_ids",
    )
    upto = (
        Window.partitionBy("user_id")
        .orderBy("event_ts", "_kind")
        .rowsBetween(Window.unboundedPreceding, Window.currentRow)
    )
    state = F.last("hist_item_ids", ignorenulls=True).over(upto)
    both = rows.unionByName(marks)
    if partitions is not None:  # hash-partitioned by user: the window needs no other shuffle
        both = both.repartition(partitions, "user_id")
    return (
        both.withColumn("hist_item_ids", state)
        .where("_kind = 1")
        .select(
            "user_id",
            "item_id",
            "event_ts",
            F.coalesce("hist_item_ids", F.array().cast("array<long>")).alias("hist_item_ids"),
        )
    )


def item_vectors(cfg: Config) -> ItemVectors:
    """img and txt vectors of item_embeddings (absent where null), read on the driver by delta-rs
    (a Spark read and collect of the list columns took 20x longer). Content is valid from an
    item's first appearance, so no as-of is needed: every labelled row comes at or after it."""
    path = cfg.table("item_embeddings")
    return ItemVectors.from_arrow(
        DeltaTable(path).to_pyarrow_table(columns=["item_id", *MODALITIES]), MODALITIES
    )


def row_bytes(cfg: Config) -> int:
    """Bytes of one output row: keys, hist_len, and per modality two seq_len sequences (float32
    scores, bool mask) and a histogram of time_slices * sim_bins float32 cells (~1.5 KB)."""
    return 28 + len(MODALITIES) * (5 * cfg.seq_len + 4 * cfg.time_slices * cfg.sim_bins)


def partitions(spark: SparkSession, cfg: Config, rows: int) -> int:
    """Tasks for `rows` output rows: each writes about the advisory partition size
    (session.PARTITION_BYTES) of output, whatever the input's width (a row grows ~15x here, so
    sizing by input bytes would give each task 15x the output), at least one per core;
    `spark_shuffle_partitions` > 0 fixes the number."""
    if cfg.spark_shuffle_partitions > 0:
        return cfg.spark_shuffle_partitions
    from spark_jobs.session import PARTITION_BYTES

    key = "spark.sql.adaptive.advisoryPartitionSizeInBytes"
    per_task = int(spark.conf.get(key, str(PARTITION_BYTES)) or PARTITION_BYTES)
    return max(spark.sparkContext.defaultParallelism, -(-rows * row_bytes(cfg) // per_task))


def chunk_rows(vectors: ItemVectors, seq_len: int) -> int:
    """Rows per feature_math call: about CHUNK_BYTES of float64 history vectors."""
    width = max([vectors.vecs[m].shape[1] for m in MODALITIES] + [1])
    return max(1, CHUNK_BYTES // (seq_len * width * 8))


def features(
    rows: pa.RecordBatch, vectors: ItemVectors, seq_len: int, time_slices: int, sim_bins: int
) -> pa.RecordBatch:
    """interest_features of an Arrow batch (user_id, item_id, event_ts, hist_item_ids): history
    assembly as the online path (`online.target_inputs`), then `feature_math.target_features`."""
    hist = rows.column("hist_item_ids")
    ids, hist_mask = feature_math.stack_ragged(
        hist.offsets.to_numpy(), hist.values.to_numpy(), seq_len
    )
    targets = rows.column("item_id").to_numpy()
    step = chunk_rows(vectors, seq_len)
    parts: dict[str, list[np.ndarray]] = {}
    for lo in range(0, len(targets), step):
        sl = slice(lo, lo + step)
        inputs = target_inputs(vectors, targets[sl], ids[sl], hist_mask[sl])  # m -> (t, h, valid)
        got = feature_math.target_features(
            {m: i[0] for m, i in inputs.items()},
            {m: i[1] for m, i in inputs.items()},
            {m: i[2] for m, i in inputs.items()},
            time_slices,
            sim_bins,
        )
        for name, value in got.items():
            parts.setdefault(name, []).append(value.reshape(len(value), -1))
    widths = {"sim": seq_len, "sim_mask": seq_len, "dist": time_slices * sim_bins}
    out = {name: rows.column(name) for name in ("user_id", "item_id", "event_ts")}
    out["hist_len"] = pa.array(hist_mask.sum(axis=1).astype(np.int32))
    for kind, width in widths.items():
        for m in MODALITIES:
            name = f"{kind}_{m}"
            dtype = bool if kind == "sim_mask" else np.float32
            value = np.concatenate(parts[name]) if name in parts else np.zeros((0, width), dtype)
            out[name] = pa.ListArray.from_arrays(
                pa.array(np.arange(len(value) + 1, dtype=np.int32) * width), pa.array(value.ravel())
            )
    return pa.RecordBatch.from_pydict(out)


def compute(
    spark: SparkSession,
    cfg: Config,
    cut: increments.Cutoffs | None = None,
    interactions_version: int | None = None,
) -> DataFrame:
    """The interest_features rows (lazy): all, or those of the users of `cut` from their cutoff on.
    A full rebuild runs in `partitions` sized from the interactions' row count (the Delta log's),
    a window's few rows as adaptive execution coalesces them."""
    path = cfg.table("interactions")
    if interactions_version is None:
        interactions_version = increments.version(cfg, "interactions")
    interactions = increments.read_at(spark, path, interactions_version)
    tasks = None
    states = delta_io.read(spark, cfg.table(BEHAVIOUR))
    if cut is not None:
        users = F.broadcast(increments.as_frame(spark, cut))
        interactions = (
            interactions.join(users, "user_id")
            .where(F.col("event_ts") >= F.col("cutoff"))
            .drop("cutoff")
        )
        states = states.join(users.select("user_id"), "user_id", "left_semi")
    else:
        tasks = partitions(spark, cfg, increments.rows_at(spark, path, interactions_version))
    vectors = spark.sparkContext.broadcast(item_vectors(cfg))
    seq_len, slices, bins = cfg.seq_len, cfg.time_slices, cfg.sim_bins

    def per_batch(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        vecs = vectors.value  # deserialised once per Python worker
        context = TaskContext.get()
        assert context is not None  # always set inside a Spark task
        part, done = context.partitionId(), 0
        for batch in batches:
            yield features(batch, vecs, seq_len, slices, bins)
            done += batch.num_rows  # progress, in the executor's log (the console when local)
            print(
                f"{time.strftime('%H:%M:%S')} interest: partition {part}: {done:,} rows",
                file=sys.stderr,
                flush=True,
            )

    return with_history(interactions, states, tasks).mapInArrow(per_batch, SCHEMA)


def publish(df: DataFrame, cfg: Config, predicate: str | None = None) -> tuple[int, int]:
    """Gate `df`, then replace the rows matching `predicate` (or the table): `job.publish`."""
    from spark_jobs.feature_checks import check_interest  # driver only: Python workers import
    # this module to run `features`, and Great Expectations would add seconds to each

    return job.publish(
        df, cfg.table(TABLE), lambda d: check_interest(d, cfg), "interest", predicate
    )


def run(
    cfg: Config | None = None, spark: SparkSession | None = None, start=None, end=None
) -> job.JobSummary:
    """Compute and publish interest_features: every row (no window), or the rows a run over the
    window [start, end) must recompute."""
    from spark_jobs.session import get_spark

    cfg = cfg or get_config()
    job.require(cfg, "interactions", BEHAVIOUR, "item_embeddings")
    spark = spark or get_spark("mmi-interest", cfg)
    begun = time.time()
    inputs = {t: increments.version(cfg, t) for t in ("interactions", "item_embeddings")}
    params = {"seq_len": cfg.seq_len, "time_slices": cfg.time_slices, "sim_bins": cfg.sim_bins}
    windowed = start is not None or end is not None
    cut = increments.touched(cfg, TABLE, inputs, params, start, end) if windowed else None
    window = f"[{utc(start) or '-inf'}, {utc(end) or '+inf'})"
    note = "full rebuild" if cut is None else f"{len(cut):,} users from their earliest new event"
    log.info(
        "interest [1/3] computing: %s%s, history from %s",
        note,
        f", window {window}" if windowed else "",
        cfg.table(BEHAVIOUR),
    )
    rows = 0
    if cut == {}:
        log.info("interest [2/3] nothing new: %s unchanged", cfg.table(TABLE))
    else:
        out = compute(spark, cfg, cut, inputs["interactions"])
        predicate = None if cut is None else increments.predicate(cut, ">=")
        version, rows = publish(out, cfg, predicate)
        log.info("interest [3/3] wrote %s (version %d)", cfg.table(TABLE), version)
    increments.save(cfg, TABLE, inputs, params)
    summary = job.JobSummary(
        "interest",
        rows,
        rows,
        time.time() - begun,
        note + (f", window {window}" if windowed else ""),
    )
    log.info(summary.line())
    return summary


if __name__ == "__main__":  # spark-submit: same arguments and exit codes as `mmi build interest`
    from mminterest.cli import main

    sys.exit(main(["build", "interest", *sys.argv[1:]]))

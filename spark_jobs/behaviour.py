"""Behaviour sequences: Delta `user_behaviour`, one state per (user, positive-event time).

A state holds the user's last T positives with a timestamp <= its event time, most recent first
(ties in the same second ordered by item_id, highest first), and is valid from that time + 1 µs.
Positives sharing a timestamp collapse into ONE state, so Feast's point-in-time join (feature
ts <= row ts) for a row at time t sees exactly the positives strictly before t, never one at t.
Without a window the table is rebuilt from all interactions and overwritten in one commit. A run
for the data interval [start, end) recomputes only the users with events in the window or with
events admitted (late ones included) since its last run, each from its earliest such event on
(spark_jobs/increments.py), and replaces just those states in one commit: a state at t holds only
positives <= t, so the states before the cutoff cannot change. Either way the feature_checks gate
runs first, on the rows to be written.

    spark-submit spark_jobs/behaviour.py [--start ISO --end ISO]   or   mmi build behaviour [...]
"""

from __future__ import annotations

import logging
import time

from pyspark.sql import DataFrame, SparkSession, Window
from pyspark.sql import functions as F

from mminterest.config import Config, get_config
from spark_jobs import increments, job

log = logging.getLogger("mminterest.behaviour")
TABLE = "user_behaviour"


def states(interactions: DataFrame, seq_len: int) -> DataFrame:
    """user_behaviour rows (CONTRACTS.md) from interactions (user_id, item_id, event_ts, label)."""
    positives = interactions.where(F.col("label") == 1).select("user_id", "item_id", "event_ts")
    order = Window.partitionBy("user_id").orderBy("event_ts", "item_id")
    last_t = order.rowsBetween(-(seq_len - 1), Window.currentRow)
    # the last positive of its second carries every positive of that second in its window
    last_of_ts = F.coalesce(F.lead("event_ts").over(order) != F.col("event_ts"), F.lit(True))
    hist = F.sort_array(F.collect_list(F.struct("event_ts", "item_id")).over(last_t), asc=False)
    return (
        positives.select("user_id", "event_ts", hist.alias("hist"), last_of_ts.alias("_last"))
        .where("_last")
        .select(
            "user_id",
            F.timestamp_micros(F.unix_micros("event_ts") + 1).alias("event_ts"),
            F.col("hist.item_id").alias("hist_item_ids"),
            F.transform("hist", lambda h: F.unix_seconds(h["event_ts"])).alias("hist_ts"),
            F.size("hist").cast("int").alias("hist_len"),
        )
    )


def publish(df: DataFrame, cfg: Config, predicate: str | None = None) -> tuple[int, int]:
    """Gate `df`, then replace the rows matching `predicate` (or the table): `job.publish`."""
    from spark_jobs.feature_checks import check_behaviour  # lazy: GE is slow to import

    return job.publish(
        df, cfg.table(TABLE), lambda d: check_behaviour(d, cfg), "behaviour", predicate
    )


def recomputed(interactions: DataFrame, cut: increments.Cutoffs, seq_len: int) -> DataFrame:
    """The states of the users of `cut` from their cutoff on (valid-from > cutoff: positives at or
    after it), computed from all their positives."""
    users = F.broadcast(increments.as_frame(interactions.sparkSession, cut))
    mine = interactions.join(users.select("user_id"), "user_id", "left_semi")
    return (
        states(mine, seq_len)
        .join(users, "user_id")
        .where(F.col("event_ts") > F.col("cutoff"))
        .drop("cutoff")
    )


def run(
    cfg: Config | None = None, spark: SparkSession | None = None, start=None, end=None
) -> job.JobSummary:
    """Rebuild user_behaviour (no window), or bring it up to date for the window [start, end);
    return (and log) the one-line summary."""
    from spark_jobs.session import get_spark

    cfg = cfg or get_config()
    job.require(cfg, "interactions")
    spark = spark or get_spark("mmi-behaviour", cfg)
    begun = time.time()
    inputs, params = (
        {"interactions": increments.version(cfg, "interactions")},
        {"seq_len": cfg.seq_len},
    )
    windowed = start is not None or end is not None
    cut = increments.touched(cfg, TABLE, inputs, params, start, end) if windowed else None
    log.info(
        "behaviour [1/3] reading %s (version %d)%s",
        cfg.table("interactions"),
        inputs["interactions"],
        "" if cut is None else f": {len(cut):,} users to recompute",
    )
    interactions = increments.read_at(spark, cfg.table("interactions"), inputs["interactions"])
    if cut is None:
        out, predicate, note = states(interactions, cfg.seq_len), None, "full rebuild"
    else:
        out, predicate = recomputed(interactions, cut, cfg.seq_len), increments.predicate(cut, ">")
        note = f"{len(cut):,} users recomputed from their earliest new event"
    rows_in = increments.rows_at(spark, cfg.table("interactions"), inputs["interactions"])
    rows_out = 0
    if cut == {}:
        log.info("behaviour [2/3] nothing new: %s unchanged", cfg.table(TABLE))
    else:
        version, rows_out = publish(out, cfg, predicate)
        log.info("behaviour [3/3] wrote %s (version %d)", cfg.table(TABLE), version)
    increments.save(cfg, TABLE, inputs, params)
    summary = job.JobSummary(
        "behaviour", rows_in, rows_out, time.time() - begun, f"states of T <= {cfg.seq_len}, {note}"
    )
    log.info(summary.line())
    return summary


if __name__ == "__main__":  # spark-submit: same arguments and exit codes as `mmi build behaviour`
    import sys

    from mminterest.cli import main

    sys.exit(main(["build", "behaviour", *sys.argv[1:]]))

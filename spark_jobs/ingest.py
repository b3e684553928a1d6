"""Ingest: dataset adapter -> Great Expectations gate -> Delta tables `interactions`, `items`, `quarantine`.

Every input row ends either in a good table or in `quarantine` (with the failed check as reason):
good + quarantined = input. Quarantine is written first; past `max_bad_fraction` the job then
fails and leaves the good tables untouched. Good tables are MERGEd on their keys, so a re-run on
the same input leaves the same state (one commit per table per run).

    spark-submit spark_jobs/ingest.py      or      mmi ingest
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
from pyspark.sql import DataFrame, SparkSession, Window
from pyspark.sql import functions as F

from mminterest.config import Config, get_config
from spark_jobs import delta_io
from spark_jobs.adapters import get_adapter
from spark_jobs.expectations import image_checks, interaction_checks, item_checks
from spark_jobs.validation import run_suite, split_failed

log = logging.getLogger("mminterest.ingest")
RID = "_rid"
QUARANTINE_KEYS = ["source", "record_hash"]


class BadInputError(RuntimeError):
    """Too many rows failed validation; the good tables were left untouched."""


@dataclass
class IngestSummary:
    rows_in: dict[str, int]
    written: dict[str, int]
    quarantined: dict[str, int]
    seconds: float

    def line(self) -> str:
        def fmt(d: dict[str, int]) -> str:
            return f"{sum(d.values()):,} (" + ", ".join(f"{k} {v:,}" for k, v in d.items()) + ")"

        return (f"ingest: rows in {fmt(self.rows_in)}, written {fmt(self.written)}, "
                f"quarantined {fmt(self.quarantined)}, {self.seconds:.1f} s")


def _image_status(paths: pd.Series) -> pd.Series:
    """'ok' | 'missing' | 'corrupt' for each image path (decoded with PIL)."""
    from PIL import Image

    def status(path) -> str:
        if path is None or not Path(path).is_file():
            return "missing"
        try:
            with Image.open(path) as im:
                im.verify()
            return "ok"
        except Exception:  # PIL raises many types for undecodable bytes
            return "corrupt"

    return paths.map(status)


def _first_of(df: DataFrame, keys: list[str], name: str) -> DataFrame:
    """Flag the first row (in input order) of each key; rows with a NULL key are not duplicates."""
    rank = F.row_number().over(Window.partitionBy(*keys).orderBy(RID))
    null_key = F.greatest(*[F.col(k).isNull() for k in keys]) if len(keys) > 1 else F.col(keys[0]).isNull()
    return df.withColumn(name, null_key | (rank == 1))


def _validated(df: DataFrame, source: str, checks, report_dir: Path) -> tuple[DataFrame, DataFrame]:
    result = run_suite(df, f"ingest_{source}", checks, RID, report_dir)
    good, bad = split_failed(df, result, checks, RID)
    quarantine = bad.select(F.lit(source).alias("source"), F.sha2("_raw", 256).alias("record_hash"),
                            "reason", "checks", F.col("_raw").alias("record"))
    return good, quarantine


def run(cfg: Config | None = None, spark: SparkSession | None = None) -> IngestSummary:
    """Ingest the configured dataset; return the summary (also logged as one line)."""
    from spark_jobs.session import get_spark

    cfg = cfg or get_config()
    spark = spark or get_spark("mmi-ingest", cfg)
    try:
        return _run(cfg, spark)
    finally:
        spark.catalog.clearCache()  # the persisted frames of this run must not serve the next one


def _run(cfg: Config, spark: SparkSession) -> IngestSummary:
    start = time.time()
    report_dir = cfg.reports_dir / "validation"
    adapter = get_adapter(cfg.dataset)
    image_status = F.pandas_udf(_image_status, "string")

    def staged(df: DataFrame) -> DataFrame:
        return df.withColumn(RID, F.monotonically_increasing_id()).persist()

    log.info("ingest [1/4] validating items from %s", cfg.dataset_dir)
    items = _first_of(staged(adapter.items(spark, cfg)), ["item_id"], "first_of_id")
    good_items, q_items = _validated(items, "items", item_checks(cfg.max_text_chars), report_dir)
    good_items = good_items.persist()
    known = good_items.select("item_id", F.lit(True).alias("item_known"))

    log.info("ingest [2/4] validating images")
    images = staged(adapter.images(spark, cfg))
    images = (_first_of(images, ["item_id"], "first_of_id")
              .join(F.broadcast(known), "item_id", "left").fillna(False, ["item_known"])
              .withColumn("_status", image_status("image_path"))
              .withColumn("image_exists", F.col("_status") != "missing")
              .withColumn("image_decodes", F.when(F.col("_status") != "missing", F.col("_status") == "ok")))
    good_images, q_images = _validated(images, "images", image_checks(), report_dir)

    log.info("ingest [3/4] validating interactions")
    events = staged(adapter.interactions(spark, cfg))
    events = (_first_of(events, ["user_id", "item_id", "event_ts"], "first_of_key")
              .join(F.broadcast(known), "item_id", "left").fillna(False, ["item_known"]))
    checks = interaction_checks(cfg.rating_min, cfg.rating_max)
    good_events, q_events = _validated(events, "interactions", checks, report_dir)
    good_events = good_events.select(
        "user_id", "item_id", "event_ts", "rating",
        (F.col("rating") >= cfg.positive_rating).cast("int").alias("label")).persist()

    quarantine = q_items.unionByName(q_images).unionByName(q_events)
    quarantine = (quarantine.groupBy("source", "record_hash", "reason", "checks", "record")
                  .agg(F.count("*").alias("copies")).persist())
    rows_in = {"interactions": events.count(), "items": items.count(), "images": images.count()}
    bad = {s: 0 for s in rows_in}
    bad.update({r["source"]: r["n"] for r in
                quarantine.groupBy("source").agg(F.sum("copies").alias("n")).collect()})

    log.info("ingest [4/4] writing Delta tables under %s", cfg.home / "delta")
    delta_io.merge(quarantine, cfg.table("quarantine"), QUARANTINE_KEYS)
    too_bad = {s: bad[s] / n for s, n in rows_in.items() if n and bad[s] / n > cfg.max_bad_fraction}
    if too_bad:
        shares = ", ".join(f"{s} {f:.1%}" for s, f in too_bad.items())
        raise BadInputError(
            f"ingest refused: bad-row share above max_bad_fraction={cfg.max_bad_fraction:.1%} "
            f"({shares}); {sum(bad.values()):,} rows are in {cfg.table('quarantine')}, reports in "
            f"{report_dir}; good tables untouched")

    first_seen = good_events.groupBy("item_id").agg(F.min("event_ts").alias("first_seen_ts"))
    items_out = (good_items.select("item_id", "title", "text", "category")
                 .join(good_images.select("item_id", "image_path"), "item_id", "left")
                 .join(first_seen, "item_id", "left"))
    delta_io.merge(items_out, cfg.table("items"), ["item_id"])
    delta_io.merge(good_events, cfg.table("interactions"), ["user_id", "item_id", "event_ts"])
    written = {"interactions": good_events.count(), "items": good_items.count(),
               "images": good_images.count()}
    summary = IngestSummary(rows_in, written, bad, time.time() - start)
    log.info(summary.line())
    return summary


if __name__ == "__main__":  # spark-submit: same arguments and exit codes as `mmi ingest`
    import sys

    from mminterest.cli import main

    sys.exit(main(["ingest", *sys.argv[1:]]))

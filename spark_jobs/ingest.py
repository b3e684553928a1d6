"""Ingest: dataset adapter -> Great Expectations gate -> Delta tables `interactions`, `items`, `quarantine`.

Every input row ends either in a good table or in `quarantine` (with the failed check as reason):
good + quarantined = input. Quarantine is written first; past `max_bad_fraction` the job then
fails and leaves the good tables untouched. Good tables are MERGEd on their keys, so a re-run on
the same input leaves the same state (one commit per table per run).

A run for the data interval [start, end) (`--start/--end`: the DAG's logical-date window) replays
the dataset as a stream. It admits every event with event_ts < end that `interactions` does not
hold yet: the window's events, late arrivals (an earlier event_ts, in the source only since that
window ran) and, on an empty table, everything before `end` (the first load). Events at or after
`end` wait for their window (unless their timestamp is out of range: those are quarantined now).
Only the admitted candidates are validated: catalogue rows (items, images) equal to what `items`
already holds were validated when they were admitted and are taken as they are; the rest (new,
changed, previously refused) go through the suites; and while the catalogue files are unchanged
since the last run (`catalogue_mark`: size, mtime, check settings) and `items` has not been
written since, the catalogue is not read at all. Likewise, while the events files are unchanged
since the last windowed run (`events_mark`) and `interactions` has not been written since, every
event before that run's end is held or quarantined already: only the events from there to `end`
are candidates, and the held events are not compared. Without a window the whole dataset is
validated and merged, as a full rebuild.

    spark-submit spark_jobs/ingest.py [--start ISO --end ISO]      or      mmi ingest [...]
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pandas as pd
from pyspark.sql import DataFrame, SparkSession, Window
from pyspark.sql import functions as F

from mminterest.config import Config, get_config
from mminterest.schemas import utc
from spark_jobs import delta_io, increments
from spark_jobs.adapters import DatasetAdapter, get_adapter
from spark_jobs.expectations import image_checks, interaction_checks, item_checks
from spark_jobs.validation import run_suite, split_failed

log = logging.getLogger("mminterest.ingest")
RID = "_rid"
QUARANTINE_KEYS = ["source", "record_hash"]
INTERACTION_KEYS = ["user_id", "item_id", "event_ts"]
QUARANTINE_SCHEMA = (
    "source string, record_hash string, reason string, checks array<string>, record string"
)


class BadInputError(RuntimeError):
    """Too many rows failed validation; the good tables were left untouched."""


@dataclass
class IngestSummary:
    rows_in: dict[str, int]
    written: dict[str, int]
    quarantined: dict[str, int]
    seconds: float
    skipped: dict[str, int] = field(default_factory=dict)  # windowed: already held, or not due yet
    window: str = ""
    catalogue_read: bool = True  # False: catalogue files unchanged, items taken as held
    held_before: str = ""  # events source unchanged: every event before this was held already

    def line(self) -> str:
        def fmt(d: dict[str, int]) -> str:
            return f"{sum(d.values()):,} (" + ", ".join(f"{k} {v:,}" for k, v in d.items()) + ")"

        skipped = f", skipped {fmt(self.skipped)}" if self.skipped else ""
        window = f" [window {self.window}]" if self.window else ""
        held = "" if self.catalogue_read else ", catalogue unchanged"
        if self.held_before:
            held += f", events source unchanged: events before {self.held_before} held"
        return (
            f"ingest{window}: rows in {fmt(self.rows_in)}, written {fmt(self.written)}, "
            f"quarantined {fmt(self.quarantined)}{skipped}{held}, {self.seconds:.1f} s"
        )


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
    null_key = (
        F.greatest(*[F.col(k).isNull() for k in keys]) if len(keys) > 1 else F.col(keys[0]).isNull()
    )
    return df.withColumn(name, null_key | (rank == 1))


def _validated(df: DataFrame, source: str, checks, cfg: Config) -> tuple[DataFrame, DataFrame, int]:
    """(good rows, quarantine rows, rows of `df`); nothing to validate (a windowed run) runs no
    suite."""
    df = df.persist()  # counted, validated and split: computed once
    rows = df.count()
    if not rows:
        empty = df.select(
            F.lit(source).alias("source"),
            F.sha2("_raw", 256).alias("record_hash"),
            F.lit(None).cast("string").alias("reason"),
            F.array().cast("array<string>").alias("checks"),
            F.col("_raw").alias("record"),
        )
        return df, empty, 0
    report_dir = cfg.reports_dir / "validation"
    result = run_suite(df, f"ingest_{source}", checks, RID, report_dir, cfg.ge_pandas_max_rows)
    good, bad = split_failed(df, result, checks, RID)
    quarantine = bad.select(
        F.lit(source).alias("source"),
        F.sha2("_raw", 256).alias("record_hash"),
        "reason",
        "checks",
        F.col("_raw").alias("record"),
    )
    return good, quarantine, rows


def _held_back(
    df: DataFrame, held: DataFrame | None, columns: list[str], *flags: str
) -> tuple[DataFrame, DataFrame | None]:
    """(rows to validate, rows kept as already validated): a row is kept when every flag is true
    and a row of `held` (what the table holds) equals it on `columns` (nulls equal)."""
    if held is None:
        return df, None
    ok = df.where(" AND ".join(f"coalesce({f}, false)" for f in flags))
    match = held.select(*[F.col(c).alias(f"_held_{c}") for c in columns])
    kept = ok.join(
        F.broadcast(match), [ok[c].eqNullSafe(match[f"_held_{c}"]) for c in columns], "left_semi"
    ).persist()
    return df.join(kept.select(RID), RID, "left_anti"), kept


def run(
    cfg: Config | None = None, spark: SparkSession | None = None, start=None, end=None
) -> IngestSummary:
    """Ingest the configured dataset (with `end`: the events before `end` not yet admitted);
    return the summary (also logged as one line)."""
    from spark_jobs.session import get_spark

    cfg = cfg or get_config()
    spark = spark or get_spark("mmi-ingest", cfg)
    try:
        return _run(cfg, spark, utc(start), utc(end))
    finally:
        spark.catalog.clearCache()  # the persisted frames of this run must not serve the next one


@dataclass
class _Catalogue:
    """The items and images a run goes on with, and what checking them gave."""

    items: DataFrame  # good items: item_id, title, text, category
    images: DataFrame  # good images: item_id, image_path
    quarantine: DataFrame
    rows_in: dict[str, int]  # rows validated, per source
    kept: dict[str, int]  # rows taken as `items` holds them, per source
    new_images: DataFrame | None  # images admitted by this run's suite
    read: bool = True  # False: taken as `items` holds it, the source files not read


def _stats(files: list[Path]) -> dict[str, list[int] | None]:
    """Each file's [size, mtime in ns] (None: absent)."""
    return {
        str(f): [f.stat().st_size, f.stat().st_mtime_ns] if f.is_file() else None for f in files
    }


def catalogue_mark(adapter: DatasetAdapter, cfg: Config) -> dict:
    """What the catalogue was read from: each catalogue file's (size, mtime), and the settings
    its checks use. Unchanged since the last run (and `items` untouched since): nothing to check."""
    files = _stats(adapter.catalogue_files(cfg))
    return {"dataset": cfg.dataset, "max_text_chars": cfg.max_text_chars, "files": files}


def events_mark(adapter: DatasetAdapter, cfg: Config) -> dict:
    """What the events were read from: each events file's (size, mtime), and the settings their
    checks and labels use."""
    ratings = [cfg.rating_min, cfg.rating_max, cfg.positive_rating]
    return {
        "dataset": cfg.dataset,
        "ratings": ratings,
        "files": _stats(adapter.interaction_files(cfg)),
    }


def _held_before(cfg: Config, mark: dict) -> pd.Timestamp | None:
    """The end of the windows `interactions` admitted from the source `mark` describes, when that
    source is unchanged and the table untouched since (every source event before it is held or
    quarantined); else None."""
    micros = (increments.consumed(cfg, "interactions", mark) or {}).get("admitted_before_us")
    return None if micros is None else pd.Timestamp(micros, unit="us", tz="UTC")


def _numbered(df: DataFrame) -> DataFrame:
    """`df` with a row id (`RID`, names failing rows in the GE report), persisted: read once."""
    return df.withColumn(RID, F.monotonically_increasing_id()).persist()


def _held_catalogue(held_items: DataFrame) -> _Catalogue:
    """The catalogue as `items` holds it (its sources unchanged since it was checked)."""
    images = held_items.select("item_id", "image_path")
    spark = held_items.sparkSession
    return _Catalogue(
        held_items.select("item_id", "title", "text", "category"),
        images,
        spark.createDataFrame([], QUARANTINE_SCHEMA),
        {"items": 0, "images": 0},
        {"items": held_items.count(), "images": images.where("image_path IS NOT NULL").count()},
        None,
        read=False,
    )


def _checked_catalogue(
    spark: SparkSession, cfg: Config, adapter: DatasetAdapter, held_items: DataFrame | None
) -> _Catalogue:
    """Items, then images, through their suites (rows equal to what `items` holds are kept)."""
    # pyspark's stub lacks the type-hinted (no functionType) overload of pandas_udf
    image_status = F.pandas_udf(_image_status, "string")  # type: ignore[call-overload]
    log.info("ingest [1/4] validating items from %s", cfg.dataset_dir)
    items = _first_of(_numbered(adapter.items(spark, cfg)), ["item_id"], "first_of_id")
    items, kept_items = _held_back(
        items, held_items, ["item_id", "title", "text", "category"], "first_of_id"
    )
    good_items, q_items, n_items = _validated(items, "items", item_checks(cfg.max_text_chars), cfg)
    if kept_items is not None:
        good_items = good_items.unionByName(kept_items)
    good_items = good_items.persist()
    known = good_items.select("item_id", F.lit(True).alias("item_known"))

    log.info("ingest [2/4] validating images")
    images = _numbered(adapter.images(spark, cfg))
    images = (
        _first_of(images, ["item_id"], "first_of_id")
        .join(F.broadcast(known), "item_id", "left")
        .fillna(False, ["item_known"])
    )
    images, kept_images = _held_back(
        images, held_items, ["item_id", "image_path"], "first_of_id", "item_known"
    )
    images = (
        images.withColumn("_status", image_status("image_path"))
        .withColumn("image_exists", F.col("_status") != "missing")
        .withColumn(
            "image_decodes", F.when(F.col("_status") != "missing", F.col("_status") == "ok")
        )
    )
    new_images, q_images, n_images = _validated(images, "images", image_checks(), cfg)
    good_images = new_images
    if kept_images is not None:
        good_images = new_images.select(*kept_images.columns).unionByName(kept_images)
    return _Catalogue(
        good_items.select("item_id", "title", "text", "category"),
        good_images.select("item_id", "image_path"),
        q_items.unionByName(q_images),
        {"items": n_items, "images": n_images},
        {
            "items": kept_items.count() if kept_items is not None else 0,
            "images": kept_images.count() if kept_images is not None else 0,
        },
        new_images if n_images else None,
    )


def _run(cfg: Config, spark: SparkSession, start, end) -> IngestSummary:
    begun = time.time()
    report_dir = cfg.reports_dir / "validation"
    adapter = get_adapter(cfg.dataset)
    now = datetime.now(UTC)  # one "now" for the range check and the replay's future

    # what `items` holds: read by windowed runs only
    windowed = end is not None and delta_io.exists(cfg.table("items"))
    held_items = delta_io.read(spark, cfg.table("items")).persist() if windowed else None
    mark = catalogue_mark(adapter, cfg)
    if held_items is not None and increments.consumed(cfg, "items", mark) is not None:
        log.info(
            "ingest [1/4] catalogue files unchanged since the last run: items and images as %s "
            "holds them",
            cfg.table("items"),
        )
        catalogue = _held_catalogue(held_items)
    else:
        catalogue = _checked_catalogue(spark, cfg, adapter, held_items)
    known = catalogue.items.select("item_id", F.lit(True).alias("item_known"))

    events, source = adapter.interactions(spark, cfg), events_mark(adapter, cfg)
    held_before = _held_before(cfg, source) if end is not None else None
    since = f" from {held_before} (events source unchanged)" if held_before is not None else ""
    log.info(
        "ingest [3/4] validating interactions%s%s",
        since,
        f" before {end}" if end is not None else "",
    )
    skipped = {}
    if end is not None:  # the replay: events at/after `end` are not due yet; held ones stay
        horizon = now + timedelta(days=1)  # later than that: out of range, quarantined now
        ts = F.col("event_ts")
        due = ts < F.lit(end.to_pydatetime())
        if held_before is not None:
            due &= ts >= F.lit(held_before.to_pydatetime())
        total, events = events.count(), events.where(ts.isNull() | due | (ts > F.lit(horizon)))
        if held_before is None and delta_io.exists(cfg.table("interactions")):
            held_keys = delta_io.read(spark, cfg.table("interactions")).select(*INTERACTION_KEYS)
            events = events.join(held_keys, INTERACTION_KEYS, "left_anti")
    events = _numbered(events)
    events = (
        _first_of(events, INTERACTION_KEYS, "first_of_key")
        .join(F.broadcast(known), "item_id", "left")
        .fillna(False, ["item_known"])
    )
    checks = interaction_checks(cfg.rating_min, cfg.rating_max, now)
    good_events, q_events, n_events = _validated(events, "interactions", checks, cfg)
    good_events = good_events.select(
        "user_id",
        "item_id",
        "event_ts",
        "rating",
        (F.col("rating") >= cfg.positive_rating).cast("int").alias("label"),
    ).persist()

    quarantine = catalogue.quarantine.unionByName(q_events)
    quarantine = (
        quarantine.groupBy("source", "record_hash", "reason", "checks", "record")
        .agg(F.count("*").alias("copies"))
        .persist()
    )
    rows_in = {"interactions": n_events, **catalogue.rows_in}
    if end is not None:
        skipped = {"interactions": total - n_events, **catalogue.kept}
    bad = {s: 0 for s in rows_in}
    bad.update(
        {
            r["source"]: r["n"]
            for r in quarantine.groupBy("source").agg(F.sum("copies").alias("n")).collect()
        }
    )

    log.info("ingest [4/4] writing Delta tables under %s", cfg.home / "delta")
    if sum(bad.values()) or not delta_io.exists(cfg.table("quarantine")):
        delta_io.merge(quarantine, cfg.table("quarantine"), QUARANTINE_KEYS)
    too_bad = {s: bad[s] / n for s, n in rows_in.items() if n and bad[s] / n > cfg.max_bad_fraction}
    if too_bad:
        shares = ", ".join(f"{s} {f:.1%}" for s, f in too_bad.items())
        raise BadInputError(
            f"ingest refused: bad-row share above max_bad_fraction={cfg.max_bad_fraction:.1%} "
            f"({shares}); {sum(bad.values()):,} rows are in {cfg.table('quarantine')}, reports in "
            f"{report_dir}; good tables untouched"
        )

    first_seen = good_events.groupBy("item_id").agg(F.min("event_ts").alias("first_seen_ts"))
    items_out = catalogue.items.join(catalogue.images, "item_id", "left").join(
        first_seen, "item_id", "left"
    )
    if held_items is not None:  # first seen: the earlier of the held and the newly admitted events
        prior = held_items.select("item_id", F.col("first_seen_ts").alias("_prior"))
        items_out = (
            items_out.join(prior, "item_id", "left")
            .withColumn("first_seen_ts", F.least("first_seen_ts", "_prior"))
            .drop("_prior")
        )
        items_out = items_out.subtract(held_items.select(*items_out.columns))  # only changed rows
    items_out = items_out.persist()
    written = {
        "interactions": good_events.count() if n_events else 0,
        "items": items_out.count(),
        "images": catalogue.new_images.count() if catalogue.new_images is not None else 0,
    }
    if written["items"] or not delta_io.exists(cfg.table("items")):
        delta_io.merge(items_out, cfg.table("items"), ["item_id"])
    if written["interactions"] or not delta_io.exists(cfg.table("interactions")):
        delta_io.merge(good_events, cfg.table("interactions"), INTERACTION_KEYS)
    increments.save(cfg, "items", {}, mark)  # the catalogue `items` now holds was read from these
    # every event of `source` before the latest window end is held or quarantined (no window: none
    # to go on from); a re-run of an earlier day does not move it back
    latest = (
        {} if end is None else {"admitted_before_us": max(end, held_before or end).value // 1000}
    )
    increments.save(cfg, "interactions", latest, source)
    window = f"[{start or '-inf'}, {end})" if end is not None else ""
    summary = IngestSummary(
        rows_in,
        written,
        bad,
        time.time() - begun,
        skipped,
        window,
        catalogue_read=catalogue.read,
        held_before=str(held_before) if held_before is not None else "",
    )
    log.info(summary.line())
    return summary


if __name__ == "__main__":  # spark-submit: same arguments and exit codes as `mmi ingest`
    import sys

    from mminterest.cli import main

    sys.exit(main(["ingest", *sys.argv[1:]]))

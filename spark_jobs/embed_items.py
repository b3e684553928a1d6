"""Item embeddings: Delta `items` -> batched encoder inference in Spark -> Delta `item_embeddings`.

The encoder is the promoted one (cfg.encoder_dir) or, when none is promoted, the base encoder
(packaged MiniLM + a seeded small ViT: the same weights, hence the same encoder_version, on every
machine). The driver fixes the version; each Python worker loads the model once (module-level cache
keyed by folder and version) and embeds its partition batch by batch inside `mapInPandas`.

Incremental: content_hash = sha256 of (encoder_version, category, text, image bytes); only items
whose hash is new or differs from the stored row are embedded, the others are skipped. The embedded
rows pass a Great Expectations gate (finite vectors of the encoder's width and unit L2 norm; img
present exactly when has_img) before one MERGE on item_id. With `--int8` the job also reports what
per-vector int8 storage would save and cost in cosine error (quantize.py, reports/int8_item_embeddings.json).

    spark-submit spark_jobs/embed_items.py [--int8]      or      mmi embed items [--int8]
"""

from __future__ import annotations

import logging
import math
import os
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pyarrow as pa
from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F

from mminterest import schemas
from mminterest.config import Config, get_config
from spark_jobs import delta_io
from spark_jobs.job import require
from spark_jobs.schemas import ddl
from training.content.item_rows import content_hash, embed_frame

log = logging.getLogger("mminterest.embed_items")
TABLE = "item_embeddings"
NORM_TOLERANCE = 1e-3
OUT_SCHEMA = ddl(TABLE)  # mminterest/schemas.py
OUT_COLUMNS = schemas.ITEM_EMBEDDINGS.names
_ENCODERS: dict = {}  # (folder, version) -> encoder, one per Python worker process


def encoder_for(folder: str, version: str, seed: int):
    """The encoder saved in `folder` (else the base encoder for `seed`), loaded once per process and
    checked against `version`."""
    from training.content.encoders import load_or_base

    key = (folder, version)
    if key not in _ENCODERS:
        encoder = load_or_base(folder, seed)
        if encoder.encoder_version() != version:
            raise RuntimeError(
                f"encoder at {folder} is {encoder.encoder_version()}, the job expects {version}"
            )
        _ENCODERS.clear()
        _ENCODERS[key] = encoder
    return _ENCODERS[key]


def embedder(folder: str, version: str, seed: int, batch_size: int, threads: int):
    def embed(batches: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        import torch

        torch.set_num_threads(threads)
        encoder = encoder_for(folder, version, seed)
        for frame in batches:
            for start in range(0, len(frame), batch_size):
                part = frame.iloc[start : start + batch_size]
                rows = embed_frame(encoder, version, part, part["image_path"].tolist(), batch_size)
                yield rows.assign(category=part["category"].map(schemas.category).to_numpy())[
                    OUT_COLUMNS
                ]

    return embed


def _hashes(version: str):
    def hashes(text: pd.Series, category: pd.Series, image_path: pd.Series) -> pd.Series:
        return pd.Series(
            [content_hash(version, t, c, p) for t, c, p in zip(text, category, image_path)]
        )

    # pyspark's stub lacks the type-hinted (no functionType) overload of pandas_udf
    return F.pandas_udf(hashes, "string")  # type: ignore[call-overload]


def _norm(arr: Column) -> Column:
    return F.sqrt(F.aggregate(arr, F.lit(0.0).cast("double"), lambda acc, x: acc + x * x))


def _finite(arr: Column) -> Column:
    return (
        ~F.isnan(F.array_max(arr))
        & (F.array_max(arr) < float("inf"))
        & (F.array_min(arr) > float("-inf"))
    )


def check_frame(df: DataFrame, dim: int) -> DataFrame:
    """Scalar check columns of embedded rows: key, per-vector shape + finiteness + unit norm."""
    from spark_jobs.feature_checks import KEY

    def vector_ok(name: str) -> Column:
        arr = F.col(name)
        return (F.size(arr) == dim) & _finite(arr) & (F.abs(_norm(arr) - 1.0) <= NORM_TOLERANCE)

    img_ok = F.when(F.col("has_img"), vector_ok("img")).otherwise(F.col("img").isNull())
    return df.select(
        F.col("item_id").cast("string").alias(KEY),
        *[
            F.coalesce(cond, F.lit(False)).alias(name)
            for name, cond in {
                "key_present": F.col("item_id").isNotNull()
                & F.col("encoder_version").isNotNull()
                & F.col("valid_from_ts").isNotNull(),
                "txt_ok": vector_ok("txt"),
                "fused_ok": vector_ok("fused"),
                "img_ok": img_ok,
            }.items()
        ],
    )


def checks(dim: int) -> list:
    """The gate's expectations (Great Expectations is imported here, on the driver: Python workers
    import this module to embed, and it would cost each of them seconds)."""
    import great_expectations.expectations as gxe

    from spark_jobs.validation import Check

    reasons = {
        "key_present": "null item_id, encoder_version or valid_from_ts",
        "txt_ok": f"txt vector not finite, of width {dim} and unit norm",
        "fused_ok": f"fused vector not finite, of width {dim} and unit norm",
        "img_ok": f"img vector not finite / width {dim} / unit norm, or present without has_img",
    }
    return [
        Check(gxe.ExpectColumnValuesToBeInSet(column=c, value_set=[True]), r)
        for c, r in reasons.items()
    ]


@dataclass(frozen=True)
class EmbedSummary:
    rows_in: int
    embedded: int
    skipped: int
    with_image: int
    total: int
    encoder_version: str
    seconds: float

    def line(self) -> str:
        share = self.with_image / self.total if self.total else 0.0
        return (
            f"embed items: rows in {self.rows_in:,}, embedded {self.embedded:,}, skipped {self.skipped:,}, "
            f"coverage with image {self.with_image:,} / {self.total:,} ({share:.1%}), "
            f"encoder {self.encoder_version}, {self.seconds:.1f} s"
        )


class _Progress(threading.Thread):
    """Logs the finished / total partitions of the running Spark stages when they change (polled
    every `every` seconds)."""

    def __init__(self, spark: SparkSession, every: float = 5.0):
        super().__init__(daemon=True)
        self.tracker, self.every, self.done = (
            spark.sparkContext.statusTracker(),
            every,
            threading.Event(),
        )

    def run(self) -> None:
        seen: dict[int, int] = {}
        while not self.done.wait(self.every):
            for stage in filter(
                None, map(self.tracker.getStageInfo, self.tracker.getActiveStageIds())
            ):
                if seen.get(stage.stageId) != stage.numCompletedTasks:
                    seen[stage.stageId] = stage.numCompletedTasks
                    log.info(
                        "embed items: %d/%d partitions done (stage %d)",
                        stage.numCompletedTasks,
                        stage.numTasks,
                        stage.stageId,
                    )


def backfill_category(cfg: Config) -> bool:
    """A table written before item_embeddings held `category` gets the column, filled from `items`
    in one commit (the vectors do not depend on it, so nothing is re-embedded). True if it did."""
    from deltalake import DeltaTable

    from mminterest import tables

    path = cfg.table(TABLE)
    if not tables.exists(path) or "category" in tables.schema(path).names:
        return False
    items = tables.read(cfg.table("items"), ["item_id", "category"])
    source = pa.table(
        {
            "item_id": pa.array(items["item_id"], pa.int64()),
            "category": pa.array([schemas.category(c) for c in items["category"]], pa.string()),
        }
    )
    tables.committed(
        path,
        lambda: (
            DeltaTable(path)
            .merge(
                source,
                "t.item_id = s.item_id",
                source_alias="s",
                target_alias="t",
                merge_schema=True,
            )
            .when_matched_update({"category": "s.category"})
            .execute()
        ),
    )
    return True


def compute(
    spark: SparkSession, cfg: Config, encoder_dir: str, version: str, batch_size: int
) -> tuple[DataFrame, int, int]:
    """(embedded rows, items read, rows to embed): items hashed, the unchanged ones left out, the
    rest repartitioned and embedded by mapInPandas. The frame is lazy; the counts are computed."""
    items = delta_io.read(spark, cfg.table("items"))
    now = F.current_timestamp()
    hashed = items.select(
        "item_id",
        "text",
        "image_path",
        "category",
        _hashes(version)("text", "category", "image_path").alias("content_hash"),
        F.coalesce("first_seen_ts", now).alias("valid_from_ts"),
        now.alias("updated_ts"),
    )
    if delta_io.exists(cfg.table(TABLE)):
        stored = delta_io.read(spark, cfg.table(TABLE)).select("item_id", "content_hash")
        hashed = hashed.join(stored, ["item_id", "content_hash"], "left_anti")
    hashed = hashed.persist()
    rows_in, todo = items.count(), hashed.count()
    slots = (
        spark.sparkContext.defaultParallelism
    )  # concurrent tasks; up to 4 partitions each for progress
    parts = max(1, min(4 * slots, math.ceil(todo / batch_size)))
    threads = (
        max(1, (os.cpu_count() or 1) // min(slots, parts))
        if cfg.spark_master.startswith("local")
        else 1
    )
    embedded = hashed.repartition(parts).mapInPandas(
        embedder(encoder_dir, version, cfg.seed, batch_size, threads), OUT_SCHEMA
    )
    return embedded, rows_in, todo


def run(
    cfg: Config | None = None,
    spark: SparkSession | None = None,
    batch_size: int = 64,
    int8: bool = False,
) -> EmbedSummary:
    """Embed new and changed items into item_embeddings; return (and log) the one-line summary."""
    from deltalake import DeltaTable

    from spark_jobs.session import get_spark
    from training.content.encoders import load_or_base

    cfg = cfg or get_config()
    require(cfg, "items")
    start = time.time()
    folder = str(cfg.encoder_dir.resolve()) if cfg.encoder_dir.exists() else str(cfg.encoder_dir)
    encoder = load_or_base(folder, cfg.seed)
    version, dim = encoder.encoder_version(), encoder.cfg.dim
    log.info(
        "embed items [1/4] encoder %s (%s)",
        version,
        folder if (Path(folder) / "config.json").is_file() else "base encoder: none promoted",
    )
    if backfill_category(cfg):
        log.info("embed items: added the category column to %s", cfg.table(TABLE))
    spark = spark or get_spark("mmi-embed-items", cfg)
    embedded, rows_in, todo = compute(spark, cfg, folder, version, batch_size)
    log.info("embed items [2/4] %s items, %s new or changed", f"{rows_in:,}", f"{todo:,}")
    progress = _Progress(spark)
    progress.start()
    try:
        embedded = embedded.persist()
        embedded.count()
    finally:
        progress.done.set()
    try:
        if todo:
            log.info("embed items [3/4] checking %s rows", f"{todo:,}")
            from spark_jobs.feature_checks import publish_gate

            publish_gate(check_frame(embedded, dim), "features_item_embeddings", checks(dim), cfg)
            delta_io.merge(
                embedded, cfg.table(TABLE), ["item_id"], newer="updated_ts"
            )  # /items may be newer
        log.info("embed items [4/4] %s up to date", cfg.table(TABLE))
    finally:
        embedded.unpersist()
        spark.catalog.clearCache()
    has_img = (
        DeltaTable(cfg.table(TABLE))
        .to_pyarrow_table(columns=["has_img"])["has_img"]
        .to_numpy(zero_copy_only=False)
        if delta_io.exists(cfg.table(TABLE))
        else []
    )
    summary = EmbedSummary(
        rows_in, todo, rows_in - todo, int(sum(has_img)), len(has_img), version, time.time() - start
    )
    log.info(summary.line())
    if int8:
        from spark_jobs.quantize import int8_report

        log.info(int8_report(cfg))
    return summary


if __name__ == "__main__":  # spark-submit: same arguments and exit codes as `mmi embed items`
    import sys

    from mminterest.cli import main

    sys.exit(main(["embed", "items", *sys.argv[1:]]))

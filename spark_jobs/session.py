"""The single place that opens Spark sessions.

Partitions are sized from the data, not by a constant: every shuffle starts with
`INITIAL_PARTITIONS` reducers and Spark's adaptive execution (AQE) coalesces them to about
`PARTITION_BYTES` of shuffle data each, never fewer than the cores can run at once (so per-task
memory stays flat as the data grows, and a cluster with more cores gets more tasks). File scans
are split by bytes (`spark.sql.files.maxPartitionBytes`) as Spark does anyway.
`spark_shuffle_partitions` > 0 is an override: exactly that many shuffle partitions, no coalescing.
"""

from __future__ import annotations

import os
import sys

from pyspark.sql import SparkSession

from mminterest.config import Config, get_config

PARTITION_BYTES = 32 << 20  # shuffle bytes per task after AQE coalescing (its advisory size)
INITIAL_PARTITIONS = 256  # reducers before coalescing: room for ~8 GB of shuffle at the size above
MIN_PARTITION_BYTES = 1 << 20


def partition_conf(cfg: Config) -> dict[str, str]:
    """The Spark settings that size shuffle partitions (AQE from the data, or the override)."""
    fixed = cfg.spark_shuffle_partitions > 0
    return {
        "spark.sql.adaptive.enabled": "true",
        "spark.sql.adaptive.coalescePartitions.enabled": str(not fixed).lower(),
        "spark.sql.adaptive.advisoryPartitionSizeInBytes": str(PARTITION_BYTES),
        "spark.sql.adaptive.coalescePartitions.minPartitionSize": str(MIN_PARTITION_BYTES),
        "spark.sql.adaptive.coalescePartitions.initialPartitionNum": str(
            cfg.spark_shuffle_partitions if fixed else INITIAL_PARTITIONS
        ),
        "spark.sql.shuffle.partitions": str(
            cfg.spark_shuffle_partitions if fixed else INITIAL_PARTITIONS
        ),
        "spark.sql.adaptive.skewJoin.enabled": "true",
        "spark.sql.optimizer.canChangeCachedPlanOutputPartitioning": "true",  # persisted frames too
    }


def get_spark(app_name: str = "mminterest", cfg: Config | None = None) -> SparkSession:
    """Return the (cached) Spark session for `cfg.spark_master`, UTC, Arrow on, partitions sized
    from the data (`partition_conf`), Delta SQL if its jars exist."""
    cfg = cfg or get_config()
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    os.environ.setdefault("PYSPARK_DRIVER_PYTHON", sys.executable)
    os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
    builder = (
        SparkSession.builder.appName(app_name)
        .master(cfg.spark_master)
        .config("spark.driver.memory", cfg.spark_driver_memory)
        .config("spark.sql.session.timeZone", "UTC")
        .config("spark.sql.execution.arrow.pyspark.enabled", "true")
        .config("spark.sql.parquet.outputTimestampType", "TIMESTAMP_MICROS")
        .config("spark.ui.showConsoleProgress", "false")
        .config("spark.ui.enabled", "false")
        .config("spark.driver.extraJavaOptions", "-Duser.timezone=UTC")
        .config("spark.executor.extraJavaOptions", "-Duser.timezone=UTC")
    )
    for key, value in partition_conf(cfg).items():
        builder = builder.config(key, value)
    if (
        os.environ.get("MMI_DELTA_SPARK") == "1"
    ):  # delta-spark jars already on the classpath (cluster)
        builder = builder.config(
            "spark.sql.extensions", "io.delta.sql.DeltaSparkSessionExtension"
        ).config(
            "spark.sql.catalog.spark_catalog", "org.apache.spark.sql.delta.catalog.DeltaCatalog"
        )
    spark = builder.getOrCreate()
    spark.sparkContext.setLogLevel("ERROR")
    return spark

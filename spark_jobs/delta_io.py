"""The single Delta I/O module: Spark DataFrames in and out of Delta tables.

Writes go through delta-spark when its JVM classes are on the classpath, else through delta-rs
(`deltalake`): Spark stages Parquet in parallel, then the driver streams those files as Arrow
record batches into ONE Delta commit (never the whole table in driver memory). Reads return a
Spark DataFrame over the table's live files only (superseded files of older versions are ignored).
`merge_arrow` upserts a small Arrow table without Spark (new-item inference).
"""
from __future__ import annotations

import shutil
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import pyarrow as pa
import pyarrow.dataset as pads
from deltalake import DeltaTable, write_deltalake
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql.pandas.types import from_arrow_schema

_BATCH_ROWS = 64_000


def delta_jvm_available(spark: SparkSession) -> bool:
    """True when delta-spark's JVM classes are loadable in this session."""
    try:
        loader = spark._jvm.java.lang.Thread.currentThread().getContextClassLoader()
        loader.loadClass("io.delta.tables.DeltaTable")
        return True
    except Exception:  # py4j raises a generic Py4JJavaError on ClassNotFoundException
        return False


def exists(path: str) -> bool:
    return DeltaTable.is_deltatable(str(path))


def read(spark: SparkSession, path: str) -> DataFrame:
    """The current version of the Delta table at `path` as a Spark DataFrame."""
    if delta_jvm_available(spark):
        return spark.read.format("delta").load(path)
    table = DeltaTable(path)
    files = table.file_uris()
    if not files:
        return spark.createDataFrame([], from_arrow_schema(pa.schema(table.schema().to_arrow())))
    return spark.read.option("basePath", path).parquet(*files)


def write(df: DataFrame, path: str, mode: str = "overwrite", predicate: str | None = None,
          partition_by: Sequence[str] | None = None) -> int:
    """Overwrite (optionally only rows matching `predicate`) or append; one commit. Returns the version."""
    if delta_jvm_available(df.sparkSession):
        writer = df.write.format("delta").mode(mode)
        if predicate:
            writer = writer.option("replaceWhere", predicate)
        if partition_by:
            writer = writer.partitionBy(*partition_by)
        writer.save(path)
    else:
        with _staged(df, path) as reader:
            write_deltalake(path, reader, mode=mode, predicate=predicate,
                            partition_by=list(partition_by) if partition_by else None,
                            schema_mode="overwrite" if mode == "overwrite" and not predicate else None)
    return DeltaTable(path).version()


def merge(df: DataFrame, path: str, keys: Sequence[str]) -> int:
    """Upsert `df` on `keys` (update matched rows, insert new ones); one commit. Returns the version."""
    if not exists(path):
        return write(df, path, mode="overwrite")
    condition = " AND ".join(f"t.`{k}` = s.`{k}`" for k in keys)
    if delta_jvm_available(df.sparkSession):
        from delta.tables import DeltaTable as SparkDeltaTable

        (SparkDeltaTable.forPath(df.sparkSession, path).alias("t").merge(df.alias("s"), condition)
         .whenMatchedUpdateAll().whenNotMatchedInsertAll().execute())
    else:
        with _staged(df, path) as reader:
            (DeltaTable(path).merge(reader, condition, source_alias="s", target_alias="t")
             .when_matched_update_all().when_not_matched_insert_all().execute())
    return DeltaTable(path).version()


def merge_arrow(table: pa.Table, path: str, keys: Sequence[str]) -> int:
    """Spark-free upsert of an Arrow table on `keys` with delta-rs (small writes, e.g. new items in
    a request); creates the table when absent. One commit; returns the version."""
    if not exists(path):
        write_deltalake(path, table, mode="overwrite")
    else:
        condition = " AND ".join(f"t.`{k}` = s.`{k}`" for k in keys)
        (DeltaTable(path).merge(table, condition, source_alias="s", target_alias="t")
         .when_matched_update_all().when_not_matched_insert_all().execute())
    return DeltaTable(path).version()


@contextmanager
def _staged(df: DataFrame, path: str) -> Iterator:
    """Let Spark write `df` as Parquet in parallel; yield a streaming Arrow reader over those files."""
    staging = Path(path).parent / "_staging" / uuid.uuid4().hex
    try:
        df.write.mode("overwrite").parquet(str(staging))
        files = sorted(str(p) for p in Path(staging).glob("*.parquet"))
        yield pads.dataset(files, format="parquet").scanner(batch_size=_BATCH_ROWS).to_reader()
    finally:
        shutil.rmtree(staging, ignore_errors=True)

"""The single Delta I/O module: Spark DataFrames in and out of Delta tables.

Writes go through delta-spark when its JVM classes are on the classpath, else through delta-rs
(`deltalake`): Spark stages Parquet in parallel, then the driver streams those files as Arrow
record batches into ONE Delta commit (never the whole table in driver memory). Reads return a
Spark DataFrame over the table's live files only (superseded files of older versions are ignored).
Every delta-rs commit goes through `mminterest.tables.committed`: a conflict with a concurrent
writer (new items from the ranker, another job) re-runs the commit on the newest snapshot.
Spark-free readers and writers use `mminterest.tables` directly.
"""

from __future__ import annotations

import shutil
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import pyarrow as pa
import pyarrow.dataset as pads
from deltalake import DeltaTable, write_deltalake
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql.pandas.types import from_arrow_schema

from mminterest.tables import committed, exists

_BATCH_BYTES = (
    32 << 20
)  # uncompressed bytes per Arrow batch streamed into a commit (~64k narrow rows)


def delta_jvm_available(spark: SparkSession) -> bool:
    """True when delta-spark's JVM classes are loadable in this session."""
    try:
        jvm = spark._jvm
        assert jvm is not None  # set in a classic (non-Connect) session; caught below if not
        loader = jvm.java.lang.Thread.currentThread().getContextClassLoader()
        loader.loadClass("io.delta.tables.DeltaTable")
        return True
    except Exception:  # py4j raises a generic Py4JJavaError on ClassNotFoundException
        return False


def read(spark: SparkSession, path: str) -> DataFrame:
    """The current version of the Delta table at `path` as a Spark DataFrame."""
    if delta_jvm_available(spark):
        return spark.read.format("delta").load(path)
    table = DeltaTable(path)
    files = table.file_uris()
    if not files:
        return spark.createDataFrame([], from_arrow_schema(pa.schema(table.schema().to_arrow())))
    return spark.read.option("basePath", path).parquet(*files)


def write(
    df: DataFrame,
    path: str,
    mode: str = "overwrite",
    predicate: str | None = None,
    partition_by: Sequence[str] | None = None,
) -> int:
    """Overwrite (optionally only rows matching `predicate`) or append; one commit. Returns the version."""
    if delta_jvm_available(df.sparkSession):
        writer = df.write.format("delta").mode(mode)
        if predicate:
            writer = writer.option("replaceWhere", predicate)
        if partition_by:
            writer = writer.partitionBy(*partition_by)
        writer.save(path)
    else:
        with _staged(df, path) as batches:
            # deltalake's overloads split on a Literal `mode` (predicate only with "overwrite")
            committed(
                path,
                lambda: write_deltalake(  # type: ignore[call-overload]
                    path,
                    batches(),
                    mode=mode,
                    predicate=predicate,
                    partition_by=list(partition_by) if partition_by else None,
                    schema_mode="overwrite" if mode == "overwrite" and not predicate else None,
                ),
            )
    return DeltaTable(path).version()


def merge(df: DataFrame, path: str, keys: Sequence[str], newer: str | None = None) -> int:
    """Upsert `df` on `keys` (update matched rows, insert new ones); one commit. Returns the version.
    With `newer`, a matched row is replaced only by a source row whose `newer` column is not older."""
    if not exists(path):
        return write(df, path, mode="overwrite")
    condition = " AND ".join(f"t.`{k}` = s.`{k}`" for k in keys)
    update = f"s.`{newer}` >= t.`{newer}`" if newer else None
    if delta_jvm_available(df.sparkSession):
        from delta.tables import DeltaTable as SparkDeltaTable

        (
            SparkDeltaTable.forPath(df.sparkSession, path)
            .alias("t")
            .merge(df.alias("s"), condition)
            .whenMatchedUpdateAll(update)
            .whenNotMatchedInsertAll()
            .execute()
        )
    else:
        with _staged(df, path) as batches:
            committed(
                path,
                lambda: (
                    DeltaTable(path)
                    .merge(batches(), condition, source_alias="s", target_alias="t")
                    .when_matched_update_all(predicate=update)
                    .when_not_matched_insert_all()
                    .execute()
                ),
            )
    return DeltaTable(path).version()


@contextmanager
def _staged(df: DataFrame, path: str) -> Iterator[Callable[[], pa.RecordBatchReader]]:
    """Let Spark write `df` as Parquet in parallel; yield a factory of streaming Arrow readers over
    those files (a retried commit reads them again)."""
    staging = Path(path).parent / "_staging" / uuid.uuid4().hex
    try:
        df.write.mode("overwrite").parquet(str(staging))
        files = sorted(str(p) for p in Path(staging).glob("*.parquet"))
        rows = _batch_rows(files)
        # one batch read ahead, one file at a time: driver memory stays flat whatever the table's size
        yield (
            lambda: (
                pads.dataset(files, format="parquet")
                .scanner(batch_size=rows, batch_readahead=1, fragment_readahead=1)
                .to_reader()
            )
        )
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _batch_rows(files: list[str]) -> int:
    """Rows per streamed batch: about _BATCH_BYTES of uncompressed data, from the Parquet footers
    (a wide row, e.g. interest_features' ~1.4 KB, gives smaller batches)."""
    import pyarrow.parquet as pq

    rows = size = 0
    for f in files[:8]:
        meta = pq.ParquetFile(f).metadata
        rows += meta.num_rows
        size += sum(meta.row_group(i).total_byte_size for i in range(meta.num_row_groups))
    return max(1024, min(1 << 20, _BATCH_BYTES * rows // size)) if size else 64_000

"""The single Delta I/O module: Spark DataFrames in and out of Delta tables.

Every write stages first: Spark computes the frame once and writes it as Parquet in parallel
beside the table (`Staged`); an optional gate checks those staged rows (as many passes as it
likes, nothing cached in memory); then ONE commit: through delta-spark when its JVM classes are on
the classpath, else through delta-rs (`deltalake`), the driver streaming the staged files as Arrow
record batches (never the whole table in driver memory). Reads return a Spark DataFrame over the
table's live files only (superseded files of older versions are ignored).
Every delta-rs commit goes through `mminterest.tables.committed`: a conflict with a concurrent
writer (new items from the ranker, another job) re-runs the commit on the newest snapshot.
Spark-free readers and writers use `mminterest.tables` directly.
"""

from __future__ import annotations

import shutil
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
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
    gate: Callable[[Staged], object] | None = None,
) -> int:
    """Overwrite (optionally only rows matching `predicate`) or append; one commit. Returns the
    version. `df` is computed once, into staging Parquet; `gate(staged)` then checks exactly those
    rows (as many passes as it likes, nothing cached in memory) and raises to commit nothing."""
    with _staged(df, path) as staged:
        if gate is not None:
            gate(staged)
        if delta_jvm_available(df.sparkSession):
            writer = staged.frame.write.format("delta").mode(mode)
            if predicate:
                writer = writer.option("replaceWhere", predicate)
            if partition_by:
                writer = writer.partitionBy(*partition_by)
            writer.save(path)
        else:
            # deltalake's overloads split on a Literal `mode` (predicate only with "overwrite")
            committed(
                path,
                lambda: write_deltalake(  # type: ignore[call-overload]
                    path,
                    staged.batches(),
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
        with _staged(df, path) as staged:
            committed(
                path,
                lambda: (
                    DeltaTable(path)
                    .merge(staged.batches(), condition, source_alias="s", target_alias="t")
                    .when_matched_update_all(predicate=update)
                    .when_not_matched_insert_all()
                    .execute()
                ),
            )
    return DeltaTable(path).version()


@dataclass(frozen=True)
class Staged:
    """A frame as Spark wrote it to staging Parquet: its files, row count (from the footers), the
    files read back as a Spark frame, and `batches()`, a streaming Arrow reader over them (one
    batch read ahead, one file at a time: driver memory stays flat whatever the table's size; a
    retried commit calls it again)."""

    files: list[str]
    rows: int
    frame: DataFrame
    batch_rows: int

    def batches(self) -> pa.RecordBatchReader:
        return (
            pads.dataset(self.files, format="parquet")
            .scanner(batch_size=self.batch_rows, batch_readahead=1, fragment_readahead=1)
            .to_reader()
        )


@contextmanager
def _staged(df: DataFrame, path: str) -> Iterator[Staged]:
    """Let Spark write `df` as Parquet in parallel beside the table; removed afterwards."""
    staging = Path(path).parent / "_staging" / uuid.uuid4().hex
    try:
        df.write.mode("overwrite").parquet(str(staging))
        files = sorted(str(p) for p in Path(staging).glob("*.parquet"))
        rows, size = _footers(files)
        frame = df.sparkSession.read.schema(df.schema).parquet(str(staging))
        yield Staged(files, rows, frame, _batch_rows(rows, size))
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _footers(files: list[str]) -> tuple[int, int]:
    """(rows, uncompressed bytes) of Parquet `files`, from their footers."""
    import pyarrow.parquet as pq

    rows = size = 0
    for f in files:
        meta = pq.ParquetFile(f).metadata
        rows += meta.num_rows
        size += sum(meta.row_group(i).total_byte_size for i in range(meta.num_row_groups))
    return rows, size


def _batch_rows(rows: int, size: int) -> int:
    """Rows per streamed batch: about _BATCH_BYTES of uncompressed data (a wide row, e.g.
    interest_features' ~1.4 KB, gives smaller batches)."""
    return max(1024, min(1 << 20, _BATCH_BYTES * rows // size)) if size else 64_000

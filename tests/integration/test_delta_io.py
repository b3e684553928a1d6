"""Delta I/O through delta-rs: one commit per write, live files only, reads back in Spark and deltalake."""

from deltalake import DeltaTable
from pyspark.sql import functions as F

from spark_jobs import delta_io


def _frame(spark, rows):
    return spark.createDataFrame(rows, "k long, v string, vec array<float>").withColumn(
        "ts", F.to_timestamp(F.lit("2020-01-01 00:00:00"))
    )


def test_merge_upserts_and_reads_only_live_files(spark, tmp_path):
    path = str(tmp_path / "t")
    assert delta_io.write(_frame(spark, [(1, "a", [1.0]), (2, "b", [2.0])]), path) == 0
    assert delta_io.merge(_frame(spark, [(2, "B", [0.5]), (3, "c", None)]), path, ["k"]) == 1
    # the superseded file of version 0 is still on disk, but must not be read
    assert len(list((tmp_path / "t").glob("*.parquet"))) > len(DeltaTable(path).file_uris())
    got = {r.k: (r.v, r.vec) for r in delta_io.read(spark, path).collect()}
    assert got == {1: ("a", [1.0]), 2: ("B", [0.5]), 3: ("c", None)}
    assert sorted(DeltaTable(path).to_pandas()["v"]) == ["B", "a", "c"]
    assert not (tmp_path / "_staging").exists() or not any((tmp_path / "_staging").iterdir())


def test_predicate_overwrite_and_empty_table(spark, tmp_path):
    path = str(tmp_path / "t")
    delta_io.write(_frame(spark, [(1, "a", [1.0]), (2, "b", [2.0])]), path)
    delta_io.write(_frame(spark, [(2, "z", [9.0])]), path, predicate="k = 2")
    assert sorted((r.k, r.v) for r in delta_io.read(spark, path).collect()) == [(1, "a"), (2, "z")]
    empty = str(tmp_path / "e")
    delta_io.write(_frame(spark, []), empty)
    back = delta_io.read(spark, empty)
    assert back.count() == 0 and back.columns == ["k", "v", "vec", "ts"]

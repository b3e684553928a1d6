"""Benchmarks of the Spark jobs (light module: heavy imports happen inside each function)."""
from __future__ import annotations

import time

BENCHMARKS = {"delta-write": "spark_jobs.benchmarks:delta_write"}


def delta_write() -> dict:
    """Rows/s writing the interactions table: delta_io (Spark stages Parquet, delta-rs streams it
    into one commit) against a driver-side pandas -> deltalake write of the same rows."""
    import tempfile

    from deltalake import DeltaTable, write_deltalake

    from mminterest.config import get_config
    from spark_jobs import delta_io
    from spark_jobs.session import get_spark

    cfg = get_config()
    spark = get_spark("mmi-bench-delta", cfg)
    source = delta_io.read(spark, cfg.table("interactions")).persist()
    rows = source.count()
    pdf = source.toPandas()
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        delta_io.write(source, f"{tmp}/spark")
        spark_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        write_deltalake(f"{tmp}/pandas", pdf, mode="overwrite")
        pandas_s = time.perf_counter() - t0
        assert len(DeltaTable(f"{tmp}/spark").to_pandas()) == rows
    return {"rows": rows, "delta_io_rows_per_s": round(rows / spark_s),
            "pandas_deltalake_rows_per_s": round(rows / pandas_s),
            "ratio_delta_io_over_pandas": round(pandas_s / spark_s, 3)}

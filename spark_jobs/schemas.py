"""Spark schemas of the Delta tables, derived from the one Arrow source (mminterest/schemas.py)."""

from __future__ import annotations

from pyspark.sql.pandas.types import from_arrow_schema
from pyspark.sql.types import StructType

from mminterest import schemas


def spark_schema(name: str, columns: list[str] | None = None) -> StructType:
    """The Spark StructType of table `name` (only `columns` when given); timestamps are UTC instants."""
    return from_arrow_schema(schemas.schema(name, columns), prefer_timestamp_ntz=False)


def ddl(name: str, columns: list[str] | None = None) -> str:
    """The same as a DDL string ("item_id bigint, ..."), as mapInPandas and CAST accept it."""
    return ", ".join(f"{f.name} {f.dataType.simpleString()}" for f in spark_schema(name, columns))

"""Dataset adapters: map one dataset's files onto the canonical raw schema.

An adapter returns three Spark DataFrames with canonical column names, values already parsed
with `try_cast` (NULL where a value does not parse) and `_raw`, the JSON of the original fields,
so that nothing is lost when a row is quarantined:

- interactions: user_id long, item_id long, event_ts timestamp, rating double, _raw
- items:        item_id long, title string, text string, category string, _raw
- images:       item_id long, image_path string (absolute), _raw

`catalogue_files` names the files items and images are read from, `interaction_files` those of the
events: while none of them changes (size, mtime), a windowed ingest takes the catalogue as the
`items` table holds it, and only the events since the last window are candidates.

Validation, labels and Delta writes are generic (spark_jobs.ingest); a new dataset needs only a
new adapter registered in ADAPTERS.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

from pyspark.sql import DataFrame, SparkSession

from mminterest.config import Config


class DatasetAdapter(Protocol):
    def interactions(self, spark: SparkSession, cfg: Config) -> DataFrame: ...
    def items(self, spark: SparkSession, cfg: Config) -> DataFrame: ...
    def images(self, spark: SparkSession, cfg: Config) -> DataFrame: ...
    def catalogue_files(self, cfg: Config) -> list[Path]: ...
    def interaction_files(self, cfg: Config) -> list[Path]: ...


def get_adapter(name: str) -> DatasetAdapter:
    from spark_jobs.adapters.movielens import MovieLensAdapter

    adapters = {"movielens": MovieLensAdapter}
    if name not in adapters:
        raise ValueError(f"unknown dataset adapter {name!r}; known: {sorted(adapters)}")
    return adapters[name]()

"""MovieLens ml-latest-small (+ posters_index.csv) onto the canonical raw schema."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql.types import StringType

from mminterest import schemas
from mminterest.config import Config


# pyspark's stub lacks the type-hinted (no functionType) overload of pandas_udf
@F.pandas_udf(StringType())  # type: ignore[call-overload]
def normalised_category(genres: pd.Series) -> pd.Series:
    """The one category normaliser (mminterest.schemas.category) over a genres column."""
    return genres.map(schemas.category)


def _csv(spark: SparkSession, path) -> DataFrame:
    """Every column as a string, so a malformed value reaches validation instead of vanishing."""
    spark.catalog.refreshByPath(
        str(path)
    )  # the file may have changed since this session last read it
    df = (
        spark.read.option("header", True)
        .option("quote", '"')
        .option("escape", '"')
        .option("mode", "PERMISSIVE")
        .option("encoding", "UTF-8")
        .csv(str(path))
    )
    return df.withColumn("_raw", F.to_json(F.struct(*df.columns)))


def _long(col: str):
    return F.col(col).try_cast("long")


class MovieLensAdapter:
    def interactions(self, spark: SparkSession, cfg: Config) -> DataFrame:
        raw = _csv(spark, cfg.dataset_dir / "ratings.csv")
        return raw.select(
            _long("userId").alias("user_id"),
            _long("movieId").alias("item_id"),
            F.timestamp_seconds(_long("timestamp")).alias("event_ts"),
            F.col("rating").try_cast("double").alias("rating"),
            "_raw",
        )

    def items(self, spark: SparkSession, cfg: Config) -> DataFrame:
        raw = _csv(spark, cfg.dataset_dir / "movies.csv")
        genres = F.coalesce(F.col("genres"), F.lit(""))
        return raw.select(
            _long("movieId").alias("item_id"),
            F.col("title"),
            F.concat_ws(". ", F.col("title"), F.regexp_replace(genres, r"\|", ", ")).alias("text"),
            normalised_category(F.col("genres")).alias("category"),
            "_raw",
        )

    def catalogue_files(self, cfg: Config) -> list[Path]:
        return [cfg.dataset_dir / "movies.csv", cfg.dataset_dir / "posters_index.csv"]

    def interaction_files(self, cfg: Config) -> list[Path]:
        return [cfg.dataset_dir / "ratings.csv"]

    def images(self, spark: SparkSession, cfg: Config) -> DataFrame:
        raw = _csv(spark, cfg.dataset_dir / "posters_index.csv")
        root = str(cfg.dataset_dir).rstrip("/") + "/"
        return raw.select(
            _long("movieId").alias("item_id"),
            F.when(
                F.col("poster_path").isNotNull(), F.concat(F.lit(root), F.col("poster_path"))
            ).alias("image_path"),
            "_raw",
        )

"""Partitions are sized from the data (issue 16): at the same configuration, ten times the rows
give more tasks; `spark_shuffle_partitions` > 0 fixes their number. The interest job sizes its
tasks by its wide output rows, not by its narrow input."""

from __future__ import annotations

from contextlib import contextmanager

import pandas as pd
from pyspark.sql import functions as F

from mminterest.config import load_config
from spark_jobs import behaviour, interest_features
from spark_jobs.session import partition_conf
from tests.conftest import REAL_DATASET

ROWS = 5_000  # the first rows of the real ratings; the 10x slice is them with user ids offset


@contextmanager
def sized(spark, partitions: int, advisory: int = 64 << 10):
    """The session's partition settings of a config with `spark_shuffle_partitions=partitions`,
    at a small advisory size (a small slice stands for a large table), restored afterwards."""
    conf = {
        **partition_conf(load_config(spark_shuffle_partitions=partitions)),
        "spark.sql.adaptive.advisoryPartitionSizeInBytes": str(advisory),
        "spark.sql.adaptive.coalescePartitions.minPartitionSize": str(advisory // 4),
    }
    before = {k: spark.conf.get(k, None) for k in conf}
    for k, v in conf.items():
        spark.conf.set(k, v)
    try:
        yield
    finally:
        for k, v in before.items():
            spark.conf.unset(k) if v is None else spark.conf.set(k, v)


def _interactions(spark, copies: int):
    ratings = pd.read_csv(REAL_DATASET / "ratings.csv", nrows=ROWS)
    frame = pd.concat(
        [ratings.assign(userId=ratings.userId + k * 1_000_000) for k in range(copies)]
    )
    pdf = pd.DataFrame(
        {
            "user_id": frame.userId,
            "item_id": frame.movieId,
            "event_ts": pd.to_datetime(frame.timestamp, unit="s", utc=True),
            "label": (frame.rating >= 4.0).astype("int32"),
        }
    )
    return spark.createDataFrame(pdf, "user_id long, item_id long, event_ts timestamp, label int")


def _tasks(frame) -> int:
    """Partitions the frame's last shuffle stage ran with (after adaptive coalescing)."""
    return frame.select(F.spark_partition_id().alias("p")).distinct().count()


def test_ten_times_the_rows_give_more_tasks_at_the_same_configuration(spark):
    small, large = _interactions(spark, 1), _interactions(spark, 10)
    with sized(spark, 0):
        tasks_1x, tasks_10x = (
            _tasks(behaviour.states(small, 64)),
            _tasks(behaviour.states(large, 64)),
        )
    assert tasks_10x >= 4 * tasks_1x, (tasks_1x, tasks_10x)
    with sized(spark, 3):  # the override: that many, whatever the size
        assert _tasks(behaviour.states(large, 64)) == 3


def test_interest_tasks_follow_its_output_rows(spark):
    def tasks(interactions, partitions: int = 0) -> int:
        cfg = load_config(spark_shuffle_partitions=partitions)
        rows = interactions.count()
        history = interest_features.with_history(
            interactions,
            behaviour.states(interactions, cfg.seq_len),
            interest_features.partitions(spark, cfg, rows),
        )
        return _tasks(history)

    small, large = _interactions(spark, 1), _interactions(spark, 10)
    with sized(spark, 0, advisory=1 << 20):  # 1 MB of output rows (~1.5 KB each) per task
        tasks_1x, tasks_10x = tasks(small), tasks(large)
    assert tasks_1x >= 5 and tasks_10x >= 8 * tasks_1x, (tasks_1x, tasks_10x)
    assert tasks(large, partitions=3) == 3  # the override

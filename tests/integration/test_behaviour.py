"""user_behaviour on a slice of the real interactions plus crafted rows (same-second ties, late
arrivals): matches a brute-force pandas reference, is point-in-time correct under Feast's as-of
join, is gated, and a re-run leaves the same table."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from deltalake import DeltaTable
from pyspark.sql import functions as F

from mminterest.config import load_config
from spark_jobs import behaviour, delta_io
from spark_jobs.adapters import get_adapter
from spark_jobs.feature_checks import FeatureCheckError
from tests.conftest import REAL_DATASET

USERS = 40  # real users 1..USERS
TIE_USER = 990_001  # crafted user
T0 = pd.Timestamp("2010-01-01 00:00:00", tz="UTC")
S = pd.Timedelta(seconds=1)
EPOCH = pd.Timestamp(0, tz="UTC")
# (user, item, ts, rating): three positives and a negative in the same second, then more
FIRST_BATCH = [
    (TIE_USER, 10, T0, 5.0),
    (TIE_USER, 20, T0, 4.0),
    (TIE_USER, 30, T0, 4.5),
    (TIE_USER, 40, T0, 2.0),
    (TIE_USER, 50, T0 + S, 4.0),
    (TIE_USER, 60, T0 + S, 1.0),
    (TIE_USER, 70, T0 - 5 * S, 4.0),
]
# ingested later, but earlier in time than events already in the table
LATE_BATCH = [
    (TIE_USER, 80, T0 - 10 * S, 5.0),
    (2, 1, pd.Timestamp("1996-06-20 08:00:00", tz="UTC"), 5.0),
]


def _rows(spark, rows):
    pdf = pd.DataFrame(rows, columns=["user_id", "item_id", "event_ts", "rating"])
    pdf["label"] = (pdf["rating"] >= 4.0).astype("int32")
    return spark.createDataFrame(
        pdf, "user_id long, item_id long, event_ts timestamp, rating double, label int"
    )


def write_interactions(spark, cfg) -> None:
    """Interactions of cfg: the real users 1..USERS (read by the dataset's adapter) and
    FIRST_BATCH, then LATE_BATCH appended in a later commit."""
    real = (
        get_adapter(cfg.dataset)
        .interactions(spark, cfg)
        .where(f"user_id <= {USERS}")
        .select(
            "user_id",
            "item_id",
            "event_ts",
            "rating",
            (F.col("rating") >= cfg.positive_rating).cast("int").alias("label"),
        )
    )
    delta_io.write(real.unionByName(_rows(spark, FIRST_BATCH)), cfg.table("interactions"))
    delta_io.write(_rows(spark, LATE_BATCH), cfg.table("interactions"), mode="append")


def _micros(ts) -> np.ndarray:
    return np.asarray((pd.to_datetime(ts, utc=True) - EPOCH) // pd.Timedelta(microseconds=1))


class Positives:
    """Brute-force reference: each user's positives sorted by (event_ts, item_id)."""

    def __init__(self, interactions: pd.DataFrame):
        p = interactions[interactions.label == 1].sort_values(["user_id", "event_ts", "item_id"])
        self.by_user = {
            u: (_micros(g.event_ts), g.item_id.to_numpy()) for u, g in p.groupby("user_id")
        }

    def before(self, user, ts, seq_len: int, inclusive: bool = False) -> tuple[list, list]:
        """(item ids, epoch seconds) of the last `seq_len` positives before `ts`, most recent first."""
        stamps, items = self.by_user.get(user, (np.zeros(0, np.int64), np.zeros(0, np.int64)))
        k = np.searchsorted(stamps, _micros([ts])[0], side="right" if inclusive else "left")
        return items[:k][::-1][:seq_len].tolist(), (stamps[:k][::-1][:seq_len] // 10**6).tolist()


def as_of(rows: pd.DataFrame, states: pd.DataFrame) -> pd.DataFrame:
    """Feast's point-in-time join: per row, the latest state with state ts <= row ts."""
    rows = rows.sort_values("event_ts").reset_index(drop=True)
    states = states.rename(columns={"event_ts": "state_ts"}).sort_values("state_ts")
    return pd.merge_asof(
        rows,
        states,
        left_on="event_ts",
        right_on="state_ts",
        by="user_id",
        allow_exact_matches=True,
        direction="backward",
    )


@pytest.fixture(scope="session")
def behaviour_home(spark, tmp_path_factory):
    """(cfg whose home holds interactions and user_behaviour after one run, run summary);
    shared with the interest-feature tests."""
    cfg = load_config(
        home=tmp_path_factory.mktemp("features") / "mmi",
        dataset_dir=REAL_DATASET,
        spark_master="local[2]",
        spark_shuffle_partitions=4,
    )
    write_interactions(spark, cfg)
    return cfg, behaviour.run(cfg, spark)


@pytest.fixture(scope="module")
def built(behaviour_home):
    """(cfg, interactions, user_behaviour after one run, summary)."""
    cfg, summary = behaviour_home
    interactions = DeltaTable(cfg.table("interactions")).to_pandas()
    return cfg, interactions, DeltaTable(cfg.table("user_behaviour")).to_pandas(), summary


def test_states_match_brute_force(built):
    cfg, interactions, table, summary = built
    positives = interactions[interactions.label == 1]
    keys = positives[["user_id", "event_ts"]].drop_duplicates()
    assert summary.rows_in == len(interactions) and summary.rows_out == len(keys) == len(table)
    table = table.set_index(["user_id", "event_ts"])
    reference = Positives(interactions)
    for user, ts in keys.itertuples(index=False):
        items, seconds = reference.before(user, ts, cfg.seq_len, inclusive=True)
        row = table.loc[(user, ts + pd.Timedelta(microseconds=1))]
        assert list(row.hist_item_ids) == items and list(row.hist_ts) == seconds, (user, ts)
        assert row.hist_len == len(items) <= cfg.seq_len
    assert (table.hist_len == cfg.seq_len).any()  # truncation to T is exercised


def test_point_in_time_with_ties_and_late_events(built):
    cfg, interactions, table, _ = built
    joined = as_of(interactions, table)
    reference = Positives(interactions)
    seen = {}
    for row in joined.itertuples():
        hist = [] if pd.isna(row.state_ts) else list(row.hist_item_ids)
        assert hist == reference.before(row.user_id, row.event_ts, cfg.seq_len)[0]
        if hist:
            assert max(row.hist_ts) < row.event_ts.timestamp()
        seen[(row.user_id, row.item_id)] = hist
    assert seen[(TIE_USER, 70)] == [80]  # the late event, earlier in time, is seen
    for item in (10, 20, 30, 40):  # same-second events never see each other
        assert seen[(TIE_USER, item)] == [70, 80]
    assert seen[(TIE_USER, 50)] == seen[(TIE_USER, 60)] == [30, 20, 10, 70, 80]
    assert seen[(TIE_USER, 80)] == []
    second_of_user2 = joined[joined.user_id == 2].sort_values("event_ts").iloc[1]
    assert seen[(2, second_of_user2.item_id)] == [1]  # the late event of a real user


def test_rerun_leaves_same_table(built, spark):
    cfg, _, before, _ = built
    version = DeltaTable(cfg.table("user_behaviour")).version()
    behaviour.run(cfg, spark)
    after = DeltaTable(cfg.table("user_behaviour"))
    assert after.version() == version + 1  # one commit per run
    key = ["user_id", "event_ts"]
    pd.testing.assert_frame_equal(
        before.sort_values(key).reset_index(drop=True),
        after.to_pandas().sort_values(key).reset_index(drop=True),
    )


def test_gate_refuses_a_state_that_sees_its_own_time(built, spark, tmp_path):
    cfg, _, _, _ = built
    cfg = load_config(home=tmp_path / "mmi")
    bad = spark.createDataFrame(
        [(1, T0.to_pydatetime(), [5, 6], [int(T0.timestamp()), int(T0.timestamp()) - 9], 2)],
        "user_id long, event_ts timestamp, hist_item_ids array<long>, hist_ts array<long>, hist_len int",
    )
    with pytest.raises(FeatureCheckError, match="history item at or after") as err:
        behaviour.publish(bad, cfg)
    assert "features_user_behaviour.json" in str(err.value)
    assert not DeltaTable.is_deltatable(cfg.table("user_behaviour"))

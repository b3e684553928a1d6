"""Online/offline parity through Feast's SQLite and Redis online stores, and `mmi features ...`,
against the tables of the real Spark jobs (behaviour, interest_features) on a small synthetic input;
and mminterest/synthetic_tables.py, the pandas stand-in other tests use, equal to those jobs' output."""

import shutil

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
from deltalake import DeltaTable, write_deltalake

from feature_repo import repo
from feature_repo.store_config import open_store
from infra.redis_server import RedisServer
from mminterest import cli, schemas, synthetic_tables
from mminterest.config import get_config, load_config
from serving import parity
from spark_jobs import behaviour, delta_io, interest_features

T0 = pd.Timestamp("2021-03-01", tz="UTC")
DIMS = {"img": 12, "txt": 10, "fused": 8}
SMALL = {"seq_len": 16, "time_slices": 4, "sim_bins": 8}
KEYS = {
    "user_behaviour": ["user_id", "event_ts"],
    "interest_features": ["user_id", "item_id", "event_ts"],
}


@pytest.fixture(scope="module")
def homes(spark, tmp_path_factory):
    """(home of the Spark jobs' tables, home of synthetic.py's tables) over the same interactions
    (with ties in one instant) and the same item_embeddings. The jobs' transformations are run
    without their Great Expectations gates (tested with the jobs), which would triple the time."""
    root = tmp_path_factory.mktemp("parity")
    made = load_config(home=root / "synthetic", **SMALL)
    jobs = load_config(
        home=root / "spark", spark_master="local[2]", spark_shuffle_partitions=4, **SMALL
    )
    interactions = synthetic_tables.random_interactions(
        users=8, items=60, rows=400, start=T0, seed=5
    )
    tie = interactions.iloc[0]
    interactions = pd.concat(
        [
            interactions,
            pd.DataFrame(
                {
                    "user_id": [tie.user_id] * 2,
                    "item_id": [61, 62],
                    "event_ts": [tie.event_ts] * 2,
                    "label": [1, 1],
                }
            ),
        ],
        ignore_index=True,
    ).astype({"label": np.int32})
    synthetic_tables.write_tables(made, interactions, DIMS, without_img=range(1, 63, 4))
    write_deltalake(
        jobs.table("interactions"),
        schemas.table(
            "interactions",
            {c: interactions[c] for c in ("user_id", "item_id", "event_ts", "label")},
        ),
    )
    shutil.copytree(made.table("item_embeddings"), jobs.table("item_embeddings"))
    rows = delta_io.read(spark, jobs.table("interactions"))
    delta_io.write(behaviour.states(rows, jobs.seq_len), jobs.table("user_behaviour"))
    delta_io.write(interest_features.compute(spark, jobs), jobs.table("interest_features"))
    return jobs.home, made.home


def _sorted(home, name) -> pd.DataFrame:
    frame = DeltaTable(load_config(home=home).table(name)).to_pandas()
    return frame.sort_values(KEYS[name]).reset_index(drop=True)


@pytest.mark.parametrize("name", sorted(KEYS))
def test_synthetic_tables_equal_the_spark_jobs_output(homes, name):
    spark_rows, made = (_sorted(home, name) for home in homes)
    assert len(spark_rows) == len(made) > 100 and list(made.columns) == list(spark_rows.columns)
    for column in made.columns:
        for got, want in zip(spark_rows[column], made[column]):
            np.testing.assert_array_equal(np.asarray(got), np.asarray(want), err_msg=column)


@pytest.fixture(scope="module")
def redis_server():
    with RedisServer() as server:
        yield server


@pytest.fixture
def redis_url(redis_server):
    """The server's address, emptied for this test."""
    redis_server.client().flushall()
    return redis_server.url


def _build(homes, tmp_path, **settings):
    """A config over a copy of the Spark jobs' tables, applied and materialised."""
    cfg = load_config(home=tmp_path / "mmi", **SMALL, **settings)
    shutil.copytree(homes[0] / "delta", cfg.home / "delta")
    store = open_store(cfg)
    repo.apply(store)
    repo.materialize(store)
    return cfg, store


@pytest.mark.parametrize("online_store", ["sqlite", "redis"])
def test_online_features_match_the_offline_recomputation(homes, tmp_path, request, online_store):
    url = request.getfixturevalue("redis_url") if online_store == "redis" else "127.0.0.1:6379"
    cfg, store = _build(homes, tmp_path, online_store=online_store, redis_url=url)
    report = parity.check(cfg, sample=400, store=store)
    assert report.rows == 400 and report.users == 8
    assert report.max_abs_diff <= 1e-5, report.per_feature
    assert report.not_found_online == 0
    assert report.stored_rows > 0 and report.stored_max_abs_diff <= 1e-5  # vs the Spark job's rows


@pytest.mark.parametrize("online_store", ["sqlite", "redis"])
def test_parity_catches_a_stale_online_store_until_rematerialised(
    homes, tmp_path, request, online_store
):
    url = request.getfixturevalue("redis_url") if online_store == "redis" else "127.0.0.1:6379"
    cfg, store = _build(homes, tmp_path, online_store=online_store, redis_url=url)
    path = cfg.table("item_embeddings")
    table = DeltaTable(path)
    moved = table.to_pyarrow_table()
    txt = moved["txt"].to_pylist()
    moved = moved.set_column(
        moved.schema.get_field_index("txt"),
        "txt",
        pa.array(txt[1:] + txt[:1], pa.list_(pa.float32())),
    )
    (
        table.merge(moved, "t.item_id = s.item_id", source_alias="s", target_alias="t")
        .when_matched_update_all()
        .execute()
    )  # re-embedded: same valid_from_ts, new vectors
    assert parity.check(cfg, sample=100, store=store).max_abs_diff > 1e-3
    repo.materialize(store)  # incremental: the corrected rows are not newer than the last run
    assert parity.check(cfg, sample=100, store=store).max_abs_diff > 1e-3
    repo.materialize(store, full=True)
    assert parity.check(cfg, sample=100, store=store).max_abs_diff <= 1e-5


def test_mmi_features_commands(homes, tmp_path, monkeypatch, capsys):
    cfg = load_config(home=tmp_path / "mmi", **SMALL)
    shutil.copytree(homes[0] / "delta", cfg.home / "delta")
    monkeypatch.setenv("MMI_HOME", str(cfg.home))
    for key, value in SMALL.items():
        monkeypatch.setenv(f"MMI_{key.upper()}", str(value))
    get_config.cache_clear()

    def run(*args):
        assert cli.main(["features", *args]) == 0
        return capsys.readouterr().out

    try:
        assert any(line.startswith("apply: 7 objects") for line in run("apply").splitlines())
        assert "user_behaviour (full)" in run("materialize")
        assert "user_behaviour (since" in run("materialize")
        assert "(full)" in run("materialize", "--full")
        line = run("parity", "--sample", "50").strip().splitlines()[-1]
        assert line.startswith("parity: rows 50") and "max |online - offline| 0 " in line
    finally:
        get_config.cache_clear()

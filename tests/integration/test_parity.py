"""Online/offline parity through Feast's SQLite and Redis online stores, and `mmi features ...`."""
import os
import signal
import socket
import subprocess
import time

import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pytest
from deltalake import DeltaTable

from feature_repo import parity, repo, synthetic
from feature_repo.store_config import open_store
from mminterest import cli
from mminterest.config import get_config, load_config

T0 = pd.Timestamp("2021-03-01", tz="UTC")
DIMS = {"img": 12, "txt": 10, "fused": 8}
SMALL = {"seq_len": 16, "time_slices": 4, "sim_bins": 8}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def redis_server():
    """A throw-away redis-server on a free port (no persistence), stopped by its pid."""
    import redis

    port = _free_port()
    proc = subprocess.Popen(["redis-server", "--port", str(port), "--bind", "127.0.0.1",
                             "--save", "", "--appendonly", "no"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        client = redis.Redis(host="127.0.0.1", port=port)
        for _ in range(100):
            try:
                client.ping()
                break
            except redis.ConnectionError:
                time.sleep(0.05)
        yield client
    finally:
        os.kill(proc.pid, signal.SIGTERM)
        proc.wait(timeout=10)


@pytest.fixture
def redis_url(redis_server):
    """The server's address, emptied for this test."""
    redis_server.flushall()
    kwargs = redis_server.connection_pool.connection_kwargs
    return f"{kwargs['host']}:{kwargs['port']}"


def _build(cfg):
    interactions = synthetic.random_interactions(users=8, items=60, rows=400, start=T0, seed=5)
    synthetic.write_tables(cfg, interactions, DIMS, without_img=range(1, 61, 4))
    store = open_store(cfg)
    repo.apply(store)
    repo.materialize(store)
    return store


@pytest.mark.parametrize("online_store", ["sqlite", "redis"])
def test_online_features_match_the_offline_recomputation(tmp_path, request, online_store):
    url = request.getfixturevalue("redis_url") if online_store == "redis" else "127.0.0.1:6379"
    cfg = load_config(home=tmp_path / "mmi", online_store=online_store, redis_url=url, **SMALL)
    store = _build(cfg)
    report = parity.check(cfg, sample=400, store=store)
    assert report.rows == 400 and report.users == 8
    assert report.max_abs_diff <= 1e-5, report.per_feature
    assert report.not_found_online == 0
    assert report.stored_rows > 0 and report.stored_max_abs_diff <= 1e-5


@pytest.mark.parametrize("online_store", ["sqlite", "redis"])
def test_parity_catches_a_stale_online_store_until_rematerialised(tmp_path, request, online_store):
    url = request.getfixturevalue("redis_url") if online_store == "redis" else "127.0.0.1:6379"
    cfg = load_config(home=tmp_path / "mmi", online_store=online_store, redis_url=url, **SMALL)
    store = _build(cfg)
    path = cfg.table("item_embeddings")
    table = DeltaTable(path)
    moved = table.to_pyarrow_table()
    txt = moved["txt"].to_pylist()
    moved = moved.set_column(moved.schema.get_field_index("txt"), "txt",
                             pa.array(txt[1:] + txt[:1], pa.list_(pa.float32())))
    (table.merge(moved, "t.item_id = s.item_id", source_alias="s", target_alias="t")
     .when_matched_update_all().execute())  # re-embedded: same valid_from_ts, new vectors
    assert parity.check(cfg, sample=100, store=store).max_abs_diff > 1e-3
    repo.materialize(store)  # incremental: the corrected rows are not newer than the last run
    assert parity.check(cfg, sample=100, store=store).max_abs_diff > 1e-3
    repo.materialize(store, full=True)
    assert parity.check(cfg, sample=100, store=store).max_abs_diff <= 1e-5


def test_mmi_features_commands(tmp_path, monkeypatch, capsys):
    cfg = load_config(home=tmp_path / "mmi", **SMALL)
    synthetic.write_tables(cfg, synthetic.random_interactions(5, 40, 150, T0, seed=2), DIMS)
    monkeypatch.setenv("MMI_HOME", str(cfg.home))
    for key, value in SMALL.items():
        monkeypatch.setenv(f"MMI_{key.upper()}", str(value))
    get_config.cache_clear()

    def run(*args):
        assert cli.main(["features", *args]) == 0
        return capsys.readouterr().out.strip().splitlines()[-1]

    try:
        assert run("apply").startswith("apply: ")
        assert "user_behaviour (full)" in run("materialize")
        assert "user_behaviour (since" in run("materialize")
        assert "(full)" in run("materialize", "--full")
        line = run("parity", "--sample", "50")
        assert line.startswith("parity: rows 50") and "max |online - offline| 0 " in line
    finally:
        get_config.cache_clear()

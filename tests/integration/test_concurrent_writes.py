"""No write is lost under concurrency: Delta commits that conflict are retried on the newest snapshot.

Real delta-rs tables written by several processes, the real app (POST /items) over the SQLite online
store, and the real Spark embedding job committing to the same tables at the same time. With one
commit attempt (the old behaviour) concurrent writers lose: the tests show it, and that a refused
request is a 503 that leaves nothing behind.
"""

from __future__ import annotations

import multiprocessing
import threading
import time
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor

import pandas as pd
import pyarrow as pa
import pytest
from fastapi.testclient import TestClient

from feature_repo import repo
from feature_repo.store_config import open_store
from mminterest import schemas, tables
from mminterest.config import load_config
from serving.app import create_app
from serving.online import OnlineFeatures
from tests.conftest import REAL_DATASET, tiny_encoder

WRITERS = 16  # simultaneous POST /items
PROCESSES = 8  # simultaneous writer processes on one table
AUTH = {"authorization": "Bearer s3cret"}


def _upsert(path: str, k: int, attempts: int, start_at: float) -> str | None:
    """One writer process: upsert row k at `start_at`; the conflict message, or None."""
    time.sleep(max(0.0, start_at - time.time()))
    try:
        tables.merge_arrow(
            pa.table({"item_id": [k], "v": [float(k)]}), path, ["item_id"], attempts=attempts
        )
    except tables.CommitConflict as err:
        return str(err)
    return None


def _merge_at_once(path: str, attempts: int) -> list[str | None]:
    """PROCESSES processes upserting one distinct row each into `path`, released together."""
    tables.merge_arrow(pa.table({"item_id": [-1], "v": [0.0]}), path, ["item_id"])
    with ProcessPoolExecutor(PROCESSES, mp_context=multiprocessing.get_context("spawn")) as pool:
        list(pool.map(time.sleep, [0] * PROCESSES))  # workers started
        start_at = time.time() + 3.0
        return list(
            pool.map(
                _upsert,
                [path] * PROCESSES,
                range(PROCESSES),
                [attempts] * PROCESSES,
                [start_at] * PROCESSES,
            )
        )


def test_concurrent_upserts_are_all_committed_exactly_once(tmp_path):
    path = str(tmp_path / "t")
    assert _merge_at_once(path, attempts=12) == [None] * PROCESSES
    ids = tables.read(path)["item_id"]
    assert sorted(ids) == [-1, *range(PROCESSES)] and ids.is_unique


def test_without_retries_concurrent_upserts_conflict_and_the_loser_leaves_nothing(tmp_path):
    path = str(tmp_path / "t")
    errors = _merge_at_once(path, attempts=1)
    lost = [k for k, e in enumerate(errors) if e is not None]
    assert lost, f"{PROCESSES} simultaneous commits without a retry should conflict"
    assert "conflicted" in errors[lost[0]]
    assert set(tables.read(path)["item_id"]) == {-1} | (set(range(PROCESSES)) - set(lost))


@pytest.fixture
def service(tmp_path, spark, request):
    """A home with 300 real catalogue items to embed, a tiny promoted encoder, Feast applied."""
    attempts = request.param
    cfg = load_config(
        home=tmp_path / "mmi",
        seq_len=8,
        time_slices=2,
        sim_bins=4,
        serve_token="s3cret",
        spark_master="local[2]",
        delta_commit_attempts=attempts,
    )
    tiny_encoder().save(cfg.encoder_dir)
    movies = pd.read_csv(REAL_DATASET / "movies.csv").head(300)
    items = schemas.table(
        "items",
        {  # no image, never seen: null
            "item_id": movies["movieId"],
            "title": movies["title"],
            "text": movies["title"] + ". " + movies["genres"].str.replace("|", ", "),
            "category": movies["genres"].map(schemas.category),
        },
    )
    tables.merge_arrow(items, cfg.table("items"), ["item_id"])
    store = open_store(cfg)
    repo.apply(store)
    with TestClient(create_app(cfg)) as client:
        yield cfg, store, client, movies["movieId"].tolist()


def _post(client, body: dict) -> tuple[int, str]:
    got = client.post("/items", json=body, headers=AUTH)
    return got.status_code, got.text


def _post_waves(
    client, job: threading.Thread, first_id: int = 900_000
) -> dict[int, tuple[int, str]]:
    """Waves of WRITERS simultaneous POST /items (distinct new ids) until the job has finished
    (at least one wave, at most 40); {item_id: (HTTP status, body)}."""
    statuses: dict[int, tuple[int, str]] = {}
    with ThreadPoolExecutor(WRITERS) as pool:
        for wave in range(40):
            ids = [first_id + wave * WRITERS + k for k in range(WRITERS)]
            posts = [
                {"item_id": i, "text": f"A new film number {i}", "category": "Drama"} for i in ids
            ]
            codes = pool.map(lambda body: _post(client, body), posts)
            statuses.update(zip(ids, codes))
            if not job.is_alive():
                break
    return statuses


def _present(cfg, store, ids: list[int]) -> dict[str, pd.Series]:
    """How often each id is in items, in item_embeddings, and whether it is online."""
    online = OnlineFeatures(store, cfg.seq_len, cfg.time_slices, cfg.sim_bins, item_cache_s=0)
    counts = {
        name: tables.read(cfg.table(name), ["item_id"])["item_id"]
        .value_counts()
        .reindex(ids, fill_value=0)
        for name in ("items", "item_embeddings")
    }
    counts["online"] = pd.Series(online.vectors(ids).present["fused"].astype(int), index=ids)
    return counts


@pytest.mark.parametrize("service", [8], indirect=True)
def test_items_posted_while_the_embedding_job_commits_are_each_stored_once(service, spark):
    from spark_jobs import embed_items

    cfg, store, client, catalogue = service
    job = threading.Thread(target=embed_items.run, args=(cfg, spark))
    job.start()
    statuses = _post_waves(client, job)
    job.join()
    assert {code for code, _ in statuses.values()} == {200}, [
        v for v in statuses.values() if v[0] != 200
    ][:3]
    posted = sorted(statuses)
    for where, count in _present(cfg, store, posted).items():
        assert (count == 1).all(), f"{where}: {count[count != 1].to_dict()}"
    embedded = tables.read(cfg.table("item_embeddings"), ["item_id"])["item_id"]
    assert set(catalogue) <= set(embedded) and embedded.is_unique  # the job's rows landed too


def _backfill(path: str, seconds: float) -> None:
    """Another process rewriting catalogue rows of `path` in a loop (a backfill)."""
    rows = tables.read(path).head(20)
    end = time.time() + seconds
    while time.time() < end:
        tables.merge_arrow(
            pa.Table.from_pandas(rows, preserve_index=False).cast(tables.schema(path)),
            path,
            ["item_id"],
            attempts=50,
        )


@pytest.mark.parametrize("service", [1], indirect=True)
def test_without_retries_a_conflicting_request_is_a_503_and_leaves_nothing(service):
    cfg, store, client, _ = service
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        backfill = pool.submit(_backfill, cfg.table("items"), 12.0)
        time.sleep(3.0)  # the backfill process is writing
        statuses = _post_waves(client, threading.Thread())  # one wave...
        while not backfill.done():  # ... then more while the backfill lasts
            statuses.update(
                _post_waves(client, threading.Thread(), first_id=900_000 + len(statuses))
            )
        backfill.result()
    refused = [i for i, (code, _) in statuses.items() if code != 200]
    assert refused and {statuses[i][0] for i in refused} == {503}, [statuses[i] for i in refused][
        :3
    ]
    assert all("conflicted" in statuses[i][1] for i in refused)
    accepted = [i for i, (code, _) in statuses.items() if code == 200]
    for where, count in _present(cfg, store, refused).items():
        assert (count == 0).all(), f"half an item in {where}"
    for where, count in _present(cfg, store, accepted).items():
        assert (count == 1).all(), where

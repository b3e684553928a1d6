"""Airflow as users run it: `infra/airflow_local.py` starts the scheduler, the DAG processor and the
API server (UI) on a free loopback port with this project's DAGs, pools and connection; a run of
mm_new_items triggered through the REST API (JWT from POST /auth/token) embeds the ingested items
and succeeds; `down` stops every process of it by pid, task processes included.

Cheap on purpose: the `items` table holds a slice of the real movies (written in the contract
schema, as ingest writes it, without a Spark session here), the encoder is the tiny one, and the
scheduler creates no scheduled run (use_job_schedule off), so only the triggered run runs.
"""

from __future__ import annotations

import urllib.request
from pathlib import Path

import pandas as pd
import psutil
import pytest
from deltalake import DeltaTable, write_deltalake

from infra.airflow_local import AirflowLocalError, LocalAirflow
from mminterest import schemas
from mminterest.config import load_config
from tests.conftest import tiny_encoder
from tests.integration.test_dags import _slice

DAG = "mm_new_items"
N_RATINGS, N_POSTERS = 40, 5  # the movies of 40 real ratings (39), 5 of them with a poster


def _write_items(table: str, dataset: Path) -> None:
    """The slice's movies as ingest's `items` table (movielens adapter: text "title. genres")."""
    movies = pd.read_csv(dataset / "movies.csv")
    posters = pd.read_csv(dataset / "posters_index.csv").set_index("movieId")["poster_path"]
    write_deltalake(
        table,
        schemas.table(
            "items",
            {
                "item_id": movies["movieId"],
                "title": movies["title"],
                "text": movies["title"] + ". " + movies["genres"].str.replace("|", ", "),
                "category": [schemas.category(g) for g in movies["genres"]],
                "image_path": [
                    str(dataset / posters[i]) if i in posters.index else None
                    for i in movies["movieId"]
                ],
            },
        ),
    )


@pytest.fixture(scope="module")
def airflow(tmp_path_factory):
    root = tmp_path_factory.mktemp("airflow_live")
    dataset = _slice(root / "data", n_ratings=N_RATINGS, n_posters=N_POSTERS)
    cfg = load_config(home=root / "mmi", dataset_dir=dataset)
    _write_items(cfg.table("items"), dataset)
    tiny_encoder().save(cfg.encoder_dir)
    env = {
        "MMI_HOME": str(cfg.home),
        "MMI_DATASET_DIR": str(dataset),
        "MMI_SPARK_MASTER": "local[2]",
        "MMI_SPARK_SHUFFLE_PARTITIONS": "2",
        "MMI_SPARK_DRIVER_MEMORY": "1g",
        "AIRFLOW__SCHEDULER__USE_JOB_SCHEDULE": "False",
    }
    af = LocalAirflow(port=0, env=env).start()
    yield cfg, af, env
    af.stop()


def _ids(cfg, table: str) -> set[int]:
    return set(
        DeltaTable(cfg.table(table)).to_pyarrow_table(columns=["item_id"])["item_id"].to_pylist()
    )


def test_rest_triggered_run_succeeds_and_down_stops_every_process(airflow):
    cfg, af, env = airflow
    with urllib.request.urlopen(f"{af.url}/dags/{DAG}", timeout=30) as page:  # the UI is served
        assert page.status == 200 and b"<html" in page.read().lower()
    with pytest.raises(AirflowLocalError, match="already runs"):
        LocalAirflow(port=0, env=env).start()

    run_id = af.api.trigger(DAG)
    run = af.api.wait(DAG, run_id, timeout=480)  # generous: a loaded machine is many times slower
    logs = cfg.home / "airflow" / "logs" / f"dag_id={DAG}"
    assert run["state"] == "success", f"{run}; task logs under {logs}"
    assert run["run_type"] == "manual"
    assert run["task_states"] == {"embed_new_items": "success", "features_materialize": "success"}
    assert _ids(cfg, "item_embeddings") == _ids(cfg, "items")  # the run embedded every item

    tops = [psutil.Process(e["pid"]) for e in af.status()["procs"].values()]
    procs = tops + [c for p in tops for c in p.children(recursive=True)]
    assert len(tops) == 3 and af.stop() >= 3
    assert not any(p.is_running() and p.status() != psutil.STATUS_ZOMBIE for p in procs)
    assert af.status()["procs"] == {}

"""The Spark jobs on a real standalone cluster (master + 2 workers x 1 core x 1g on 127.0.0.1):
they run there, write the same Delta tables as a local[2] run of the same real-data slice, and the
cluster stops by its own pids with nothing left running.

Each job runs in its own interpreter (`python -m <module>`): a Spark session is cached per process,
so the cluster run and the local run cannot share one.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import pandas as pd
import pytest
from deltalake import DeltaTable

from infra.jobs import run_job
from infra.spark_cluster import SparkCluster
from mminterest.config import load_config
from tests.conftest import REAL_DATASET, tiny_encoder


@dataclass(frozen=True)
class Job:
    module: str
    tables: dict[str, list[str]]  # table -> key columns (sort order for the comparison)
    ignore: tuple[str, ...] = ()  # columns that differ between runs by design (wall-clock times)
    args: tuple[str, ...] = ()  # command-line arguments of the job


# Run in this order on both masters; adding a job is one line.
JOBS = [
    Job(
        "spark_jobs.ingest",
        {
            "interactions": ["user_id", "item_id", "event_ts"],
            "items": ["item_id"],
            "quarantine": ["source", "record_hash"],
        },
    ),
    Job(
        "spark_jobs.embed_items", {"item_embeddings": ["item_id"]}, ignore=("updated_ts",)
    ),  # wall-clock time of the run
    Job("spark_jobs.behaviour", {"user_behaviour": ["user_id", "event_ts"]}),
    Job("spark_jobs.interest_features", {"interest_features": ["user_id", "item_id", "event_ts"]}),
]
N_RATINGS, N_POSTERS = 2000, 30
BAD_RATINGS = ["1,31,9.0,1260759144", "1,99999999,3.0,1260759144"]  # out of range, unknown item
ENV = {"MMI_SPARK_DRIVER_MEMORY": "1g", "MMI_SPARK_SHUFFLE_PARTITIONS": "2"}  # 2 executor cores


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    """Heads of the real CSVs, real posters (linked), two bad ratings (quarantine is compared too)."""
    root = tmp_path_factory.mktemp("data")
    (root / "posters").mkdir()
    ratings = (REAL_DATASET / "ratings.csv").read_text().splitlines()[: N_RATINGS + 1]
    (root / "ratings.csv").write_text("\n".join(ratings + BAD_RATINGS) + "\n")
    ids = {line.split(",")[1] for line in ratings[1:]}
    movies = (REAL_DATASET / "movies.csv").read_bytes().splitlines()
    (root / "movies.csv").write_bytes(
        b"\n".join(  # the rated movies (the rest are never seen)
            movies[:1] + [m for m in movies[1:] if m.split(b",", 1)[0].decode() in ids]
        )
        + b"\n"
    )
    index = (REAL_DATASET / "posters_index.csv").read_text().splitlines()
    index = index[:1] + [line for line in index[1:] if line.split(",", 1)[0] in ids][:N_POSTERS]
    for line in index[1:]:
        path = line.split(",")[-2]
        (root / path).symlink_to(REAL_DATASET / path)
    (root / "posters_index.csv").write_text("\n".join(index) + "\n")
    return root


@pytest.fixture(scope="module")
def runs(dataset, tmp_path_factory):
    """Every job on the cluster, then the cluster stopped; meanwhile every job on local[2] (the
    cluster run idles between its many small Spark jobs, so the local run overlaps it)."""
    homes = {name: tmp_path_factory.mktemp(name) for name in ("cluster_home", "local_home")}
    for home in homes.values():  # the same small promoted encoder in both homes
        tiny_encoder().save(load_config(home=home).encoder_dir)
    env = {**ENV, "MMI_DATASET_DIR": str(dataset)}

    def run_all(master: str, home) -> list:
        return [
            run_job(job.module, master=master, home=home, env=env, args=job.args) for job in JOBS
        ]

    with ThreadPoolExecutor(1) as pool:
        local = pool.submit(run_all, "local[2]", homes["local_home"])
        with SparkCluster(
            workers=2, cores=1, memory="1g", log_dir=tmp_path_factory.mktemp("spark_cluster")
        ) as cluster:
            out = {
                "cluster": run_all(cluster.master_url, homes["cluster_home"]),
                "status": cluster.status(),
                "procs": list(cluster.procs),
            }
            out["stopped"] = cluster.stop()
        out["local"] = local.result()
    return {**out, **homes}


def test_jobs_ran_on_the_cluster_executors(runs):
    apps = runs["status"]["completedapps"]
    assert len(apps) == len(JOBS), [a["name"] for a in apps]
    assert all(a["cores"] == 2 and a["state"] == "FINISHED" for a in apps), apps
    assert [r.counts for r in runs["cluster"]] == [r.counts for r in runs["local"]]


def test_cluster_stopped_by_pid(runs):
    stopped = runs["stopped"]
    assert set(runs["procs"]) <= set(stopped)  # master and both workers, stopped by their pids
    assert not [p.pid for p in stopped if p.running()]


def _table(path: str, keys: list[str], ignore: tuple[str, ...]) -> pd.DataFrame:
    """The live rows of a Delta table, sorted by its keys."""
    df = DeltaTable(path).to_pandas().drop(columns=list(ignore))
    return df.sort_values(keys).reset_index(drop=True)


def _assert_same(got: pd.DataFrame, want: pd.DataFrame) -> None:
    """Equal rows; float arrays (vectors) within 1e-5, other arrays exactly."""
    assert list(got.columns) == list(want.columns) and len(got) == len(want)
    for col in got.columns:
        if not got[col].map(lambda v: isinstance(v, np.ndarray)).any():
            pd.testing.assert_series_equal(got[col], want[col], check_exact=False, rtol=1e-6)
            continue
        for i, (a, b) in enumerate(zip(got[col], want[col])):
            assert (a is None) == (b is None), (col, i)
            if a is not None and a.dtype.kind == "f":
                np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6, err_msg=f"{col} row {i}")
            elif a is not None:
                assert a.tolist() == b.tolist(), (col, i)


@pytest.mark.parametrize(
    "job,table",
    [(j, t) for j in JOBS for t in j.tables],
    ids=lambda v: v if isinstance(v, str) else v.module.split(".")[-1],
)
def test_cluster_tables_equal_local(runs, job, table):
    got, want = (
        _table(str(runs[home] / "delta" / table), job.tables[table], job.ignore)
        for home in ("cluster_home", "local_home")
    )
    assert len(want) > 0
    _assert_same(got, want)

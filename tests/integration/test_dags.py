"""The Airflow DAGs: they parse fast with no import error, cycle or heavy import; task ids,
dependencies, retries and timeouts are as designed; every task runs its agreed entry point; and a
real `airflow dags test` of mm_feature_pipeline on a slice of the real data runs the jobs,
re-runs idempotently, and a failing Great Expectations gate fails the task with its report path.

A task whose entry point has not landed yet is marked successful instead of being run
(`airflow dags test --mark-success-pattern`). So is every task downstream of such a task. A job
therefore runs as soon as it and its upstream jobs exist. Once every job of the pipeline has
landed, set PIPELINE_COMPLETE = True (it is): a missing entry point then fails the test instead of
being skipped. mm_training runs on the same features; a missing entry point of any DAG fails
test_every_task_runs_its_entry_point_with_the_logical_date.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sqlite3
import subprocess
import sys
from datetime import datetime
from graphlib import CycleError, TopologicalSorter
from pathlib import Path

import pytest

from mminterest.config import REPO_ROOT, load_config
from tests.conftest import REAL_DATASET

PIPELINE_COMPLETE = True

AIRFLOW_SH = REPO_ROOT / "infra" / "airflow.sh"
DAGS = REPO_ROOT / "dags"
DAG_FILES = {
    "mm_feature_pipeline.py": "mm_feature_pipeline",
    "mm_training.py": "mm_training",
    "mm_new_items.py": "mm_new_items",
}
# task id -> its entry point: ("spark", job) for spark-submit spark_jobs/<job>.py, ("mmi", words)
ENTRY_POINTS = {
    "mm_feature_pipeline": {
        "ingest": ("spark", "ingest"),
        "embed_items": ("spark", "embed_items"),
        "behaviour": ("spark", "behaviour"),
        "interest_features": ("spark", "interest_features"),
        "features_apply": ("mmi", "features apply"),
        "features_materialize": ("mmi", "features materialize"),
    },
    "mm_training": {
        "trainset_build": ("mmi", "trainset build"),
        "train_din": ("mmi", "train"),
        "train_content": ("mmi", "train"),
        "evaluate": ("mmi", "evaluate"),
        "promote": ("mmi", "promote"),
    },
    "mm_new_items": {
        "embed_new_items": ("spark", "embed_items"),
        "features_materialize": ("mmi", "features materialize"),
    },
}
UPSTREAM = {
    "mm_feature_pipeline": {
        "ingest": set(),
        "embed_items": {"ingest"},
        "behaviour": {"ingest"},
        "interest_features": {"embed_items", "behaviour"},
        "features_apply": {"interest_features"},
        "features_materialize": {"features_apply"},
    },
    "mm_training": {
        "trainset_build": set(),
        "train_din": {"trainset_build"},
        "train_content": {"trainset_build"},
        "evaluate": {"train_din", "train_content"},
        "promote": {"evaluate"},
    },
    "mm_new_items": {"embed_new_items": set(), "features_materialize": {"embed_new_items"}},
}
# tasks of mm_feature_pipeline that process only their run's data interval, and the arguments
WINDOWED = {
    t: '${MMI_DATA_INTERVAL_END:+--start "$MMI_DATA_INTERVAL_START" --end "$MMI_DATA_INTERVAL_END"}'
    for t in ("ingest", "behaviour", "interest_features")
}
WINDOWED["features_materialize"] = '${MMI_DATA_INTERVAL_END:+--end "$MMI_DATA_INTERVAL_END"}'
# what a successful task of mm_feature_pipeline leaves behind (Delta tables, with their keys)
TABLES = {
    "ingest": {
        "interactions": ["user_id", "item_id", "event_ts"],
        "items": ["item_id"],
        "quarantine": ["source", "record_hash"],
    },
    "embed_items": {"item_embeddings": ["item_id"]},
    "behaviour": {"user_behaviour": ["user_id", "event_ts"]},
    "interest_features": {"interest_features": ["user_id", "item_id", "event_ts"]},
}
HEAVY = [
    "pyspark",
    "torch",
    "feast",
    "great_expectations",
    "transformers",
    "deltalake",
    "pandas",
    "numpy",
    "mminterest",
    "spark_jobs",
    "feature_repo",
    "training",
    "serving",
]

PROBE = r"""
import json, sys, time
from pathlib import Path
from airflow.dag_processing.dagbag import BundleDagBag
heavy = {m for m in sys.modules if m.split(".")[0] in HEAVY}
dags = Path(sys.argv[1])
bag = BundleDagBag(dag_folder=dags, bundle_path=dags, bundle_name="dags-folder")
out = {"import_errors": bag.import_errors,
       "seconds": {s.file: s.duration.total_seconds() for s in bag.dagbag_stats},
       "files": {d.dag_id: Path(d.fileloc).name for d in bag.dags.values()},
       "heavy": sorted({m.split(".")[0] for m in sys.modules if m.split(".")[0] in HEAVY} - heavy),
       "dags": {}}
for dag in bag.dags.values():
    out["dags"][dag.dag_id] = {
        "catchup": dag.catchup, "max_active_runs": dag.max_active_runs,
        "tasks": {t.task_id: {
            "upstream": sorted(t.upstream_task_ids), "type": type(t).__name__,
            "bash_command": t.bash_command, "env": t.env, "cwd": t.cwd, "append_env": t.append_env,
            "retries": t.retries, "pool": t.pool, "max_active_tis_per_dag": t.max_active_tis_per_dag,
            "timeout": t.execution_timeout.total_seconds() if t.execution_timeout else None,
        } for t in dag.tasks}}
print("PROBE " + json.dumps(out))
"""


def _mmi_has(words: str) -> bool:
    """Whether `mmi <words>` is a registered subcommand."""
    from mminterest.cli import build_parser

    parser = build_parser()
    for word in words.split():
        subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
        if not subs or word not in subs[0].choices:
            return False
        parser = subs[0].choices[word]
    return True


def _landed(entry) -> bool:
    kind, name = entry
    return (
        (REPO_ROOT / "spark_jobs" / f"{name}.py").is_file() if kind == "spark" else _mmi_has(name)
    )


@pytest.fixture(scope="module")
def probe(tmp_path_factory):
    """The DAG folder as Airflow's DAG processor parses it (a fresh interpreter, Airflow loaded)."""
    home = tmp_path_factory.mktemp("airflow_probe")
    env = {
        **os.environ,
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__CORE__DAGS_FOLDER": str(DAGS),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
    }
    code = f"HEAVY = {HEAVY!r}\n" + PROBE
    res = subprocess.run(
        [sys.executable, "-c", code, str(DAGS)],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    lines = [line for line in res.stdout.splitlines() if line.startswith("PROBE ")]
    assert res.returncode == 0 and lines, res.stdout[-3000:] + res.stderr[-3000:]
    return json.loads(lines[-1][len("PROBE ") :])


def test_dag_files_parse_fast_without_errors_or_heavy_imports(probe):
    assert probe["import_errors"] == {}
    assert probe["files"] == {dag: f for f, dag in DAG_FILES.items()}
    assert set(probe["seconds"]) == set(DAG_FILES)  # mm_ops.py is wiring, ignored as a DAG file
    slow = {f: s for f, s in probe["seconds"].items() if s >= 2.0}
    assert not slow, f"DAG files must parse in < 2 s: {slow}"
    assert probe["heavy"] == [], "DAG files must not import job code or heavy libraries at top"


def test_task_ids_and_dependencies_as_designed(probe):
    for dag_id, expected in UPSTREAM.items():
        tasks = probe["dags"][dag_id]["tasks"]
        assert {t: set(v["upstream"]) for t, v in tasks.items()} == expected, dag_id
        try:
            order = list(
                TopologicalSorter({t: v["upstream"] for t, v in tasks.items()}).static_order()
            )
        except CycleError as err:
            pytest.fail(f"{dag_id} has a cycle: {err}")
        assert len(order) == len(tasks)
        assert probe["dags"][dag_id]["max_active_runs"] == 1
        assert probe["dags"][dag_id]["catchup"] is False


def test_every_task_runs_its_entry_point_with_the_logical_date(probe):
    venv_bin = str(REPO_ROOT / ".venv" / "bin")
    for dag_id, entries in ENTRY_POINTS.items():
        for task_id, (kind, name) in entries.items():
            assert _landed((kind, name)), f"{dag_id}.{task_id}: entry point {kind} {name} missing"
            task = probe["dags"][dag_id]["tasks"][task_id]
            cmd = task["bash_command"]
            assert task["type"] == "BashOperator" and task["cwd"] == str(REPO_ROOT)
            windowed = dag_id == "mm_feature_pipeline" and task_id in WINDOWED
            if windowed:  # the run's data interval: --start/--end (materialize: --end)
                assert "data_interval_start" in task["env"]["MMI_DATA_INTERVAL_START"]
                assert "data_interval_end" in task["env"]["MMI_DATA_INTERVAL_END"]
                assert cmd.rstrip().endswith(WINDOWED[task_id]), (task_id, cmd)
                cmd = cmd.rstrip().removesuffix(WINDOWED[task_id]).rstrip()
            if kind == "spark":
                assert f'{venv_bin}/spark-submit --master "$MMI_SPARK_MASTER"' in cmd
                assert cmd.rstrip().endswith(f" spark_jobs/{name}.py")
                assert f"PYSPARK_PYTHON={venv_bin}/python" in cmd
            else:  # `mmi <name>`, options after it
                assert (
                    cmd.rstrip().splitlines()[-1].split(" --")[0] == f"exec {venv_bin}/mmi {name}"
                )
            assert f"export PYTHONPATH={REPO_ROOT}" in cmd and "set -euo pipefail" in cmd
            assert task["append_env"] is True
            assert "dag_run.logical_date" in task["env"]["MMI_LOGICAL_DATE"]
            assert "conn.spark_default" in task["env"]["MMI_SPARK_MASTER"]
            assert task["timeout"] and task["timeout"] > 0, f"{dag_id}.{task_id}: no timeout"
            assert task["retries"] >= (0 if task_id == "promote" else 1), f"{dag_id}.{task_id}"
            assert task["max_active_tis_per_dag"] == 1  # never twice at once (backfill + schedule)
    # training hand-offs name this DAG run's runs explicitly, never "the latest run"
    tasks = probe["dags"]["mm_training"]["tasks"]
    for task_id in ("train_din", "train_content", "evaluate", "promote"):
        assert (
            "--run" in tasks[task_id]["bash_command"]
            and "{{ run_id }}" in tasks[task_id]["bash_command"]
        )
    # the writers of item_embeddings and of the online store never overlap across DAGs
    for dag_id, task_id, pool in [
        ("mm_feature_pipeline", "embed_items", "mm_item_embeddings"),
        ("mm_new_items", "embed_new_items", "mm_item_embeddings"),
        ("mm_feature_pipeline", "features_materialize", "mm_online_store"),
        ("mm_new_items", "features_materialize", "mm_online_store"),
    ]:
        assert probe["dags"][dag_id]["tasks"][task_id]["pool"] == pool


# ---- real runs through Airflow ---------------------------------------------------------------

N_RATINGS, N_POSTERS = 1500, 20
DATE, OTHER_DATE = "2026-11-20", "2026-11-21"
N_LATER = 30  # real ratings stamped on DATE: in the data interval of OTHER_DATE's run only


def _later_ratings() -> list[str]:
    """The slice's first N_LATER ratings again (same users and items), at DATE 12:00 + k s: a
    manual run for OTHER_DATE covers [DATE, OTHER_DATE), the one for DATE the day before."""
    noon = int(datetime.fromisoformat(f"{DATE}T12:00:00+00:00").timestamp())
    head = (REAL_DATASET / "ratings.csv").read_text().splitlines()[1 : N_LATER + 1]
    return [",".join(line.split(",")[:3] + [str(noon + k)]) for k, line in enumerate(head)]


def _slice(
    root: Path,
    extra_ratings: list[str] = (),
    n_ratings: int = N_RATINGS,
    n_posters: int = N_POSTERS,
) -> Path:
    """The head of the real ratings, the movies they name, real posters of some of them (linked)."""
    (root / "posters").mkdir(parents=True)
    ratings = (REAL_DATASET / "ratings.csv").read_text().splitlines()[: n_ratings + 1]
    (root / "ratings.csv").write_text("\n".join(ratings + list(extra_ratings)) + "\n")
    ids = {line.split(",")[1] for line in ratings[1:]}
    movies = (REAL_DATASET / "movies.csv").read_bytes().splitlines()
    (root / "movies.csv").write_bytes(
        b"\n".join(movies[:1] + [m for m in movies[1:] if m.split(b",", 1)[0].decode() in ids])
        + b"\n"
    )
    index = (REAL_DATASET / "posters_index.csv").read_text().splitlines()
    index = index[:1] + [line for line in index[1:] if line.split(",", 1)[0] in ids][:n_posters]
    (root / "posters_index.csv").write_text("\n".join(index) + "\n")
    for line in index[1:]:
        path = line.split(",")[-2]
        (root / path).symlink_to(REAL_DATASET / path)
    return root


def _airflow(
    home: Path, dataset: Path, *args: str, timeout: int = 600
) -> subprocess.CompletedProcess:
    env = {
        **os.environ,
        "MMI_HOME": str(home),
        "MMI_DATASET_DIR": str(dataset),
        "MMI_SPARK_MASTER": "local[2]",
        "MMI_SPARK_SHUFFLE_PARTITIONS": "2",
        "MMI_SPARK_DRIVER_MEMORY": "1g",
    }
    return subprocess.run(
        [str(AIRFLOW_SH), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=REPO_ROOT,
    )


def _plan() -> tuple[set[str], set[str]]:
    """(tasks of mm_feature_pipeline to run, tasks to mark successful): a task runs when its entry
    point exists and every upstream task runs."""
    run: set[str] = set()
    for task in TopologicalSorter(UPSTREAM["mm_feature_pipeline"]).static_order():
        if (
            _landed(ENTRY_POINTS["mm_feature_pipeline"][task])
            and UPSTREAM["mm_feature_pipeline"][task] <= run
        ):
            run.add(task)
    return run, set(UPSTREAM["mm_feature_pipeline"]) - run


def _states(home: Path, dag_id: str) -> dict[str, str]:
    """Task states of the latest run of `dag_id`, from Airflow's metadata database."""
    with sqlite3.connect(home / "airflow" / "airflow.db") as db:
        (run_id,) = db.execute(
            "SELECT run_id FROM dag_run WHERE dag_id = ? ORDER BY id DESC LIMIT 1", (dag_id,)
        ).fetchone()
        return dict(
            db.execute(
                "SELECT task_id, state FROM task_instance WHERE dag_id = ? AND run_id = ?",
                (dag_id, run_id),
            ).fetchall()
        )


def _snapshot(home: Path, tables: dict[str, list[str]]):
    from deltalake import DeltaTable

    return {
        name: DeltaTable(str(home / "delta" / name))
        .to_pyarrow_table()
        .sort_by([(k, "ascending") for k in keys])
        for name, keys in tables.items()
    }


def _run_pipeline(home: Path, dataset: Path, date: str, mark: set[str]) -> str:
    args = ["dags", "test", "mm_feature_pipeline", date]
    if mark:
        args += ["--mark-success-pattern", "|".join(sorted(mark))]
    res = _airflow(home, dataset, *args)
    log = res.stdout + res.stderr
    assert res.returncode == 0, log[-6000:]
    assert "state=success" in log, log[-6000:]
    return log


@pytest.fixture(scope="module")
def feature_run(tmp_path_factory):
    """One `airflow dags test mm_feature_pipeline DATE` on a fresh MMI_HOME and a real slice."""
    run, mark = _plan()
    if PIPELINE_COMPLETE:
        assert not mark, f"entry points missing for {sorted(mark)}"
    root = tmp_path_factory.mktemp("feature_run")
    home, dataset = root / "mmi", _slice(root / "data", extra_ratings=_later_ratings())
    log = _run_pipeline(home, dataset, DATE, mark)
    tables = {name: keys for task in run for name, keys in TABLES.get(task, {}).items()}
    return {
        "home": home,
        "dataset": dataset,
        "log": log,
        "run": run,
        "mark": mark,
        "tables": tables,
        "snapshot": _snapshot(home, tables),
    }


def test_feature_pipeline_runs_through_airflow(feature_run):
    home, dataset, log, run = (feature_run[k] for k in ("home", "dataset", "log", "run"))
    assert "ingest" in run
    states = _states(home, "mm_feature_pipeline")
    assert states == {t: "success" for t in UPSTREAM["mm_feature_pipeline"]}, states
    # every task that ran saw the run's logical date and the spark_default master
    assert log.count(f"logical date {DATE}T00:00:00+00:00 | spark local[2] | home {home}") == len(
        run
    )
    n_items = len((dataset / "movies.csv").read_bytes().splitlines()) - 1
    assert f"written {N_RATINGS + n_items + N_POSTERS:,} (interactions {N_RATINGS:,}" in log
    assert feature_run["snapshot"]["interactions"].num_rows == N_RATINGS
    assert all(
        t.num_rows > 0 for name, t in feature_run["snapshot"].items() if name != "quarantine"
    )
    if "features_apply" in run:
        assert (home / "feast" / "registry.db").is_file()


def test_cleared_rerun_leaves_the_tables_and_a_later_date_adds_its_day(
    feature_run, spark, tmp_path
):
    """Re-running the same logical date (dags test clears that run first) leaves the same tables.
    The next date (a backfill runs dates one at a time) admits that day's events only, and its
    incremental behaviour and interest tables equal a full rebuild from the same inputs."""
    from spark_jobs import behaviour, interest_features

    home, dataset, mark, tables = (feature_run[k] for k in ("home", "dataset", "mark", "tables"))
    _run_pipeline(home, dataset, DATE, mark)
    assert _snapshot(home, tables) == feature_run["snapshot"]
    log = _run_pipeline(home, dataset, OTHER_DATE, mark)
    after = _snapshot(home, tables)
    assert f"written {N_LATER:,} (interactions {N_LATER:,}, items 0, images 0)" in log
    assert after["interactions"].num_rows == N_RATINGS + N_LATER
    assert after["user_behaviour"] != feature_run["snapshot"]["user_behaviour"]
    rebuilt = load_config(
        home=tmp_path / "mmi", spark_master="local[2]", spark_shuffle_partitions=2
    )
    for name in ("interactions", "item_embeddings"):
        shutil.copytree(home / "delta" / name, rebuilt.table(name))
    behaviour.run(rebuilt, spark)
    interest_features.run(rebuilt, spark)
    derived = {
        "user_behaviour": TABLES["behaviour"]["user_behaviour"],
        "interest_features": TABLES["interest_features"]["interest_features"],
    }
    assert _snapshot(rebuilt.home, derived) == {t: after[t] for t in derived}


def test_training_dag_runs_on_the_features(feature_run):
    assert not feature_run["mark"], f"feature pipeline incomplete: {sorted(feature_run['mark'])}"
    home, dataset = feature_run["home"], feature_run["dataset"]
    manual = home / "models" / "ctr" / "manual-experiment"  # newest run, best AUC, not this DAG's
    manual.mkdir(parents=True, exist_ok=True)
    (manual / "metrics.json").write_text(json.dumps({"auc": 0.99}))
    res = _airflow(home, dataset, "dags", "test", "mm_training", DATE)
    log = res.stdout + res.stderr
    assert res.returncode == 0, log[-6000:]
    states = _states(home, "mm_training")
    assert {t: s for t, s in states.items() if t != "promote"} == {
        t: "success" for t in UPSTREAM["mm_training"] if t != "promote"
    }, states
    assert states["promote"] in ("success", "skipped"), states  # skipped: not better than promoted
    trained = sorted(
        p.name for p in (home / "models" / "ctr").iterdir() if p.name.endswith(("-din", "-dmae"))
    )
    assert len(trained) == 2 and trained[0].removesuffix("-din") == trained[1].removesuffix(
        "-dmae"
    ), trained
    current = home / "models" / "ctr" / "current"
    if states["promote"] == "success":
        assert current.resolve().name in trained  # the DAG's own runs only, never the manual one


def test_failing_gate_fails_the_task_with_its_report_path(tmp_path):
    """Past max_bad_fraction ingest raises: the task fails (one try: `tasks test` skips retries)
    and its log names the quarantine table and the Great Expectations reports."""
    home = tmp_path / "mmi"
    dataset = _slice(tmp_path / "data", extra_ratings=["x,y,z,w"] * 400)
    res = _airflow(home, dataset, "tasks", "test", "mm_feature_pipeline", "ingest", DATE)
    log = res.stdout + res.stderr
    assert "Task failed with exception" in log and "Bash command failed" in log, log[-6000:]
    reports = home / "reports" / "validation"
    assert (
        f"suite ingest_interactions: FAILED (report {reports / 'ingest_interactions.json'})" in log
    )
    assert "ingest refused: bad-row share above max_bad_fraction" in log
    assert f"reports in {reports}" in log
    assert (reports / "ingest_interactions.json").is_file()
    assert not (home / "delta" / "interactions").exists()  # good tables untouched

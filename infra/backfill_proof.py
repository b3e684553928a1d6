"""Backfill = rebuild, through Airflow 3's own backfill on the local scheduler, on the last DAYS days
of the dataset (`infra/airflow.sh backfill-proof [DAYS]`, `make airflow-backfill-proof`).

1. First load: a fresh home `<root>/backfill` gets every event before the slice's first day
   (ingest --end FIRST), item vectors (copied from the invoking home's item_embeddings when it has
   them, then embed_items, which embeds only new or changed items), behaviour and interest
   features in full. The loaded home is copied to `<root>/rebuild`.
2. Backfill: the local Airflow (infra/airflow_local.py; scheduled runs off, so only the backfill
   runs) with MMI_HOME = the backfill home; mm_feature_pipeline unpaused and a backfill of its DAYS
   daily runs created through POST /api/v2/backfills (max_active_runs 1); every run must succeed.
3. Clear: one day's run (the middle one) is cleared through the REST API
   (POST /api/v2/dags/{dag}/clearTaskInstances) and re-run by the scheduler: its tables must not
   change.
4. Rebuild: the rebuild home gets one run of the same jobs over the whole span
   (--start FIRST --end LAST+1 day), and its tables are compared, row for row, with the backfill's
   (spark_jobs/table_compare.py).

The JSON report (seconds, per-run figures, the comparisons) goes to
`$MMI_HOME/reports/backfill_proof.json`; the last line printed is a one-line summary. Exit 0 only
when every backfill run succeeded, the tables equal the rebuild and the cleared day left them
unchanged.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd

from infra.airflow_local import Api, LocalAirflow
from mminterest.config import REPO_ROOT, get_config, load_config

DAG = "mm_feature_pipeline"
OTHER_DAGS = ("mm_training", "mm_new_items")  # must not run: scheduled runs are off, both paused
DAY = pd.Timedelta(days=1)


def _log(msg: str) -> None:
    print(f"backfill-proof: {msg}", flush=True)


def slice_days(dataset_dir: Path, days: int) -> tuple[pd.Timestamp, pd.Timestamp, int]:
    """(first day, end, events in between) of the last `days` days of the dataset's events (UTC;
    end exclusive)."""
    ts = pd.to_datetime(
        pd.read_csv(dataset_dir / "ratings.csv", usecols=["timestamp"])["timestamp"],
        unit="s",
        utc=True,
    )
    last = ts.max().floor("D")
    first = last - (days - 1) * DAY
    return first, last + DAY, int((ts >= first).sum())


def run_jobs(start: str | None, end: str, embeddings_from: str | None) -> None:
    """In this process (config from the environment): ingest, item vectors, behaviour and interest
    features for [start, end); without `start`, a first load: everything before `end`, the derived
    tables in full."""
    from deltalake import DeltaTable

    from spark_jobs import behaviour, embed_items, ingest, interest_features
    from spark_jobs.session import get_spark

    cfg = get_config()
    spark = get_spark("mmi-backfill-proof", cfg)
    window = {"start": start, "end": end} if start else {}
    print(ingest.run(cfg, spark, start=start, end=end).line(), flush=True)
    target = cfg.table("item_embeddings")
    if (
        embeddings_from
        and DeltaTable.is_deltatable(embeddings_from)
        and not DeltaTable.is_deltatable(target)
    ):
        shutil.copytree(embeddings_from, target)
    print(embed_items.run(cfg, spark).line(), flush=True)
    print(behaviour.run(cfg, spark, **window).line(), flush=True)
    print(interest_features.run(cfg, spark, **window).line(), flush=True)


def _jobs(env: dict[str, str], start: pd.Timestamp | None, end: pd.Timestamp, **kw) -> float:
    """Seconds of `run_jobs` in a child process (its own Spark driver, gone when it returns)."""
    args = [sys.executable, "-m", "infra.backfill_proof", "jobs", "--end", end.isoformat()]
    if start is not None:
        args += ["--start", start.isoformat()]
    if kw.get("embeddings_from"):
        args += ["--embeddings-from", kw["embeddings_from"]]
    began = time.monotonic()
    subprocess.run(args, env={**os.environ, **env}, cwd=REPO_ROOT, check=True)
    return round(time.monotonic() - began, 1)


def _runs(api: Api) -> list[dict]:
    runs = api.get(f"/api/v2/dags/{DAG}/dagRuns?limit=1000")["dag_runs"]
    return sorted((r for r in runs if r["run_type"] == "backfill"), key=lambda r: r["logical_date"])


def _failed(api: Api, run: dict, home: Path) -> RuntimeError:
    states = api.wait(DAG, run["dag_run_id"], timeout=0)["task_states"]
    return RuntimeError(
        f"run {run['dag_run_id']} {run['state']}: {states}; task logs under "
        f"{home / 'airflow' / 'logs' / f'dag_id={DAG}'}"
    )


def backfill(api: Api, first: pd.Timestamp, days: int, home: Path, timeout: float) -> dict:
    """Create the backfill of `days` runs from `first` and wait until all succeed (progress lines)."""
    api.wait_dag(DAG)
    api.unpause(DAG)  # the runs of a paused DAG stay queued
    last = first + (days - 1) * DAY
    created = api.post(
        "/api/v2/backfills",
        {
            "dag_id": DAG,
            "from_date": first.isoformat(),
            "to_date": last.isoformat(),
            "max_active_runs": 1,
            "reprocess_behavior": "none",
        },
    )
    _log(f"backfill {created['id']} created: {days} runs {first.date()} .. {last.date()}")
    began, done = time.monotonic(), 0
    deadline = began + timeout
    while True:
        runs = _runs(api)
        finished = [r for r in runs if r["state"] in ("success", "failed")]
        for run in finished[done:]:
            if run["state"] == "failed":
                raise _failed(api, run, home)
            took = pd.Timestamp(run["end_date"]) - pd.Timestamp(run["start_date"])
            _log(
                f"{len(finished)}/{days} runs: {run['logical_date'][:10]} success in "
                f"{took.total_seconds():.0f} s ({time.monotonic() - began:.0f} s in)"
            )
        done = len(finished)
        if done == days == len(runs) and all(r["state"] == "success" for r in runs):
            break
        if time.monotonic() > deadline:
            raise TimeoutError(f"{done}/{days} runs finished after {timeout:.0f} s")
        time.sleep(5)
    return {
        "id": created["id"],
        "seconds": round(time.monotonic() - began, 1),
        "runs": [
            {
                "run_id": r["dag_run_id"],
                "interval": [r["data_interval_start"], r["data_interval_end"]],
                "seconds": round(
                    (pd.Timestamp(r["end_date"]) - pd.Timestamp(r["start_date"])).total_seconds(), 1
                ),
            }
            for r in runs
        ],
    }


def clear_and_rerun(api: Api, run_id: str, home: Path, timeout: float) -> dict:
    """Clear every task of `run_id` through the REST API and wait for the scheduler to re-run it."""
    began = time.monotonic()
    api.post(
        f"/api/v2/dags/{DAG}/clearTaskInstances",
        {"dry_run": False, "only_failed": False, "dag_run_id": run_id, "reset_dag_runs": True},
    )
    _log(f"cleared {run_id}; waiting for its re-run")
    run = api.wait(DAG, run_id, timeout)
    if run["state"] != "success":
        raise _failed(api, run, home)
    tis = api.get(f"/api/v2/dags/{DAG}/dagRuns/{run_id}/taskInstances")["task_instances"]
    return {
        "run_id": run_id,
        "seconds": round(time.monotonic() - began, 1),
        "try_numbers": {ti["task_id"]: ti["try_number"] for ti in tis},
    }


def _other_runs(api: Api) -> dict[str, int]:
    return {d: api.get(f"/api/v2/dags/{d}/dagRuns?limit=1")["total_entries"] for d in OTHER_DAGS}


def prove(days: int, root: Path, timeout: float) -> dict:
    """Steps 1-4 of the module doc; the report (also written as JSON)."""
    from spark_jobs.table_compare import differences, snapshot

    base = get_config()
    first, end, events = slice_days(base.dataset_dir, days)
    shutil.rmtree(root, ignore_errors=True)
    homes = {"backfill": root / "backfill", "rebuild": root / "rebuild"}
    cfgs = {k: load_config(home=h, dataset_dir=base.dataset_dir) for k, h in homes.items()}
    envs = {
        k: {"MMI_HOME": str(h), "MMI_DATASET_DIR": str(base.dataset_dir)} for k, h in homes.items()
    }
    report: dict = {
        "dag": DAG,
        "days": days,
        "span": [str(first.date()), str((end - DAY).date())],
        "events_in_span": events,
        "dataset_dir": str(base.dataset_dir),
        "root": str(root),
        "seconds": {},
    }
    seconds = report["seconds"]
    began = time.monotonic()
    _log(f"first load of {homes['backfill']}: events before {first.date()}")
    seconds["first_load"] = _jobs(
        envs["backfill"], None, first, embeddings_from=base.table("item_embeddings")
    )
    shutil.copytree(homes["backfill"], homes["rebuild"])

    env = {**envs["backfill"], "AIRFLOW__SCHEDULER__USE_JOB_SCHEDULE": "False"}
    with LocalAirflow(port=0, env=env) as af:
        _log(f"local Airflow up at {af.url} (logs {af.log_dir})")
        report["backfill"] = backfill(af.api, first, days, homes["backfill"], timeout)
        seconds["backfill"] = report["backfill"]["seconds"]
        before = snapshot(cfgs["backfill"])
        cleared = report["backfill"]["runs"][days // 2]["run_id"]
        report["clear"] = clear_and_rerun(af.api, cleared, homes["backfill"], timeout)
        seconds["clear_rerun"] = report["clear"]["seconds"]
        report["other_dag_runs"] = _other_runs(af.api)
    after = snapshot(cfgs["backfill"])
    report["clear"]["differences"] = differences(after, before)

    _log(f"rebuild: one run over {first.date()} .. {(end - DAY).date()} in {homes['rebuild']}")
    seconds["rebuild"] = _jobs(envs["rebuild"], first, end)
    report["rows"] = {t: len(f) for t, f in after.items()}
    report["differences"] = differences(after, snapshot(cfgs["rebuild"]))
    seconds["total"] = round(time.monotonic() - began, 1)
    report["backfill_equals_rebuild"] = not report["differences"]
    report["clear_leaves_tables_unchanged"] = not report["clear"]["differences"]
    out = base.reports_dir / "backfill_proof.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1))
    report["path"] = str(out)
    return report


def summary(r: dict) -> str:
    yes = {True: "yes", False: "NO"}
    return (
        f"backfill-proof: {r['days']} days {r['span'][0]}..{r['span'][1]} "
        f"({r['events_in_span']:,} events): "
        f"{len(r['backfill']['runs'])} backfill runs succeeded in {r['seconds']['backfill']:.0f} s; "
        f"tables equal to one run over the span: {yes[r['backfill_equals_rebuild']]} "
        f"({len(r['rows'])} tables, {sum(r['rows'].values()):,} rows); cleared "
        f"{r['clear']['run_id']} re-ran in {r['seconds']['clear_rerun']:.0f} s, tables unchanged: "
        f"{yes[r['clear_leaves_tables_unchanged']]}; first load {r['seconds']['first_load']:.0f} s, "
        f"rebuild {r['seconds']['rebuild']:.0f} s, total {r['seconds']['total']:.0f} s | {r['path']}"
    )


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["jobs"]:  # internal: one window of the feature jobs, in this process
        jobs = argparse.ArgumentParser(prog="infra.backfill_proof jobs")
        jobs.add_argument("--start")
        jobs.add_argument("--end", required=True)
        jobs.add_argument("--embeddings-from")
        args = jobs.parse_args(argv[1:])
        run_jobs(args.start, args.end, args.embeddings_from)
        return 0
    parser = argparse.ArgumentParser(
        prog="infra/airflow.sh backfill-proof",
        description="backfill = rebuild through Airflow's backfill on the local scheduler",
    )
    parser.add_argument("days", nargs="?", type=int, default=30, help="the last DAYS days")
    parser.add_argument(
        "--root", type=Path, help="where the two homes go (default $MMI_HOME/backfill-proof)"
    )
    parser.add_argument("--timeout", type=float, default=6 * 3600.0, help="seconds per wait")
    args = parser.parse_args(argv)
    if args.days < 1:
        parser.error("DAYS must be >= 1")
    report = prove(args.days, args.root or get_config().home / "backfill-proof", args.timeout)
    print(summary(report), flush=True)
    return 0 if report["backfill_equals_rebuild"] and report["clear_leaves_tables_unchanged"] else 1


if __name__ == "__main__":
    sys.exit(main())

"""Benchmark `daily-increment`: the last DAYS days of the dataset replayed day by day against a full
rebuild of the same tables (`mmi bench daily-increment`).

A home under `<home>/bench/daily-increment/rebuilt` first rebuilds the tables in one run over the
whole span (ingest to the last day's end, behaviour and interest without a window), timed per
job. A second home gets the first load (every event before the first replayed day) and full runs
of behaviour and interest features; then each day runs ingest, behaviour and interest features
for its window, timed per job (printed as it goes). The two homes' tables are then compared row
for row (backfill = rebuild). Item vectors: the home's item_embeddings when present (copied:
embedding 9,742 items takes minutes and is incremental by content hash already), else the
embedding job runs once.
Goal: on a day holding <= 1% of the events, each job >= 5x faster than its full rebuild.
MMI_BENCH_DAYS=N replays the last N days instead of DAYS (when time is short).
"""

from __future__ import annotations

import os
import shutil
import statistics
import time
from typing import Any, cast

import pandas as pd

DAYS = 30
GOAL_SPEEDUP, SMALL_DAY = 5.0, 0.01
TABLES = ("interactions", "items", "quarantine", "user_behaviour", "interest_features")
JOBS = ("ingest", "behaviour", "interest")


def _timed(fn, *args, **kwargs) -> float:
    """Seconds `fn(*args, **kwargs)` takes."""
    started = time.perf_counter()
    fn(*args, **kwargs)
    return round(time.perf_counter() - started, 2)


def _embeddings(spark, cfg, source) -> None:
    from deltalake import DeltaTable

    from spark_jobs import embed_items

    if DeltaTable.is_deltatable(source):
        shutil.copytree(source, cfg.table("item_embeddings"))
    else:
        embed_items.run(cfg, spark)


def _equal(a, b) -> dict[str, bool]:
    from spark_jobs.table_compare import differences, snapshot

    diff = differences(snapshot(a, TABLES), snapshot(b, TABLES))
    return {name: name not in diff for name in TABLES}


def daily_increment(days: int | None = None) -> dict:
    """Per-day seconds of ingest, behaviour and interest features over the last `days` days
    (MMI_BENCH_DAYS, else DAYS), against one full rebuild of the same tables; tables compared
    (backfill = rebuild)."""
    days = days or int(os.environ.get("MMI_BENCH_DAYS") or DAYS)
    from mminterest.config import get_config, load_config
    from spark_jobs import behaviour, ingest, interest_features
    from spark_jobs.adapters import get_adapter
    from spark_jobs.session import get_spark

    cfg = get_config()
    root = cfg.home / "bench" / "daily-increment"
    shutil.rmtree(root, ignore_errors=True)
    daily, rebuilt = load_config(home=root / "daily"), load_config(home=root / "rebuilt")
    spark = get_spark("mmi-bench-daily", cfg)
    events = get_adapter(cfg.dataset).interactions(spark, cfg).select("event_ts")
    stamps = pd.to_datetime(cast(pd.DataFrame, events.toPandas())["event_ts"], utc=True)
    last = stamps.max().floor("D")
    first = last - pd.Timedelta(days=days - 1)
    end = last + pd.Timedelta(days=1)

    # the rebuild first: the per-day figures printed below then have their reference already
    full = {"ingest": _timed(ingest.run, rebuilt, spark, end=end)}
    _embeddings(spark, rebuilt, cfg.table("item_embeddings"))
    full["behaviour"] = _timed(behaviour.run, rebuilt, spark)
    full["interest"] = _timed(interest_features.run, rebuilt, spark)
    print(f"daily-increment: full rebuild {full}", flush=True)

    load = {"ingest": _timed(ingest.run, daily, spark, end=first)}
    _embeddings(spark, daily, rebuilt.table("item_embeddings"))
    load["behaviour"] = _timed(behaviour.run, daily, spark)
    load["interest"] = _timed(interest_features.run, daily, spark)

    per_day: list[dict[str, Any]] = []
    for k in range(days):
        start = first + pd.Timedelta(days=k)
        stop = start + pd.Timedelta(days=1)
        row: dict[str, Any] = {
            "day": str(start.date()),
            "events": int(((stamps >= start) & (stamps < stop)).sum()),
        }
        row["share"] = round(row["events"] / len(stamps), 5)
        for name, job in (
            ("ingest", ingest),
            ("behaviour", behaviour),
            ("interest", interest_features),
        ):
            row[name] = _timed(job.run, daily, spark, start=start, end=stop)
        per_day.append(row)
        print(f"daily-increment: {row}", flush=True)

    equal = _equal(daily, rebuilt)

    small = [r for r in per_day if r["share"] <= SMALL_DAY]
    speedup = {
        job: {
            "median": round(full[job] / statistics.median(r[job] for r in small), 2),
            "worst": round(full[job] / max(r[job] for r in small), 2),
        }
        for job in JOBS
    }
    return {
        "days": days,
        "span": [str(first.date()), str(last.date())],
        "events_total": len(stamps),
        "events_in_span": int(sum(r["events"] for r in per_day)),
        "largest_day_share": max(r["share"] for r in per_day),
        "first_load_s": load,
        "full_rebuild_s": full,
        "day_median_s": {job: statistics.median(r[job] for r in per_day) for job in JOBS},
        "day_max_s": {job: max(r[job] for r in per_day) for job in JOBS},
        "speedup_on_small_days": speedup,
        "goal": f"each job >= {GOAL_SPEEDUP}x on days <= {SMALL_DAY:.0%} of events (worst day)",
        "goal_met": all(s["worst"] >= GOAL_SPEEDUP for s in speedup.values()),
        "backfill_equals_rebuild": equal,
        "per_day": per_day,
    }

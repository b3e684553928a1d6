"""Scaling benchmarks: one Spark job on a 1-worker vs a 2-worker standalone cluster (1 core, 1g per
worker) over the same input, side by side, with the speed-up ratio. Registered in
spark_jobs/benchmarks.py; run with `mmi bench scaling-ingest`.

Each run gets its own fresh cluster and its own MMI home (a copy of the prepared input tables), so
all do exactly the same work; their summary lines (counts) must agree. A job is one line each.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from infra.jobs import JobRun, run_job
from infra.spark_cluster import SparkCluster

WORKERS = (1, 2)


def scaling_ingest() -> dict:
    """Ingest of the configured dataset (MMI_DATASET_DIR) on 1 vs 2 workers."""
    return scaling("spark_jobs.ingest")


def scaling_embed() -> dict:
    """Item embeddings (base encoder) of the configured dataset on 1 vs 2 workers."""
    return scaling("spark_jobs.embed_items", prepare=("spark_jobs.ingest",))


def scaling_interest() -> dict:
    """Interest features of the configured dataset on 1 vs 2 workers."""
    return scaling(
        "spark_jobs.interest_features",
        prepare=("spark_jobs.ingest", "spark_jobs.embed_items", "spark_jobs.behaviour"),
    )


def scaling(
    job: str, prepare: tuple[str, ...] = (), workers: tuple[int, ...] = WORKERS, repeats: int = 2
) -> dict:
    """Run `prepare` once on local[2] into a base home, then `job` on a fresh cluster of each size
    in `workers` over a copy of that home, `repeats` rounds in alternating order; best time per
    size (the job's own summary seconds; process wall seconds beside). Ratio = speed-up of the
    largest size over the smallest (> 1: faster with more workers)."""
    from mminterest.config import get_config

    cfg = get_config()
    env = {"MMI_DATASET_DIR": str(cfg.dataset_dir)}
    _warm_page_cache(cfg.dataset_dir)
    load_before = os.getloadavg()[0]
    runs: dict[int, list[JobRun]] = {n: [] for n in workers}
    with tempfile.TemporaryDirectory(prefix="mmi-scaling-") as tmp:
        base = Path(tmp) / "base"
        base.mkdir()
        for module in prepare:
            run_job(module, master="local[2]", home=base, env=env)
        for r in range(repeats):
            for n in workers if r % 2 == 0 else workers[::-1]:
                home = Path(tmp) / f"home-{n}-{r}"
                shutil.copytree(base, home)
                with SparkCluster(
                    workers=n, cores=1, memory="1g", log_dir=Path(tmp) / f"cluster-{n}-{r}"
                ) as cluster:
                    runs[n].append(run_job(job, master=cluster.master_url, home=home, env=env))
    summaries = {run.counts for done in runs.values() for run in done}
    if len(summaries) != 1:
        raise AssertionError(f"contenders disagree: {sorted(summaries)}")
    best = {n: min(done, key=lambda run: run.job_s or run.wall_s) for n, done in runs.items()}
    small, large = min(workers), max(workers)
    figures = {
        "job": job,
        "input": str(cfg.dataset_dir),
        "summary": summaries.pop(),
        "cores_per_worker": 1,
        "memory_per_worker": "1g",
        "repeats": repeats,
    }
    for n, done in runs.items():
        figures[f"workers_{n}_job_s"] = [run.job_s for run in done]
        figures[f"workers_{n}_wall_s"] = [run.wall_s for run in done]
    seconds = {n: run.job_s or run.wall_s for n, run in best.items()}
    figures[f"speedup_{large}_over_{small}_workers"] = round(seconds[small] / seconds[large], 3)
    figures["load_avg_1min_before_after"] = [round(load_before, 2), round(os.getloadavg()[0], 2)]
    return figures


def _warm_page_cache(root: Path) -> None:
    """Read the input once, so the first contender does not pay for a cold cache alone."""
    for path in Path(root).rglob("*"):
        if path.is_file():
            with open(path, "rb") as f:
                while f.read(1 << 20):
                    pass

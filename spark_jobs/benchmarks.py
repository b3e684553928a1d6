"""Benchmarks of the Spark jobs (light module: heavy imports happen inside each function)."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import Any, TypeVar, cast

T = TypeVar("T")

BENCHMARKS = {
    "delta-write": "spark_jobs.benchmarks:delta_write",
    "cost-growth": "spark_jobs.benchmarks:cost_growth",
    "daily-increment": "spark_jobs.daily_increment:daily_increment",
    "interest-features": "spark_jobs.benchmarks:interest_features",
    "embed-items": "spark_jobs.benchmarks:embed_items",
}


def delta_write() -> dict:
    """Rows/s writing the interactions table: delta_io (Spark stages Parquet, delta-rs streams it
    into one commit) against a driver-side pandas -> deltalake write of the same rows."""
    import tempfile

    from deltalake import DeltaTable, write_deltalake

    from mminterest.config import get_config
    from spark_jobs import delta_io
    from spark_jobs.session import get_spark

    cfg = get_config()
    spark = get_spark("mmi-bench-delta", cfg)
    source = delta_io.read(spark, cfg.table("interactions")).persist()
    rows = source.count()
    pdf = source.toPandas()
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        delta_io.write(source, f"{tmp}/spark")
        spark_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        write_deltalake(f"{tmp}/pandas", pdf, mode="overwrite")
        pandas_s = time.perf_counter() - t0
        assert len(DeltaTable(f"{tmp}/spark").to_pandas()) == rows
    return {
        "rows": rows,
        "delta_io_rows_per_s": round(rows / spark_s),
        "pandas_deltalake_rows_per_s": round(rows / pandas_s),
        "ratio_delta_io_over_pandas": round(pandas_s / spark_s, 3),
    }


def interest_features() -> dict:
    """Rows/s of the interest-feature Spark job's computation (Delta reads, as-of join on
    user_behaviour, Arrow batches through feature_math, into a no-op sink: the gate and the write
    are left out, the reference has neither) against a vectorised numpy reference over the same
    Delta tables (pandas merge_asof, feature_math in chunks, no Spark), side by side, interleaved,
    best of 3 each; the two outputs are compared. Uses the project's user_behaviour and
    item_embeddings when they exist, else builds them in a temporary home (random item vectors)
    and says so."""
    import tempfile
    from pathlib import Path

    import numpy as np

    from mminterest.config import get_config
    from spark_jobs import interest_features as job
    from spark_jobs.session import get_spark

    cfg = get_config()
    spark = get_spark("mmi-bench-interest", cfg)
    with tempfile.TemporaryDirectory() as tmp:
        cfg, data = _interest_inputs(cfg, spark, Path(tmp))
        spark_s = numpy_s = math_s = float("inf")
        for _ in range(3):  # interleaved, best of 3 each: both see the same machine load
            spark_s = min(
                spark_s,
                _timed(
                    lambda: job.compute(spark, cfg).write.format("noop").mode("overwrite").save()
                )[0],
            )
            seconds, (reference, math_seconds) = _timed(lambda: _numpy_interest(cfg))
            numpy_s, math_s = min(numpy_s, seconds), min(math_s, math_seconds)
        got = (
            job.compute(spark, cfg)
            .toArrow()
            .to_pandas()
            .sort_values(["user_id", "item_id", "event_ts"])
            .reset_index(drop=True)
        )
    rows = len(reference["user_id"])
    assert len(got) == rows, f"spark job gave {len(got)} rows, the reference {rows}"
    diff = max(
        float(np.abs(np.stack(got[name].to_numpy()).astype(np.float64) - reference[name]).max())
        for name in reference
        if name != "user_id"
    )
    return {
        "data": data,
        "rows": rows,
        "spark_rows_per_s": round(rows / spark_s),
        "numpy_rows_per_s": round(rows / numpy_s),
        "numpy_feature_math_only_rows_per_s": round(rows / math_s),
        "ratio_spark_over_numpy": round(numpy_s / spark_s, 3),
        "goal_ratio": 0.7,
        "max_abs_diff": diff,
    }


def _timed(run: Callable[[], T]) -> tuple[float, T]:
    started = time.perf_counter()
    out = run()
    return time.perf_counter() - started, out


def _interest_inputs(cfg, spark, tmp):
    """(config whose home holds interactions, user_behaviour, item_embeddings; description)."""
    import shutil

    from mminterest import synthetic_tables
    from spark_jobs import behaviour, delta_io

    have = {n: delta_io.exists(cfg.table(n)) for n in ("user_behaviour", "item_embeddings")}
    if all(have.values()):
        return cfg, "project tables (interactions, user_behaviour, item_embeddings)"
    made = cfg.model_copy(update={"home": tmp})
    for name in ("interactions", *[n for n, ok in have.items() if ok]):
        shutil.copytree(cfg.table(name), made.table(name))  # a Delta table is its folder
    notes = []
    if not have["user_behaviour"]:
        interactions = delta_io.read(spark, cfg.table("interactions"))
        delta_io.write(behaviour.states(interactions, cfg.seq_len), made.table("user_behaviour"))
        notes.append("user_behaviour built by behaviour.states")
    if not have["item_embeddings"]:
        items = delta_io.read(spark, cfg.table("items")).select("item_id", "image_path").toPandas()
        table = synthetic_tables.item_embeddings(
            items["item_id"],
            [None] * len(items),
            synthetic_tables.DIMS,
            items.loc[items["image_path"].isna(), "item_id"],
            cfg.seed,
        )
        delta_io.write(spark.createDataFrame(table), made.table("item_embeddings"))
        notes.append(
            f"RANDOM item vectors {synthetic_tables.DIMS} (embedding job not run; no img where "
            "no poster)"
        )
    return made, "ingested interactions; " + "; ".join(notes)


def _numpy_interest(cfg):
    """(features of every labelled row, sorted by key, as numpy arrays; seconds in feature_math)."""
    import numpy as np
    import pandas as pd
    import pyarrow as pa
    from deltalake import DeltaTable

    from mminterest import feature_math
    from mminterest.candidates import ItemVectors, target_inputs
    from mminterest.schemas import MODALITIES
    from spark_jobs.interest_features import chunk_rows

    rows = (
        DeltaTable(cfg.table("interactions"))
        .to_pandas(columns=["user_id", "item_id", "event_ts", "label"])
        .dropna(subset=["label"])
    )
    states = DeltaTable(cfg.table("user_behaviour")).to_pyarrow_table(
        columns=["user_id", "event_ts", "hist_item_ids"]
    )
    index = pd.DataFrame(
        {
            "user_id": states["user_id"].to_numpy(),
            "state_ts": states["event_ts"].to_pandas(),
            "state": np.arange(len(states)),
        }
    ).sort_values("state_ts")
    rows = pd.merge_asof(
        rows.sort_values("event_ts"),
        index,
        left_on="event_ts",
        right_on="state_ts",
        by="user_id",
        allow_exact_matches=True,
    )
    rows = rows.sort_values(["user_id", "item_id", "event_ts"]).reset_index(drop=True)
    no_state = len(states)  # index of an empty history appended below
    hist = pa.concat_arrays(
        [
            states["hist_item_ids"].combine_chunks(),
            pa.array([[]], states.schema.field("hist_item_ids").type),
        ]
    )
    hist = hist.take(pa.array(rows["state"].fillna(no_state).to_numpy(np.int64)))
    ids, hist_mask = feature_math.stack_ragged(
        hist.offsets.to_numpy(), hist.values.to_numpy(), cfg.seq_len
    )
    emb = DeltaTable(cfg.table("item_embeddings")).to_pyarrow_table(
        columns=["item_id", *MODALITIES]
    )
    vectors = ItemVectors.from_rows(
        emb["item_id"].to_numpy(), {m: emb[m].to_numpy(zero_copy_only=False) for m in MODALITIES}
    )
    targets, math_s, parts = rows["item_id"].to_numpy(), 0.0, {}
    step = chunk_rows(vectors, cfg.seq_len)
    for lo in range(0, len(rows), step):
        sl = slice(lo, lo + step)
        inputs = target_inputs(vectors, targets[sl], ids[sl], hist_mask[sl])  # m -> (t, h, valid)
        started = time.perf_counter()
        got = feature_math.target_features(
            {m: i[0] for m, i in inputs.items()},
            {m: i[1] for m, i in inputs.items()},
            {m: i[2] for m, i in inputs.items()},
            cfg.time_slices,
            cfg.sim_bins,
        )
        math_s += time.perf_counter() - started
        for name, value in got.items():
            parts.setdefault(name, []).append(value.reshape(len(value), -1))
    out = {name: np.concatenate(chunks) for name, chunks in parts.items()}
    return {"user_id": rows["user_id"].to_numpy(), **out}, math_s


# infra: the same job on a 1-worker vs 2-worker standalone cluster (infra/scaling.py)
BENCHMARKS.update(
    {f"scaling-{job}": f"infra.scaling:scaling_{job}" for job in ("ingest", "embed", "interest")}
)


def embed_items(n_items: int = 512, batch_size: int = 64) -> dict:
    """Items/s of the embedding job's inference stage (mapInPandas over the first `n_items` real
    items, model loaded once per Python worker: timed warm, after a first run loaded it) against a
    bare single-process torch loop (the same encoder, batch size, items, image files), side by side,
    interleaved, best of 2 each; the outputs are compared."""
    import numpy as np
    import pandas as pd
    import torch
    from deltalake import DeltaTable

    from mminterest.config import get_config
    from spark_jobs import embed_items as job
    from spark_jobs.session import get_spark
    from training.content.encoders import load_or_base

    cfg = get_config()
    spark = get_spark("mmi-bench-embed", cfg)
    folder = str(cfg.encoder_dir.resolve()) if cfg.encoder_dir.exists() else str(cfg.encoder_dir)
    encoder = load_or_base(folder, cfg.seed)
    version = encoder.encoder_version()
    items = DeltaTable(cfg.table("items")).to_pandas(columns=["item_id", "text", "image_path"])
    items = items.sort_values("item_id").head(n_items).reset_index(drop=True)
    now = pd.Timestamp.now(tz="UTC")
    items = items.assign(content_hash="", valid_from_ts=now, updated_ts=now)
    slots = spark.sparkContext.defaultParallelism
    frame = spark.createDataFrame(items).repartition(slots).persist()
    frame.count()
    threads = max(1, (os.cpu_count() or 1) // slots)
    embedded = frame.mapInPandas(
        job.embedder(folder, version, cfg.seed, batch_size, threads), job.OUT_SCHEMA
    )
    embedded.write.format("noop").mode("overwrite").save()  # loads the model in each worker
    torch.set_num_threads(os.cpu_count() or 1)
    spark_s = torch_s = float("inf")
    texts, paths = items["text"].tolist(), items["image_path"].tolist()
    for _ in range(2):
        spark_s = min(
            spark_s, _timed(lambda: embedded.write.format("noop").mode("overwrite").save())[0]
        )
        seconds, ref = _timed(lambda: encoder.embed(texts, paths, batch_size=batch_size))
        torch_s = min(torch_s, seconds)
    got = cast(pd.DataFrame, embedded.toPandas()).set_index("item_id").loc[items["item_id"]]
    diff = float(np.abs(np.stack(got["fused"].to_numpy()) - ref["fused"]).max())
    frame.unpersist()
    return {
        "items": len(items),
        "with_image": int(items["image_path"].notna().sum()),
        "batch_size": batch_size,
        "encoder_version": version,
        "spark_partitions": slots,
        "torch_threads_per_worker": threads,
        "spark_items_per_s": round(len(items) / spark_s, 1),
        "torch_items_per_s": round(len(items) / torch_s, 1),
        "ratio_spark_over_torch": round(torch_s / spark_s, 3),
        "goal_ratio": 0.9,
        "max_abs_diff_fused": diff,
    }


def replicate(source, factor: int, out):
    """A copy of the MovieLens folder `source` whose ratings.csv holds its rows `factor` times, user
    ids offset per copy (real rows, same items); the other files are linked. Returns `out`."""
    from pathlib import Path

    import pandas as pd

    source, out = Path(source), Path(out)
    out.mkdir(parents=True, exist_ok=True)
    for entry in source.iterdir():
        if entry.name != "ratings.csv" and not (out / entry.name).exists():
            (out / entry.name).symlink_to(entry.resolve())
    ratings = pd.read_csv(source / "ratings.csv", dtype=str)
    offset = 10 ** len(
        str(int(ratings["userId"].astype("int64").max()))
    )  # copy k: user + k * offset
    target = out / "ratings.csv"
    if target.exists() and sum(1 for _ in target.open()) == len(ratings) * factor + 1:
        return out
    with target.open("w") as fh:
        fh.write(",".join(ratings.columns) + "\n")
        for k in range(factor):
            ratings.assign(
                userId=(ratings["userId"].astype("int64") + k * offset).astype(str)
            ).to_csv(fh, header=False, index=False)
    return out


# cost-growth: the feature jobs, each in its own `mmi` process, on the real data replicated
JOBS = {
    "ingest": ["ingest"],
    "behaviour": ["build", "behaviour"],
    "embed items": ["embed", "items"],
    "interest": ["build", "interest"],
    "features apply": ["features", "apply"],
    "trainset": ["trainset", "build"],
    "materialize": ["features", "materialize"],
}
GOALS = {10: 11.0, 100: 60.0}  # rows factor -> most time factor allowed
PEAK_GOAL_GB = 8.0  # per process


def measured(argv: list[str], env: dict[str, str], log_path, poll_s: float = 0.5) -> dict:
    """Run `argv`; its wall seconds, exit code, and peak resident memory sampled every `poll_s`
    over its process tree (children included: the Spark JVM, Python workers): the largest single
    process and the tree's sum."""
    import subprocess

    import psutil

    started = time.perf_counter()
    with open(log_path, "w") as log:
        proc = subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT)
        root, peak_proc, peak_tree = psutil.Process(proc.pid), 0, 0
        while proc.poll() is None:
            rss = []
            for p in [root, *_children(root)]:
                try:
                    rss.append(p.memory_info().rss)
                except psutil.Error:  # exited between listing and sampling
                    pass
            peak_proc, peak_tree = max([peak_proc, *rss]), max(peak_tree, sum(rss))
            time.sleep(poll_s)
    gb = 1 << 30
    return {
        "seconds": round(time.perf_counter() - started, 1),
        "exit": proc.returncode,
        "peak_process_gb": round(peak_proc / gb, 2),
        "peak_tree_gb": round(peak_tree / gb, 2),
    }


def _children(root):
    import psutil

    try:
        return root.children(recursive=True)
    except psutil.Error:
        return []


def run_jobs(home, dataset_dir, log_dir, jobs=tuple(JOBS)) -> dict[str, dict]:
    """Each job of `jobs` as `nice -n 10 mmi ...` under MMI_HOME=`home` on `dataset_dir`, in order,
    with the default configuration; the project's item_embeddings are copied in first when the home
    has none (the replicated data has the same items: embedding re-checks, embeds nothing new).
    Stops at the first failing job."""
    import shutil
    import sys
    from pathlib import Path

    from mminterest.config import get_config

    home, log_dir = Path(home), Path(log_dir)
    log_dir.mkdir(parents=True, exist_ok=True)
    source = get_config().table("item_embeddings")
    target = home / "delta" / "item_embeddings"
    if Path(source).exists() and not target.exists():
        shutil.copytree(source, target)
    env = {**os.environ, "MMI_HOME": str(home), "MMI_DATASET_DIR": str(dataset_dir)}
    env.pop("MMI_SPARK_SHUFFLE_PARTITIONS", None)
    mmi = str(Path(sys.executable).with_name("mmi"))
    out = {}
    for job in jobs:
        out[job] = measured(
            ["nice", "-n", "10", mmi, *JOBS[job]], env, log_dir / f"{job.replace(' ', '_')}.log"
        )
        print(f"cost-growth: {home.name} {job}: {out[job]}", file=sys.stderr, flush=True)
        if out[job]["exit"]:
            break
    return out


def cost_growth(factors=None, work=None) -> dict:
    """Each feature job's time and peak memory on the real data replicated 1x, 3x, 10x (and 100x
    with MMI_BENCH_100X=1: long), user ids offset per copy; per factor the time factor against 1x,
    the slope (log time / log rows) and the goals (<= 11x time at 10x rows; <= 60x time and peak
    <= 8 GB per process at 100x) marked met or not. Homes and data under `work`
    (MMI_BENCH_WORK, default <home>/bench/cost-growth)."""
    import shutil
    from pathlib import Path

    from mminterest.config import get_config

    cfg = get_config()
    factors = factors or [1, 3, 10] + ([100] if os.environ.get("MMI_BENCH_100X") == "1" else [])
    work = Path(work or os.environ.get("MMI_BENCH_WORK") or cfg.home / "bench" / "cost-growth")
    runs = {}
    for k in factors:
        data = replicate(cfg.dataset_dir, k, work / f"data-{k}x")
        home = work / f"mmi-{k}x"
        if home.exists():
            shutil.rmtree(home)
        runs[k] = run_jobs(home, data, work / f"logs-{k}x")
    return {
        "factors": factors,
        "jobs": list(JOBS),
        "runs": {f"{k}x": r for k, r in runs.items()},
        "growth": growth(runs),
    }


def growth(runs: dict[int, dict[str, dict]]) -> dict:
    """Per factor k > 1 and job: time factor against 1x, slope log(time factor)/log(k), and the goals."""
    import math

    base, out = runs.get(1, {}), {}
    for k, jobs in runs.items():
        if k == 1:
            continue
        rows: dict[str, dict[str, Any]] = {}
        for job, got in jobs.items():
            if job not in base or got["exit"] or base[job]["exit"]:
                rows[job] = {"completed": not got["exit"]}
                continue
            factor = got["seconds"] / base[job]["seconds"]
            rows[job] = {
                "time_factor": round(factor, 2),
                "slope": round(math.log(factor) / math.log(k), 3),
            }
            if k in GOALS:
                rows[job]["time_goal_met"] = factor <= GOALS[k]
            if k == 100:
                rows[job]["peak_goal_met"] = got["peak_process_gb"] <= PEAK_GOAL_GB
        out[f"{k}x"] = rows
    return out

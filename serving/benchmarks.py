"""Benchmarks of the online ranker (light module: heavy imports happen inside each function)."""

from __future__ import annotations

import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any

BENCHMARKS = {"serve-load": "serving.benchmarks:serve_load"}

REQUESTS, WARMUP, CANDIDATES = 400, 40, 200
CONCURRENCY = (1, 4, 16)  # concurrent clients
GOAL_P99_MS = 12.0  # at 1 client, on Redis (issue 13)
FALLBACK_MODELS = ("din", "ciubm_dmae")  # the training default, and the heaviest combination


def serve_load() -> dict:
    """Latency, throughput and CPU cost of POST /rank (one user with a full T = 64 history, 200
    candidates, img + txt) through `mmi serve` in a subprocess over a throw-away redis-server,
    driven on loopback by httpx clients (REQUESTS after WARMUP at each of CONCURRENCY clients),
    side by side with the bare reads of the same entities in this process (the user's history,
    then the T + 200 items' vectors; no HTTP, no cache, no model): Feast's `get_online_features`,
    and the ranker's direct Redis reader (serving/online_redis.py). The first model is also
    served over the old read path (`get_online_features` per request, `fast_read=False`).

    Data: the project's feature tables when `<home>/FEATURES_READY` exists, else synthetic tables
    (random vectors of the production widths). Model: the promoted one when it fits the data, else
    untrained FALLBACK_MODELS of that vocabulary (the cost per request does not depend on the
    weights). CPU per request: the server process's user + system time over a run / requests.
    Writes a latency CDF plot next to the JSON."""
    import os
    import tempfile

    from infra.redis_server import RedisServer
    from mminterest.config import get_config

    cfg = get_config()
    load_before = round(os.getloadavg()[0], 2)  # other work on the machine skews the figures
    serve: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory(prefix="mmi-serve-bench-") as tmp, RedisServer() as redis:
        bench, data, user, items = _setup(cfg, Path(tmp), redis.url)
        request = {"user_id": user, "item_ids": items}
        models = _models(cfg, bench, Path(tmp))
        first = next(iter(models))
        for label, model_dir, fast in [
            *((m, d, True) for m, d in models.items()),
            (f"{first}, old read path", models[first], False),
        ]:
            with _server(bench, model_dir, Path(tmp), fast) as (url, pid):
                serve[label] = {}
                for c in CONCURRENCY:
                    cpu = _cpu_seconds(pid)
                    serve[label][f"c{c}"] = _load(url, request, c)
                    serve[label][f"c{c}"]["cpu_ms_per_request"] = round(
                        1000 * (_cpu_seconds(pid) - cpu) / (REQUESTS + WARMUP), 2
                    )
                serve[label].update(_server_times(url))
        bare = {
            name: _bare_load(bench, user, items, fast)
            for name, fast in (
                ("Feast get_online_features", False),
                ("direct Redis read (online_redis)", True),
            )
        }
    png = _plot(cfg.reports_dir / "bench" / "serve-load.png", serve, bare)
    feast_p99 = bare["Feast get_online_features"]["c1"]["p99_ms"]
    print(f"serve-load ({data}; load avg {load_before}); goal p99 {GOAL_P99_MS:g} ms at 1 client:")
    for label, runs in {**{f"POST /rank, {k}": v for k, v in serve.items()}, **bare}.items():
        print(
            f"  {label}: p50 {runs['c1']['p50_ms']} ms, p99 {runs['c1']['p99_ms']} ms "
            f"(/ Feast p99 {runs['c1']['p99_ms'] / feast_p99:.2f}); req/s "
            + ", ".join(f"{runs[f'c{c}']['rps']} at {c}" for c in CONCURRENCY)
            + f"; CPU {runs['c1']['cpu_ms_per_request']} ms/request"
        )
    return {
        "data": data,
        "load_avg_1m_before": load_before,
        "user_id": user,
        "candidates": len(items),
        "requests": REQUESTS,
        "warmup": WARMUP,
        "concurrency": list(CONCURRENCY),
        "serve": {label: _summary(run) for label, run in serve.items()},
        "bare_reads": {label: _summary(run) for label, run in bare.items()},
        "ratio_p99_over_feast_c1": {
            label: round(run["c1"]["p99_ms"] / feast_p99, 3)
            for label, run in {**serve, **bare}.items()
        },
        "goal_p99_ms": GOAL_P99_MS,
        "goal_met_c1": {label: run["c1"]["p99_ms"] <= GOAL_P99_MS for label, run in serve.items()},
        "plot": str(png),
    }


def _summary(by_concurrency: dict) -> dict:
    """The figures of each run without the raw latencies."""
    return {
        c: {k: v for k, v in run.items() if k != "latencies_ms"} if isinstance(run, dict) else run
        for c, run in by_concurrency.items()
    }


def _setup(cfg, tmp, redis_url):
    """(config of a home over Redis with applied, materialised tables; data description; a user
    with a full history; CANDIDATES item ids)."""
    import numpy as np
    from deltalake import DeltaTable

    from feature_repo import repo
    from feature_repo.store_config import open_store

    bench = cfg.model_copy(
        update={"home": tmp / "home", "online_store": "redis", "redis_url": redis_url}
    )
    names = ("item_embeddings", "user_behaviour", "interest_features")
    if (cfg.home / "FEATURES_READY").exists():
        for name in names:  # read-only: link the project's tables into the temporary home
            link = Path(bench.table(name))
            link.parent.mkdir(parents=True, exist_ok=True)
            link.symlink_to(cfg.table(name), target_is_directory=True)
        data = "project feature tables (" + ", ".join(names) + ")"
    else:
        _synthetic_tables(bench)
        data = "SYNTHETIC tables (random vectors img 768, txt 384, fused 256; 50 users, 5000 items)"
    store = open_store(bench)
    repo.apply(store)
    repo.materialize(store)
    states = DeltaTable(bench.table("user_behaviour")).to_pandas(columns=["user_id", "hist_len"])
    user = int(states.sort_values("hist_len", kind="stable").user_id.iloc[-1])
    emb = DeltaTable(bench.table("item_embeddings")).to_pandas(columns=["item_id"])
    rng = np.random.default_rng(cfg.seed)
    items = rng.choice(emb.item_id.to_numpy(), size=CANDIDATES, replace=False)
    return bench, data, user, sorted(map(int, items))


def _synthetic_tables(bench) -> None:
    import pandas as pd

    from mminterest import synthetic_tables

    interactions = synthetic_tables.random_interactions(
        users=50,
        items=5000,
        rows=20_000,
        start=pd.Timestamp("2024-01-01", tz="UTC"),
        seed=bench.seed,
    )
    synthetic_tables.write_tables(
        bench, interactions, synthetic_tables.DIMS, without_img=range(1, 5001, 3)
    )


def _models(cfg, bench, tmp) -> dict[str, Path]:
    """label -> model dir: the promoted model when it fits the data, else untrained
    FALLBACK_MODELS over the data's vocabulary."""
    import json

    from deltalake import DeltaTable

    from training.models import ModelConfig, build_model
    from training.models.base import renamed
    from training.vocab import Vocab

    emb = DeltaTable(bench.table("item_embeddings")).to_pandas(columns=["item_id", "fused"])
    dim = len(next(v for v in emb.fused if v is not None))
    promoted = cfg.model_dir / "config.json"
    if promoted.exists():
        saved = json.loads(promoted.read_text())
        if saved["config"]["mm_dim"] == dim and renamed(saved["config"])["seq_len"] == cfg.seq_len:
            return {f"promoted {saved['model']} ({cfg.model_dir.resolve().name})": cfg.model_dir}
    users = DeltaTable(bench.table("user_behaviour")).to_pandas(columns=["user_id"]).user_id
    items = emb.item_id.to_numpy()
    vocab = Vocab(users.unique(), items, ["c1", "c2"], items, 1 + items % 2)
    out = {}
    for name in FALLBACK_MODELS:
        model = build_model(
            name,
            ModelConfig(
                n_users=vocab.n_users,
                n_items=vocab.n_items,
                n_cats=vocab.n_cats,
                seq_len=cfg.seq_len,
                time_slices=cfg.time_slices,
                sim_bins=cfg.sim_bins,
                mm_dim=dim,
            ),
        )
        out[f"untrained {name}"] = model.save(tmp / name)
        vocab.save(tmp / name)
    return out


@contextmanager
def _server(bench, model_dir, tmp, fast_read: bool = True):
    """`mmi serve` of `model_dir` in a subprocess on a free loopback port, over `bench`; yields
    (base URL, pid). `fast_read=False`: the same app and settings, its OnlineFeatures reading
    through `get_online_features` (the old path)."""
    import os
    import subprocess
    import sys

    import httpx

    from infra.procs import free_port, poll

    port = free_port()
    env = {
        **os.environ,
        "MMI_HOME": str(bench.home),
        "MMI_ONLINE_STORE": "redis",
        "MMI_REDIS_URL": bench.redis_url,
        "MMI_MODEL_DIR": str(model_dir),
        "MMI_SEQ_LEN": str(bench.seq_len),
        "MMI_TIME_SLICES": str(bench.time_slices),
        "MMI_SIM_BINS": str(bench.sim_bins),
        "MMI_SERVE_MAX_ITEMS": str(CANDIDATES),
    }
    log_path = tmp / f"serve-{model_dir.name}-{fast_read}.log"
    log = open(log_path, "wb")
    command = (
        ["-m", "mminterest.cli", "serve", "--host", "127.0.0.1", "--port", str(port)]
        if fast_read
        else [
            "-c",
            (f"from serving.benchmarks import _serve_feast_path; _serve_feast_path({port})"),
        ]
    )
    proc = subprocess.Popen(
        [sys.executable, *command], env=env, stdout=log, stderr=subprocess.STDOUT
    )
    url = f"http://127.0.0.1:{port}"
    try:

        def ready() -> bool:
            if proc.poll() is not None:
                raise RuntimeError("mmi serve exited:\n" + log_path.read_text()[-3000:])
            try:
                return httpx.get(url + "/readyz", timeout=5).status_code == 200
            except httpx.TransportError:
                return False

        if not poll(ready, timeout=300, interval=0.2):  # a loaded machine starts it slowly
            raise RuntimeError("mmi serve did not get ready:\n" + log_path.read_text()[-3000:])
        yield url, proc.pid
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        log.close()


def _cpu_seconds(pid: int) -> float:
    """User + system CPU time of process `pid` and its reaped children so far (Linux /proc):
    what a request costs, whatever else the machine is running."""
    import os

    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return sum(int(v) for v in fields[11:15]) / os.sysconf("SC_CLK_TCK")


def _stats(latencies: list[float], seconds: float) -> dict:
    import numpy as np

    ms = np.asarray(latencies) * 1000
    return {
        "p50_ms": round(float(np.percentile(ms, 50)), 2),
        "p99_ms": round(float(np.percentile(ms, 99)), 2),
        "rps": round(len(ms) / seconds, 1),
        "latencies_ms": ms,
    }


def _run(call, concurrency: int) -> dict:
    """WARMUP calls, then REQUESTS calls spread over `concurrency` threads, each timed."""
    from concurrent.futures import ThreadPoolExecutor

    for _ in range(WARMUP):
        call()

    def worker(n: int) -> list[float]:
        out = []
        for _ in range(n):
            started = time.perf_counter()
            call()
            out.append(time.perf_counter() - started)
        return out

    started = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        parts = list(pool.map(worker, [REQUESTS // concurrency] * concurrency))
    return _stats([x for p in parts for x in p], time.perf_counter() - started)


def _load(url: str, request: dict, concurrency: int) -> dict:
    import threading

    import httpx

    local = threading.local()  # one keep-alive client per thread

    def call():
        if not hasattr(local, "client"):
            local.client = httpx.Client(base_url=url, timeout=30)
        got = local.client.post("/rank", json=request)
        if got.status_code != 200 or len(got.json()["items"]) != len(request["item_ids"]):
            raise RuntimeError(f"/rank answered {got.status_code}: {got.text[:300]}")

    return _run(call, concurrency)


def _bare_load(bench, user: int, items: list[int], fast: bool) -> dict:
    """The same entities read bare at each of CONCURRENCY clients: the user's history, then the
    vectors of its items and the candidates (no cache, no feature math, no model), through
    `get_online_features` or (`fast`) the ranker's direct Redis reader; CPU is this process's."""
    from feature_repo.store_config import open_store
    from serving.online_redis import RedisReader

    store = open_store(bench)
    reader = RedisReader(store)
    user_refs = ["user_behaviour:hist_item_ids", "user_behaviour:hist_len"]
    item_refs = ["item_embeddings:img", "item_embeddings:txt", "item_embeddings:fused"]

    def call():
        if fast:
            hist = reader.read(user_refs, "user_id", [user])["hist_item_ids"][0].int64_list_val.val
            reader.read(item_refs, "item_id", list(hist) + items)
        else:
            hist = store.get_online_features(user_refs, entity_rows=[{"user_id": user}]).to_dict()
            ids = list(hist["hist_item_ids"][0] or ()) + items
            store.get_online_features(
                item_refs, entity_rows=[{"item_id": i} for i in ids]
            ).to_dict()

    out = {}
    for c in CONCURRENCY:
        cpu = time.process_time()
        out[f"c{c}"] = _run(call, c)
        out[f"c{c}"]["cpu_ms_per_request"] = round(
            1000 * (time.process_time() - cpu) / (REQUESTS + WARMUP), 2
        )
    return out


def _serve_feast_path(port: int) -> None:
    """What `mmi serve` runs, its online reads through `get_online_features` (the old path)."""
    import torch
    import uvicorn

    from mminterest.config import get_config
    from serving.app import create_app
    from serving.online import OnlineFeatures

    torch.set_num_threads(1)
    cfg = get_config()
    features = OnlineFeatures.from_config(cfg, fast_read=False)
    uvicorn.run(
        create_app(cfg, features=features),
        host="127.0.0.1",
        port=port,
        access_log=False,
        log_level="info",
    )


def _server_times(url: str) -> dict:
    """Mean feature-fetch and model time per /rank, from the server's /metrics."""
    import httpx

    values = {}
    for line in httpx.get(url + "/metrics").text.splitlines():
        name, _, value = line.partition(" ")
        if name.endswith(("_sum", "_count")) and name.startswith(("mmi_feature", "mmi_model")):
            values[name] = float(value)
    return {
        f"server_mean_{kind}_ms": round(
            1000 * values[f"mmi_{kind}_seconds_sum"] / values[f"mmi_{kind}_seconds_count"], 2
        )
        for kind in ("feature_fetch", "model")
    }


def _plot(path, serve: dict, bare: dict):
    """Latency CDFs of every run, one PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np
    from matplotlib.ticker import NullFormatter, ScalarFormatter

    path.parent.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(9, 5.5))
    runs = {**{f"POST /rank, {label}": run for label, run in serve.items()}, **bare}
    styles = {1: "-", 4: "--", 16: ":"}
    for k, (name, by_c) in enumerate(runs.items()):
        for c in CONCURRENCY:
            ms = np.sort(by_c[f"c{c}"]["latencies_ms"])
            ax.plot(
                ms,
                np.arange(1, len(ms) + 1) / len(ms),
                color=f"C{k}",
                linestyle=styles.get(c, "-."),
                label=f"{name}, {c} client{'s' * (c > 1)}",
            )
    ax.axvline(GOAL_P99_MS, color="grey", linestyle=":", label=f"goal p99 {GOAL_P99_MS:g} ms")
    ax.axhline(0.99, color="grey", linewidth=0.5)
    ax.set(
        xscale="log",
        xlabel="latency (ms)",
        ylabel="fraction of requests",
        title=f"1 user, {CANDIDATES} candidates, T = 64, img + txt, Redis",
    )
    ax.xaxis.set_major_formatter(ScalarFormatter())
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.legend(fontsize=6, ncol=2, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path

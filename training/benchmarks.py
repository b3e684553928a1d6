"""Benchmarks of CTR training (light module: heavy imports happen inside each function)."""

from __future__ import annotations

import time

BENCHMARKS = {
    "train-throughput": "training.benchmarks:train_throughput",
    "scaling-train": "training.benchmarks:scaling_train",
}

BATCH = 256
CANDIDATES = 200


def _columns(root, split: str, rows: int):
    """The first `rows` rows of a training-set split as make_batch columns (hist_mm gathered)."""
    import numpy as np
    import pyarrow.parquet as pq

    from training.loader import FusedVectorTable

    table = pq.read_table(root / split).slice(0, rows).to_pandas()
    cols = {
        c: np.stack(v.to_numpy()) if v.dtype == object and c != "category" else v.to_numpy()
        for c, v in table.items()
    }
    cols["hist_mm"] = FusedVectorTable(root)(cols["hist_item_ids"], cols["hist_mask"])
    return cols


def train_throughput() -> dict:
    """Training samples/s of DMAE against DIN on the same batches (forward, backward, Adam step), rounds
    interleaved, best of 3; then forward latency (p50/p95) for one user against 200 candidates. Uses the
    project's `default` training set when built, else a synthetic one (T, l, n, mm_dim of the config, 384-d)
    in a temporary folder, and says which. One torch thread per model, as training runs."""
    import tempfile
    from pathlib import Path

    import numpy as np
    import torch
    from torch.nn import functional as F

    from mminterest.config import get_config
    from training.batch import make_batch
    from training.loader import meta
    from training.models import build_model
    from training.train import model_config
    from training.vocab import Vocab

    cfg = get_config()
    torch.set_num_threads(1)
    torch.manual_seed(cfg.seed)
    with tempfile.TemporaryDirectory() as tmp:
        root = cfg.home / "trainsets" / "default"
        source = "trainset default"
        if not (root / "meta.json").exists():
            from training.synthetic import write_trainset

            root = write_trainset(
                Path(tmp) / "syn",
                rows=(4 * BATCH, CANDIDATES, 10),
                T=cfg.seq_len,
                l=cfg.time_slices,
                n=cfg.sim_bins,
                mm_dim=384,
                row_group_size=BATCH,
            )
            source = "synthetic (no trainset default)"
        info, vocab = meta(root), Vocab.load(root)
        cols = _columns(root, "train", 4 * BATCH)
        batches = [
            make_batch(
                {k: v[i * BATCH : (i + 1) * BATCH] for k, v in cols.items()},
                vocab,
                (info["l"], info["n"]),
            )
            for i in range(len(cols["label"]) // BATCH)
        ]
        one = _columns(root, "valid", 1)
    model_cfg = model_config(info)
    models = {name: build_model(name, model_cfg) for name in ("din", "dmae")}
    opts = {name: torch.optim.Adam(m.parameters(), lr=1e-3) for name, m in models.items()}

    def steps(name: str) -> float:
        model, opt = models[name], opts[name]
        model.train()
        t0 = time.perf_counter()
        for batch in batches:
            out = model(batch)
            loss = (
                F.binary_cross_entropy_with_logits(out["logit"], batch["label"]) + out["aux_loss"]
            )
            opt.zero_grad()
            loss.backward()
            opt.step()
        return time.perf_counter() - t0

    for name in models:
        steps(name)  # warm-up
    best = {name: float("inf") for name in models}
    for _ in range(3):
        for name in models:
            best[name] = min(best[name], steps(name))
    rate = {name: len(batches) * BATCH / s for name, s in best.items()}

    # one user, 200 candidates: the user's row repeated, the candidates' ids and vectors swapped in
    cand = {k: np.repeat(v, CANDIDATES, axis=0) for k, v in one.items()}
    cand["item_id"] = cols["item_id"][:CANDIDATES]
    cand["target_mm"] = cols["target_mm"][:CANDIDATES]
    for k in ("sim_img", "sim_txt", "dist_img", "dist_txt"):
        cand[k] = cols[k][:CANDIDATES]
    request = make_batch(cand, vocab, (info["l"], info["n"]))
    latency = {}
    for name in ("din", "dmae", "ciubm_dmae"):
        model = models.get(name) or build_model(name, model_cfg)
        model.eval()
        times = []
        with torch.no_grad():
            for _ in range(53):
                t0 = time.perf_counter()
                model(request)
                times.append(time.perf_counter() - t0)
        latency[name] = [round(float(np.percentile(times[3:], q)) * 1e3, 2) for q in (50, 95)]
    return {
        "source": source,
        "batch": BATCH,
        "T": info["T"],
        "mm_dim": info["mm_dim"],
        "steps_per_round": len(batches),
        "din_samples_per_s": round(rate["din"]),
        "dmae_samples_per_s": round(rate["dmae"]),
        "ratio_dmae_over_din": round(rate["dmae"] / rate["din"], 3),
        **{f"{name}_forward_{CANDIDATES}_candidates_ms_p50_p95": v for name, v in latency.items()},
        "torch_threads": 1,
    }


def scaling_train(model: str = "din", epochs: int = 1, repeats: int = 2) -> dict:
    """One epoch of `model` on the `default` training set in 1 process vs 2 DDP processes (torchrun,
    gloo), rounds alternating, best wall time each; validation metrics of both beside (equal within
    noise). Ratio = speed-up of 2 processes over 1 (> 1: faster)."""
    import tempfile
    from pathlib import Path

    from mminterest.config import get_config
    from training import runs

    cfg = get_config()
    runs.trainset_path(cfg, "default")  # FileNotFoundError with the way to build it
    seconds: dict[int, list[float]] = {1: [], 2: []}
    metrics: dict[int, dict] = {}
    with tempfile.TemporaryDirectory(prefix="mmi-scaling-train-") as tmp:
        for r in range(repeats):
            for nproc in (1, 2) if r % 2 == 0 else (2, 1):
                start = time.perf_counter()
                _, got = runs.train(
                    cfg,
                    model,
                    "default",
                    seed=cfg.seed,
                    epochs=epochs,
                    nproc=nproc,
                    out=Path(tmp) / f"{nproc}-{r}",
                )
                seconds[nproc].append(round(time.perf_counter() - start, 1))
                metrics[nproc] = {k: round(got[k], 4) for k in ("auc", "gauc", "logloss")}
    best = {n: min(s) for n, s in seconds.items()}
    return {
        "model": model,
        "epochs": epochs,
        "trainset": "default",
        "wall_s_1_process": seconds[1],
        "wall_s_2_processes": seconds[2],
        "valid_metrics_1_process": metrics[1],
        "valid_metrics_2_processes": metrics[2],
        "speedup_2_over_1_processes": round(best[1] / best[2], 3),
    }

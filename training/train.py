"""Train and evaluate one CTR model on a Parquet training set (runs in .venv-train; also under torchrun).

`python -m training.train --model din --trainset DIR --out RUN_DIR [--seed --epochs ...]` trains on the
train split (BCE + the model's aux loss, Adam) to convergence: after each epoch the validation AUC is
measured, the learning rate halves when it did not improve (ReduceLROnPlateau), training stops after
`patience` epochs without improvement (or at `--epochs`, a cap), and the best epoch's weights are
kept. The epoch count is an outcome. Then rank 0 evaluates valid and test and writes the run
directory of CONTRACTS.md: `CTRModel.save` output, vocab.json, metrics.json (validation AUC, GAUC, logloss
at the top level, test metrics under "test") and test_predictions.npz (user_id, label, score, item_age_s,
known_item) for the cold-start breakdown. Under `torchrun --nproc_per_node=K` (gloo) each rank reads every
K-th row with batch_size / K rows per step, so the global batch and the number of steps stay the same.
"""

from __future__ import annotations

import argparse
import copy
import json
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.nn import functional as F
from tqdm import tqdm

from training import distributed
from training.commands import run_arguments
from training.loader import TrainsetBatches, make_loader, meta
from training.metrics import auc, gauc, logloss
from training.models import CTRModel, ModelConfig, build_model
from training.vocab import VOCAB_FILE, Vocab


def model_config(info: dict, **overrides) -> ModelConfig:
    """ModelConfig sized from a training set's meta.json, with `overrides` (e.g. emb_dim, use_mifu)."""
    return ModelConfig(
        n_users=info["n_users"],
        n_items=info["n_items"],
        n_cats=info["n_cats"],
        seq_len=info["seq_len"],
        time_slices=info["time_slices"],
        sim_bins=info["sim_bins"],
        mm_dim=info["mm_dim"],
        **overrides,
    )


@torch.no_grad()
def predict(model: CTRModel, loader) -> dict[str, np.ndarray]:
    """Scores (click probabilities) of every row of `loader`, with what the metrics need."""
    model.eval()
    parts: dict[str, list[np.ndarray]] = {
        k: [] for k in ("user_id", "label", "score", "item_age_s", "known_item")
    }
    for batch in loader:
        parts["score"].append(torch.sigmoid(model(batch)["logit"]).numpy())
        parts["user_id"].append(batch["user_id"].numpy())
        parts["label"].append(batch["label"].numpy())
        parts["item_age_s"].append(batch["item_age_s"].numpy())
        parts["known_item"].append(batch["item"].numpy() > 0)
    return {k: np.concatenate(v) for k, v in parts.items()}


def scores(pred: dict[str, np.ndarray]) -> dict[str, float]:
    return {
        "auc": auc(pred["label"], pred["score"]),
        "gauc": gauc(pred["user_id"], pred["label"], pred["score"]),
        "logloss": logloss(pred["label"], pred["score"]),
        "rows": int(len(pred["label"])),
    }


def evaluate(
    model: CTRModel, root: str | Path, split: str, batch_size: int = 1024
) -> dict[str, np.ndarray]:
    return predict(model, make_loader(root, split, batch_size))


class EarlyStopping:
    """Best-so-far tracking on a score to maximise: keeps the best weights, says when to stop."""

    def __init__(self, patience: int):
        self.patience, self.best, self.best_epoch = patience, float("-inf"), -1
        self.state: dict[str, Any] | None = None
        self.history: list[float] = []

    def update(self, epoch: int, score: float, model: torch.nn.Module) -> bool:
        """Record `score` of `epoch`; True when training should stop."""
        self.history.append(score)
        if score > self.best:
            self.best, self.best_epoch, self.state = score, epoch, copy.deepcopy(model.state_dict())
        return epoch - self.best_epoch >= self.patience


def train(
    root: str | Path,
    model_name: str,
    out: str | Path,
    seed: int = 0,
    epochs: int = 20,
    batch_size: int = 256,
    lr: float = 1e-3,
    max_steps: int = 0,
    threads: int = 1,
    patience: int = 2,
    **overrides,
) -> dict | None:
    """Train `model_name` on `root`'s train split for at most `epochs` epochs, stopping after `patience`
    epochs without a better validation AUC; on rank 0 evaluate the best epoch's weights, write the run
    dir `out` and return its metrics (None on other ranks). `max_steps` > 0 caps the steps per epoch.
    `threads`: torch intra-op threads per process (1: small CTR batches gain nothing from more)."""
    distributed.init_from_env()
    torch.set_num_threads(threads)
    world, rank = distributed.world_size(), distributed.rank()
    if batch_size % world:
        raise ValueError(f"batch_size {batch_size} is not a multiple of the {world} ranks")
    torch.manual_seed(seed)
    np.random.seed(seed)
    info = meta(root)
    vocab = Vocab.load(root)
    model = build_model(model_name, model_config(info, **overrides))
    net = (
        torch.nn.parallel.DistributedDataParallel(model, find_unused_parameters=True)
        if world > 1
        else model
    )
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    schedule = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, mode="max", factor=0.5, patience=0)
    stopper = EarlyStopping(patience)
    valid_loader = make_loader(root, "valid", 1024, vocab=vocab)
    loader = make_loader(
        root,
        "train",
        batch_size // world,
        shuffle=True,
        seed=seed,
        rank=rank,
        world=world,
        vocab=vocab,
    )
    batches: TrainsetBatches = loader.dataset  # type: ignore[assignment]
    steps = max(
        1, info["rows"]["train"] // batch_size
    )  # the same on every rank: no rank waits on another
    steps = min(steps, max_steps) if max_steps > 0 else steps
    started, seen = time.time(), 0
    for epoch in range(epochs):
        batches.set_epoch(epoch)
        net.train()
        total = 0.0
        bar = tqdm(
            zip(range(steps), loader),
            total=steps,
            desc=f"{model_name} s{seed} epoch {epoch + 1}",
            unit="batch",
            leave=False,
            disable=rank != 0,
            mininterval=2.0,
        )
        for step, batch in bar:
            got = net(batch)
            loss = (
                F.binary_cross_entropy_with_logits(got["logit"], batch["label"]) + got["aux_loss"]
            )
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += float(loss.detach())
            seen += len(batch["label"]) * world
            bar.set_postfix(loss=f"{total / (step + 1):.4f}", refresh=False)
        valid = predict(
            model, valid_loader
        )  # every rank: the same weights, hence the same decision
        valid_auc = auc(valid["label"], valid["score"])
        schedule.step(valid_auc)
        stop = stopper.update(epoch, valid_auc, model)
        if rank == 0:
            print(
                f"  {model_name} seed {seed} epoch {epoch + 1}: valid AUC {valid_auc:.4f} (best "
                f"{stopper.best:.4f} at epoch {stopper.best_epoch + 1}), lr {opt.param_groups[0]['lr']:.2g}",
                flush=True,
            )
        if stop:
            break
    assert stopper.state is not None, "no epoch scored above -inf"
    model.load_state_dict(stopper.state)
    train_s = time.time() - started
    result = None
    if rank == 0:
        convergence = {
            "epochs_run": len(stopper.history),
            "best_epoch": stopper.best_epoch + 1,
            "max_epochs": epochs,
            "patience": patience,
            "valid_auc_per_epoch": [round(a, 5) for a in stopper.history],
        }
        result = finish(
            model,
            root,
            out,
            model_name,
            seed,
            convergence,
            batch_size,
            lr,
            train_s,
            seen,
            world,
            overrides,
        )
    distributed.barrier()
    distributed.shutdown()
    return result


def finish(
    model: CTRModel,
    root,
    out,
    model_name: str,
    seed: int,
    convergence: dict,
    batch_size: int,
    lr: float,
    train_s: float,
    seen: int,
    world: int,
    overrides: dict,
) -> dict:
    """Evaluate valid and test, write the run directory, return metrics.json's content."""
    valid, test = evaluate(model, root, "valid"), evaluate(model, root, "test")
    out = Path(out)
    model.save(out)
    shutil.copy(Path(root) / VOCAB_FILE, out / VOCAB_FILE)
    np.savez(out / "test_predictions.npz", **test)  # type: ignore[arg-type]
    metrics: dict = {
        **scores(valid),
        "test": scores(test),
        "model": model_name,
        "trainset": str(Path(root).resolve()),
        "seed": seed,
        **convergence,
        "batch_size": batch_size,
        "lr": lr,
        "world": world,
        "overrides": overrides,
        "train_seconds": round(train_s, 2),
        "train_samples_per_s": round(seen / max(train_s, 1e-9), 1),
    }
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    print(
        f"{model_name} seed {seed}: valid AUC {metrics['auc']:.4f} GAUC {metrics['gauc']:.4f} logloss "
        f"{metrics['logloss']:.4f} | test AUC {metrics['test']['auc']:.4f} | {train_s:.0f} s -> {out}",
        flush=True,
    )
    return metrics


def parse_overrides(pairs: list[str]) -> dict:
    """["emb_dim=8", "use_mifu=false"] -> {"emb_dim": 8, "use_mifu": False} (values as JSON, else strings)."""
    out = {}
    for pair in pairs:
        key, _, raw = pair.partition("=")
        try:
            out[key] = json.loads(raw)
        except json.JSONDecodeError:
            out[key] = raw
        if isinstance(out[key], list):
            out[key] = tuple(out[key])
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m training.train", description=__doc__.splitlines()[0]
    )
    p.add_argument("--model", required=True)
    p.add_argument("--trainset", required=True, help="training-set directory")
    p.add_argument("--out", required=True, help="run directory to write")
    p.add_argument("--threads", type=int, default=1, help="torch threads per process")
    run_arguments(p)
    args = p.parse_args(argv)
    train(
        args.trainset,
        args.model,
        args.out,
        args.seed,
        args.epochs,
        args.batch_size,
        args.lr,
        args.max_steps,
        args.threads,
        args.patience,
        **parse_overrides(args.set),
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

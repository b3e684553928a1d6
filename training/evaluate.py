"""Evaluate a saved run on a split of a training set (runs in .venv-train): AUC, GAUC, logloss, and AUC by
item-age decile; printed and written to `<run>/eval_<split>.json`.

`python -m training.evaluate --run RUN_DIR --trainset DIR [--split test]`
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from training.loader import make_loader
from training.metrics import cold_start
from training.models import load_model
from training.train import predict, scores
from training.vocab import Vocab


def run(
    run_dir: str | Path, trainset: str | Path, split: str = "test", batch_size: int = 1024
) -> dict:
    torch.set_num_threads(1)
    run_dir = Path(run_dir)
    model = load_model(run_dir)
    pred = predict(model, make_loader(trainset, split, batch_size, vocab=Vocab.load(run_dir)))
    result = {
        "run": run_dir.name,
        "split": split,
        **scores(pred),
        "cold_start": cold_start(
            pred["label"], pred["score"], pred["item_age_s"], pred["known_item"]
        ),
    }
    (run_dir / f"eval_{split}.json").write_text(json.dumps(result, indent=2) + "\n")
    return result


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m training.evaluate", description=__doc__.splitlines()[0]
    )
    p.add_argument("--run", required=True)
    p.add_argument("--trainset", required=True)
    p.add_argument("--split", default="test", choices=("train", "valid", "test"))
    args = p.parse_args(argv)
    r = run(args.run, args.trainset, args.split)
    print(
        f"{r['run']} on {args.split}: AUC {r['auc']:.4f} GAUC {r['gauc']:.4f} logloss {r['logloss']:.4f} "
        f"({r['rows']:,} rows); new items AUC {r['cold_start']['new_items']['auc']:.4f} "
        f"({r['cold_start']['new_items']['rows']:,} rows)"
    )
    for d in r["cold_start"]["deciles"]:
        print(
            f"  item age decile {d['decile']}: <= {d['max_age_days']:8.1f} days  {d['rows']:6,} rows  "
            f"AUC {d['auc']:.4f}"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

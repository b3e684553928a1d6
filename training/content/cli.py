"""Content-model jobs: `python -m training.content.cli {pretrain,csft,evaluate} --items ... --out DIR`.

Runs in one process or under `torchrun --nproc_per_node=P` (gloo). Inputs are Parquet files read
with pandas: items (item_id, text, category, image_path: null = no image, relative paths resolve
against the items file's folder) and interactions (user_id, item_id, event_ts, rating and/or label).
Interest pairs (training/content/csft.py): training pairs from the events before the --cut-quantile
event-time cut only, held-out pairs (evaluate) with their later event at or after it.
pretrain/csft save the encoder (state_dict + config.json with its version) to --out on rank 0,
evaluate writes metrics.json; every stage writes summary.json and logs a one-line summary.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import pandas as pd  # noqa: E402

log = logging.getLogger("training.content.cli")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m training.content.cli", description=__doc__.split("\n")[0]
    )
    parser.add_argument("stage", choices=["pretrain", "csft", "evaluate"])
    parser.add_argument("--items", required=True, type=Path, help="items Parquet")
    parser.add_argument("--interactions", type=Path, help="interactions Parquet (csft, evaluate)")
    parser.add_argument("--out", required=True, type=Path, help="output folder")
    add_options(parser)
    return parser


def add_options(parser: argparse.ArgumentParser) -> None:
    """Training / evaluation options shared with `mmi content` (training/content/commands.py)."""
    parser.add_argument(
        "--ckpt", type=Path, help="encoder folder to start from (default: build a fresh one)"
    )
    parser.add_argument(
        "--epochs", type=int, default=1, help="epochs per stage (DDA and DMA each for pretrain)"
    )
    parser.add_argument("--dma-epochs", type=int, help="pretrain: DMA epochs (default: --epochs)")
    parser.add_argument(
        "--batch-size", type=int, help="items (pretrain) / pairs (csft) per worker and step"
    )
    parser.add_argument("--max-steps", type=int, default=0, help="cap steps per epoch (0 = no cap)")
    parser.add_argument(
        "--max-items", type=int, default=0, help="keep the N most engaged items (0 = all)"
    )
    parser.add_argument(
        "--max-pairs", type=int, default=0, help="keep the N latest training pairs (0 = all)"
    )
    parser.add_argument(
        "--queue-batches", type=int, default=10, help="k: batches kept in the negative queue"
    )
    parser.add_argument(
        "--lr-scale", type=float, default=1.0, help="multiplies every learning rate (OptimConfig)"
    )
    parser.add_argument("--alpha", type=float, default=0.5)
    parser.add_argument("--beta", type=float, default=0.5)
    parser.add_argument(
        "--cut-quantile",
        type=float,
        default=0.8,
        help="event-time quantile of interactions splitting training / held-out pairs (1 = none)",
    )
    parser.add_argument(
        "--pair-min-rating", type=float, default=4.0, help="interest pair: rating floor"
    )
    parser.add_argument(
        "--pair-user-quantile",
        type=float,
        default=0.8,
        help="interest pair: at least this quantile of the user's own ratings",
    )
    parser.add_argument(
        "--pair-window-days", type=float, default=14.0, help="interest pair: max days apart"
    )
    parser.add_argument(
        "--pair-partners", type=int, default=3, help="interest pair: partners per top event"
    )
    parser.add_argument(
        "--full-finetune",
        action="store_true",
        help="csft: re-encode through the trainable backbone layers every step (GPU) instead of "
        "training the heads on cached backbone features",
    )
    parser.add_argument("--k", type=int, default=10, help="recall@k")
    parser.add_argument(
        "--text-source", default="minilm", help='"minilm", "tiny" or a local model folder'
    )
    parser.add_argument(
        "--image-source",
        default="efficientnet-lite0",
        help='"efficientnet-lite0" (packaged, pretrained), "vit" (small seeded ViT) '
        "or a local ViT folder",
    )
    parser.add_argument(
        "--image-size", type=int, help="image input pixels (default: the image source's)"
    )
    parser.add_argument("--text-trainable-layers", type=int, default=1)
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--seed", type=int, default=7)


def read_items(path: Path) -> pd.DataFrame:
    items = pd.read_parquet(path)
    if "image_path" in items:

        def resolve(p):
            if p is None or p != p or not str(p).strip():
                return None
            return str(p) if Path(p).is_absolute() else str((path.parent / p).resolve())

        items["image_path"] = items["image_path"].map(resolve)
    return items


def most_engaged(items: pd.DataFrame, interactions: pd.DataFrame | None, n: int) -> pd.DataFrame:
    """The n items with the most positive events (ties and no interactions: lowest item_id)."""
    if n <= 0 or n >= len(items):
        return items
    counts = pd.Series(0, index=items["item_id"].astype("int64"))
    if interactions is not None:
        pos = interactions.loc[interactions["label"] == 1, "item_id"].value_counts()
        counts = counts.add(pos, fill_value=0).loc[counts.index]
    order = (
        counts.reset_index()
        .set_axis(["item_id", "n"], axis=1)
        .sort_values(["n", "item_id"], ascending=[False, True])
    )
    return items[items["item_id"].isin(order["item_id"].head(n))].reset_index(drop=True)


def _encoder(args):
    from training.content.encoders import EncoderConfig, MultimodalEncoder, base_encoder

    if args.ckpt:
        return MultimodalEncoder.load(args.ckpt)
    return base_encoder(
        EncoderConfig(
            dim=args.dim,
            text_source=args.text_source,
            image_source=args.image_source,
            image_size=args.image_size,
            text_trainable_layers=args.text_trainable_layers,
        ),
        seed=args.seed,
    )


def _pairs(
    args, items: pd.DataFrame, interactions: pd.DataFrame, cut
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(training, held-out) interest pairs split at `cut`, mined on all interactions (each user's own
    rating scale), then kept where both items are in `items`."""
    from training.content.csft import PairConfig, split_interest_pairs

    pair_cfg = PairConfig(
        min_rating=args.pair_min_rating,
        user_quantile=args.pair_user_quantile,
        window_days=args.pair_window_days,
        partners=args.pair_partners,
    )
    train, heldout = split_interest_pairs(interactions, cut, pair_cfg)
    known = set(items["item_id"].astype("int64"))
    train, heldout = (
        p.loc[p["query_item"].isin(known) & p["pos_item"].isin(known)].reset_index(drop=True)
        for p in (train, heldout)
    )
    if args.max_pairs > 0:
        train = train.tail(args.max_pairs).reset_index(drop=True)
    log.info(
        "interest pairs (%s, cut %s): %d train, %d held out",
        pair_cfg,
        cut,
        len(train),
        len(heldout),
    )
    return train, heldout


def time_cut(interactions: pd.DataFrame, quantile: float):
    """The event time before which C-SFT may learn: the `quantile` of event_ts (None when >= 1)."""
    return None if quantile >= 1.0 else interactions["event_ts"].quantile(quantile)


def _optim(args):
    from training.content.trainer import OptimConfig

    base = OptimConfig()
    return dataclasses.replace(
        base,
        lr_heads=base.lr_heads * args.lr_scale,
        lr_text=base.lr_text * args.lr_scale,
        lr_image=base.lr_image * args.lr_scale,
    )


def run(args) -> dict:
    """The stage on the Parquet inputs of `args`; rank 0 saves to args.out (see module doc)."""
    interactions = pd.read_parquet(args.interactions) if args.interactions else None
    return run_frames(args, read_items(args.items), interactions, args.out)


def run_frames(args, items: pd.DataFrame, interactions: pd.DataFrame | None, out: Path) -> dict:
    """Run `args.stage` on in-memory frames and save to `out` on rank 0: the encoder (pretrain,
    csft; summary.json) or metrics.json (evaluate). Pairs split at the --cut-quantile time cut."""
    from training import distributed as dist_utils

    items = most_engaged(items, interactions, args.max_items)
    if args.stage != "pretrain" and interactions is None:
        raise SystemExit(f"{args.stage} needs --interactions")
    encoder = _encoder(args)
    summary: dict = {}
    if args.stage == "pretrain":
        from training.content.pretrain import PretrainConfig, pretrain

        dma_epochs = args.epochs if args.dma_epochs is None else args.dma_epochs
        pre_cfg = PretrainConfig(
            dda_epochs=args.epochs,
            dma_epochs=dma_epochs,
            batch_size=args.batch_size or 64,
            max_steps=args.max_steps,
            seed=args.seed,
            optim=_optim(args),
        )
        summary = pretrain(encoder, items, pre_cfg)
    elif args.stage == "csft":
        from training.content.csft import CsftConfig, train_csft

        train, heldout = _pairs(
            args, items, interactions, time_cut(interactions, args.cut_quantile)
        )
        ft_cfg = CsftConfig(
            epochs=args.epochs,
            batch_size=args.batch_size or 32,
            queue_batches=args.queue_batches,
            alpha=args.alpha,
            beta=args.beta,
            cached_features=not args.full_finetune,
            max_steps=args.max_steps,
            seed=args.seed,
            optim=_optim(args),
        )
        summary = train_csft(encoder, items, train, ft_cfg) | {"heldout_pairs": len(heldout)}
    elif dist_utils.rank() == 0:
        from training.content.evaluate import embed_items, image_text_recall_at_k, interest_hits

        _, heldout = _pairs(args, items, interactions, time_cut(interactions, args.cut_quantile))
        start = time.time()
        emb = embed_items(encoder, items)
        hits = interest_hits(encoder, items, heldout, args.k, emb)
        out.mkdir(parents=True, exist_ok=True)
        hits.drop(columns="event_ts", errors="ignore").to_parquet(
            out / "interest_hits.parquet"
        )  # for paired tests
        summary = {
            "stage": "evaluate",
            "items": len(items),
            "heldout_pairs": len(heldout),
            "k": args.k,
            f"interest_recall@{args.k}": float(hits["hit"].mean()) if len(hits) else float("nan"),
            f"image_text_recall@{args.k}": image_text_recall_at_k(encoder, items, args.k, emb),
            "seconds": round(time.time() - start, 1),
        }
    if dist_utils.rank() == 0:
        out.mkdir(parents=True, exist_ok=True)
        summary["encoder_version"] = (
            encoder.save(out) if args.stage != "evaluate" else encoder.encoder_version()
        )
        name = "metrics.json" if args.stage == "evaluate" else "summary.json"
        (out / name).write_text(json.dumps(summary, indent=1, default=str))
        print(json.dumps(summary, default=str))
    dist_utils.barrier()
    return summary


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from training import distributed as dist_utils

    dist_utils.init_from_env()
    logging.basicConfig(
        level=logging.INFO,
        datefmt="%H:%M:%S",
        format=f"%(asctime)s [rank {dist_utils.rank()}] %(levelname)s %(name)s: %(message)s",
    )
    try:
        run(args)
    finally:
        dist_utils.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""`mmi content {pretrain,csft,evaluate,promote}`: the content-model stages on the project's tables.

Inputs are the Delta tables `items` and `interactions` of the config, read with deltalake into pandas
(no Spark). Each stage starts from --ckpt (a folder, or a version under <models_dir>/content), else
from the promoted encoder (cfg.encoder_dir), else from the base encoder. pretrain / csft save the new
encoder to <models_dir>/content/<encoder_version>/ (with summary.json); evaluate writes
<reports_dir>/content/<encoder_version>/metrics.json; promote makes cfg.encoder_dir a symlink to a
saved encoder (what `mmi embed items` and new-item inference then use).

Time split, the same as the CTR evaluation's: the cut is the 80% event-time quantile of the
interactions (--cut-quantile). C-SFT trains only on interest pairs mined from the events before the
cut (so their later event lies before it); the pairs whose later event is at or after the cut are the
held-out pairs that `evaluate` scores (recall@k). Pair definition: training/content/csft.py.
Under `torchrun --nproc_per_node=P -m mminterest.cli content csft ...` the stage runs on P workers.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from mminterest.cli import fail

CONTENT = "content"


def _frames(cfg):
    import pandas as pd
    from deltalake import DeltaTable

    from spark_jobs.job import require

    require(cfg, "items", "interactions")
    items = DeltaTable(cfg.table("items")).to_pandas(
        columns=["item_id", "text", "category", "image_path"]
    )
    interactions = DeltaTable(cfg.table("interactions")).to_pandas(
        columns=["user_id", "item_id", "event_ts", "rating", "label"]
    )
    interactions["event_ts"] = pd.to_datetime(interactions["event_ts"], utc=True)
    return items, interactions


def resolve_encoder(cfg, ref: str | Path | None) -> Path | None:
    """A saved encoder folder from a path or a version name; default the promoted one (None: base)."""
    if ref is None:
        return cfg.encoder_dir if (cfg.encoder_dir / "config.json").is_file() else None
    for path in (Path(ref), cfg.models_dir / CONTENT / str(ref)):
        if (path / "config.json").is_file():
            return path.resolve()
    raise FileNotFoundError(
        f"no saved encoder at {ref} (nor {cfg.models_dir / CONTENT / str(ref)})"
    )


def _stage(args) -> int:
    from mminterest.config import get_config
    from training import distributed as dist_utils
    from training.content.cli import run_frames, time_cut

    cfg = get_config()
    items, interactions = _frames(cfg)
    args.ckpt = resolve_encoder(cfg, args.ckpt)
    cut = time_cut(interactions, args.cut_quantile)
    root = (cfg.reports_dir if args.stage == "evaluate" else cfg.models_dir) / CONTENT
    staging = root / f"_staging-{os.getpid()}"
    dist_utils.init_from_env()
    try:
        summary = run_frames(args, items, interactions, staging)
    finally:
        dist_utils.shutdown()
    if dist_utils.rank() != 0:
        return 0
    final = root / summary["encoder_version"]
    if final.exists():  # same weights saved before, or a re-evaluation: keep the newest files
        shutil.rmtree(final)
    staging.rename(final)
    print(
        f"content {args.stage}: encoder {summary['encoder_version']} (from {args.ckpt or 'base encoder'}), "
        f"time cut {cut}, written {final}"
    )
    return 0


def promote(cfg, ref: str | Path) -> Path:
    """Point cfg.encoder_dir at the saved encoder `ref` (`training.runs.point_link`, as CTR models);
    return the target."""
    from training.runs import point_link

    target = resolve_encoder(cfg, ref)
    assert target is not None
    point_link(cfg.encoder_dir, target)
    return target


def _promote(args) -> int:
    from mminterest.config import get_config

    cfg = get_config()
    try:
        target = promote(cfg, args.encoder)
    except (FileNotFoundError, FileExistsError) as err:
        return fail(err)
    print(f"content promote: {cfg.encoder_dir} -> {target}")
    return 0


def compare(cfg, a: str, b: str, resamples: int = 1000) -> str:
    """Interest recall of evaluated encoder `a` minus `b` on the held-out pairs both scored, with a 95%
    bootstrap interval over users (both from `mmi content evaluate`)."""
    import pandas as pd

    from training.stats import paired_mean_difference

    frames = []
    for ref in (a, b):
        path = cfg.reports_dir / CONTENT / ref / "interest_hits.parquet"
        if not path.is_file():
            raise FileNotFoundError(
                f"no per-pair hits at {path}; run `mmi content evaluate --ckpt {ref}` first"
            )
        frames.append(pd.read_parquet(path))
    keys = ["user_id", "query_item", "pos_item"]
    both = frames[0].merge(frames[1], on=keys, suffixes=("_a", "_b"))
    d = paired_mean_difference(both["hit_a"], both["hit_b"], both["user_id"], resamples)
    return (
        f"interest recall {a} {both['hit_a'].mean():.4f} - {b} {both['hit_b'].mean():.4f} = {d.text()} "
        f"over {len(both):,} pairs of {both['user_id'].nunique():,} users: "
        f"{'shown' if d.shown else 'not shown'}"
    )


def _compare(args) -> int:
    from mminterest.config import get_config

    try:
        print(compare(get_config(), args.a, args.b))
    except FileNotFoundError as err:
        return fail(err)
    return 0


def register(sub) -> None:
    from training.content.cli import add_options

    content = sub.add_parser(
        "content", help="content encoders: pre-training, C-SFT, evaluation, promotion"
    )
    stages = content.add_subparsers(dest="stage", required=True)
    helps = {
        "pretrain": "DDA + DMA on the items table -> models/content/<version>",
        "csft": "C-SFT on interest pairs before the time cut -> models/content/<version>",
        "evaluate": "recall@k of held-out interest pairs and image-text retrieval "
        "-> reports/content/<version>",
    }
    for stage, text in helps.items():
        parser = stages.add_parser(stage, help=text)
        add_options(parser)
        parser.set_defaults(func=_stage)
    parser = stages.add_parser("promote", help="make cfg.encoder_dir point at a saved encoder")
    parser.add_argument("encoder", help="encoder folder or version under models/content")
    parser.set_defaults(func=_promote)
    parser = stages.add_parser(
        "compare", help="interest recall of evaluated encoder A minus B, 95%% CI over users"
    )
    parser.add_argument("a", help="encoder version (evaluated)")
    parser.add_argument("b", help="encoder version (evaluated)")
    parser.set_defaults(func=_compare)

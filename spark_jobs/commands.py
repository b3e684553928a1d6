"""`mmi` subcommands of the Spark jobs."""

from __future__ import annotations

from datetime import datetime

from mminterest.cli import fail


def _ingest(args) -> int:
    from spark_jobs import ingest
    from spark_jobs.job import guarded
    from spark_jobs.validation import docs_note

    def run() -> int:
        try:
            print(ingest.run(start=args.start, end=args.end).line() + docs_note())
        except ingest.BadInputError as err:
            return fail(err)
        return 0

    return guarded(run, "ingest")


def _gated(job) -> int:
    """Run a feature job; a failed gate or a missing input is a clear one-line error, exit 2; out of
    memory is one line too, exit OUT_OF_MEMORY_EXIT (`job.guarded`)."""
    from spark_jobs.feature_checks import FeatureCheckError
    from spark_jobs.job import MissingInputError, guarded
    from spark_jobs.validation import docs_note

    def run() -> int:
        try:
            print(job().line() + docs_note())
        except (FeatureCheckError, MissingInputError) as err:
            return fail(err)
        return 0

    return guarded(run)


def _behaviour(args) -> int:
    from spark_jobs import behaviour

    return _gated(lambda: behaviour.run(start=args.start, end=args.end))


def _interest(args) -> int:
    from spark_jobs import interest_features

    return _gated(lambda: interest_features.run(start=args.start, end=args.end))


def _embed_items(args) -> int:
    from spark_jobs import embed_items

    return _gated(lambda: embed_items.run(batch_size=args.batch_size, int8=args.int8))


def _items_add(args) -> int:
    from pathlib import Path

    from mminterest.config import get_config
    from serving.new_items import NewItemError, add_items

    image = Path(args.image).read_bytes() if args.image else None
    try:
        [row] = add_items(
            get_config(),
            [{"item_id": args.id, "text": args.text, "category": args.category, "image": image}],
        )
    except NewItemError as err:
        return fail(err)
    print(
        f"items add: item {row['item_id']} {row['status']}, encoder {row['encoder_version']}, "
        f"has_img {row['has_img']}"
    )
    return 0


def _window(parser, what: str) -> None:
    """--start/--end: the run's data interval (the DAG passes data_interval_start/end)."""
    parser.add_argument(
        "--start",
        type=datetime.fromisoformat,
        help=f"start of the data interval, ISO, UTC if naive (inclusive): {what}",
    )
    parser.add_argument(
        "--end",
        type=datetime.fromisoformat,
        help="end of the data interval, ISO, UTC if naive (exclusive)",
    )


def register(sub) -> None:
    ingest = sub.add_parser(
        "ingest",
        help="dataset -> Great Expectations gate -> Delta (interactions, items, quarantine)",
    )
    _window(
        ingest,
        "admit the window's events and every earlier one not yet admitted "
        "(none held: the first load); without a window, the whole dataset",
    )
    ingest.set_defaults(func=_ingest)
    build = sub.add_parser("build", help="compute a feature table (gated by Great Expectations)")
    tables = build.add_subparsers(dest="table", required=True)
    behaviour = tables.add_parser(
        "behaviour",
        help="interactions -> user_behaviour (point-in-time "
        "behaviour states; rebuilt whole without a window)",
    )
    _window(
        behaviour,
        "recompute only the users with events in the window or with events "
        "admitted since the last run, from their earliest such event on",
    )
    behaviour.set_defaults(func=_behaviour)
    interest = tables.add_parser(
        "interest",
        help="interactions + user_behaviour + item_embeddings "
        "-> interest_features (similarity sequences, interest distributions)",
    )
    _window(
        interest,
        "recompute only the rows of users with events in the window or with "
        "events (or item vectors) changed since the last run, from their earliest such event on",
    )
    interest.set_defaults(func=_interest)
    embed = sub.add_parser("embed", help="compute item embeddings").add_subparsers(
        dest="what", required=True
    )
    items = embed.add_parser(
        "items",
        help="items -> item_embeddings (img, txt, fused; only new or changed "
        "items), gated by Great Expectations",
    )
    items.add_argument("--batch-size", type=int, default=64, help="items per encoder forward pass")
    items.add_argument(
        "--int8", action="store_true", help="also report int8 storage: bytes saved, cosine error"
    )
    items.set_defaults(func=_embed_items)
    new = sub.add_parser("items", help="new items").add_subparsers(dest="action", required=True)
    add = new.add_parser(
        "add", help="embed one new item and publish it to Delta and the online store now"
    )
    add.add_argument("--id", type=int, required=True, help="item_id")
    add.add_argument("--text", required=True)
    add.add_argument("--category")
    add.add_argument("--image", help="image file (JPEG/PNG)")
    add.set_defaults(func=_items_add)

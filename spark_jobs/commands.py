"""`mmi` subcommands of the Spark jobs."""
from __future__ import annotations

import sys


def _ingest(args) -> int:
    from spark_jobs import ingest

    try:
        print(ingest.run().line())
    except ingest.BadInputError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


def _gated(job) -> int:
    """Run a feature job; a failed gate or a missing input is a clear one-line error, exit 2."""
    from spark_jobs.behaviour import MissingInputError
    from spark_jobs.feature_checks import FeatureCheckError

    try:
        print(job().line())
    except (FeatureCheckError, MissingInputError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


def _behaviour(args) -> int:
    from spark_jobs import behaviour

    return _gated(behaviour.run)


def _interest(args) -> int:
    from spark_jobs import interest_features

    return _gated(lambda: interest_features.run(start=args.start, end=args.end))


def register(sub) -> None:
    sub.add_parser("ingest", help="dataset -> Great Expectations gate -> Delta (interactions, "
                   "items, quarantine)").set_defaults(func=_ingest)
    build = sub.add_parser("build", help="compute a feature table (gated by Great Expectations)")
    tables = build.add_subparsers(dest="table", required=True)
    tables.add_parser("behaviour", help="interactions -> user_behaviour (point-in-time behaviour "
                      "states, rebuilt whole)").set_defaults(func=_behaviour)
    interest = tables.add_parser("interest", help="interactions + user_behaviour + item_embeddings "
                                 "-> interest_features (similarity sequences, interest distributions)")
    interest.add_argument("--start", help="first event_ts to (re)compute, ISO, UTC (inclusive)")
    interest.add_argument("--end", help="end of the event_ts window, ISO, UTC (exclusive)")
    interest.set_defaults(func=_interest)

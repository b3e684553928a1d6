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


def register(sub) -> None:
    sub.add_parser("ingest", help="dataset -> Great Expectations gate -> Delta (interactions, "
                   "items, quarantine)").set_defaults(func=_ingest)

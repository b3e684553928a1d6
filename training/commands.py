"""`mmi` subcommands of CTR training: trainset build (platform env) and train / evaluate / experiment
(run in .venv-train through `training.run_env`), promote."""
from __future__ import annotations

import sys


def _trainset_build(args) -> int:
    from training import trainset

    try:
        print(trainset.build(name=args.name, start=args.start, end=args.end).line())
    except (FileNotFoundError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


def register(sub) -> None:
    ts = sub.add_parser("trainset", help="point-in-time CTR training sets (Feast -> Parquet)")
    actions = ts.add_subparsers(dest="action", required=True)
    build = actions.add_parser("build", help="labelled interactions in [start, end) + ctr_training features -> "
                               "<home>/trainsets/NAME (temporal train/valid/test split, vocab.json)")
    build.add_argument("--start", help="first event_ts, ISO, UTC (inclusive)")
    build.add_argument("--end", help="end of the event_ts range, ISO, UTC (exclusive)")
    build.add_argument("--name", default="default", help="training-set name (default: %(default)s)")
    build.set_defaults(func=_trainset_build)

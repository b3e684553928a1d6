"""`mmi` command line: one entry point, subcommands import their job lazily."""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


def setup_logging(level: int = logging.INFO) -> None:
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        datefmt="%H:%M:%S")
    for noisy in ("py4j", "great_expectations", "urllib3", "filelock"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def _config_show(args) -> int:
    from mminterest.config import get_config

    cfg = get_config()
    sources = cfg.sources()
    for name, value in vars(cfg).items():
        print(f"{name:24} {value!s:60} [{sources[name]}: MMI_{name.upper()}]")
    return 0


def _ingest(args) -> int:
    from spark_jobs import ingest

    try:
        print(ingest.run().line())
    except ingest.BadInputError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


def _bench(args) -> int:
    from mminterest import bench

    if args.name is None:
        print("benchmarks: " + ", ".join(sorted(bench.BENCHMARKS)))
        return 0
    result = bench.run(args.name)
    print(json.dumps(result, indent=1))
    return 0


def build_parser() -> argparse.ArgumentParser:
    from mminterest.bench import BENCHMARKS

    parser = argparse.ArgumentParser(prog="mmi", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    config = sub.add_parser("config", help="configuration").add_subparsers(dest="action", required=True)
    config.add_parser("show", help="print the effective config").set_defaults(func=_config_show)

    sub.add_parser("ingest", help="dataset -> GE gate -> Delta (interactions, items, quarantine)"
                   ).set_defaults(func=_ingest)

    bench = sub.add_parser("bench", help="benchmarks (side by side, ratio, JSON under reports/bench): "
                           + ", ".join(sorted(BENCHMARKS)))
    bench.add_argument("name", nargs="?", choices=sorted(BENCHMARKS))
    bench.set_defaults(func=_bench)
    return parser


def main(argv: list[str] | None = None) -> int:
    setup_logging()
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())

"""`mmi` command line. Each area registers its own subcommands (`register(subparsers)` in the
modules of COMMAND_MODULES); handlers import their heavy job modules lazily."""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import os
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

COMMAND_MODULES = [
    "spark_jobs.commands",
    "feature_repo.commands",
    "training.content.commands",
    "training.commands",
    "serving.commands",
]


def fail(err: Exception) -> int:
    """An expected failure of a command (bad input, a failed gate, a missing input): one line on
    stderr, exit 2, no traceback."""
    print(f"error: {err}", file=sys.stderr)
    return 2


def setup_logging(level: int = logging.INFO) -> None:
    logging.basicConfig(
        level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S"
    )
    for noisy in ("py4j", "great_expectations", "urllib3", "filelock", "httpx"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def _config_show(args) -> int:
    from mminterest.config import get_config

    cfg = get_config()
    sources = cfg.sources()
    for name, value in cfg.model_dump().items():
        print(f"{name:24} {value!s:60} [{sources[name]}: MMI_{name.upper()}]")
    return 0


def _bench(args) -> int:
    from mminterest import bench

    if args.name is None:
        for name, target in sorted(bench.benchmarks().items()):
            print(f"{name:24} {target}")
        return 0
    print(json.dumps(bench.run(args.name), indent=1))
    return 0


def build_parser() -> argparse.ArgumentParser:
    from mminterest.bench import benchmarks

    parser = argparse.ArgumentParser(prog="mmi", description="mminterest platform")
    sub = parser.add_subparsers(dest="command", required=True)
    config = sub.add_parser("config", help="configuration").add_subparsers(
        dest="action", required=True
    )
    config.add_parser("show", help="print the effective config").set_defaults(func=_config_show)
    names = sorted(benchmarks())
    bench = sub.add_parser(
        "bench",
        help="run a benchmark (side by side, ratio, JSON under "
        "reports/bench); without NAME: list them",
        description="benchmarks: " + (", ".join(names) or "none yet"),
    )
    bench.add_argument("name", nargs="?", choices=names, metavar="NAME")
    bench.set_defaults(func=_bench)
    for module in COMMAND_MODULES:  # a missing module is an error, not a smaller CLI
        importlib.import_module(module).register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    setup_logging()
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())

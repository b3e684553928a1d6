"""Benchmark registry for `mmi bench NAME`.

Each area lists its benchmarks in a light module (`<area>/benchmarks.py`, a dict BENCHMARKS of
name -> "module:function"). A benchmark function runs its contenders side by side in one process
and returns a dict of figures including the ratio; the result is written as JSON to
`<home>/reports/bench/NAME.json`. Benchmarks never run in the test pass.
"""

from __future__ import annotations

import importlib
import json
import os
import platform
import time

from mminterest.config import get_config

AREAS = ["spark_jobs", "training", "serving"]


def benchmarks() -> dict[str, str]:
    found = {}
    for area in AREAS:
        try:
            found.update(importlib.import_module(f"{area}.benchmarks").BENCHMARKS)
        except ModuleNotFoundError as err:
            if err.name != f"{area}.benchmarks":
                raise
    return found


def run(name: str) -> dict:
    module, func = benchmarks()[name].split(":")
    started = time.time()
    figures = getattr(importlib.import_module(module), func)()
    result = {
        "benchmark": name,
        "machine": platform.platform(),
        "cpus": len(os.sched_getaffinity(0)),
        **figures,
        "wall_s": round(time.time() - started, 1),
    }
    out = get_config().reports_dir / "bench" / f"{name}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1))
    return {**result, "written_to": str(out)}

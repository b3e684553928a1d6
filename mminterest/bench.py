"""Benchmark registry for `mmi bench NAME`.

A benchmark runs its contenders side by side in one process, returns their figures and the ratio,
and is written as JSON to `<home>/reports/bench/NAME.json`. Benchmarks never run in the test pass.
"""
from __future__ import annotations

import json
import platform
import time
from collections.abc import Callable

from mminterest.config import get_config

BENCHMARKS: dict[str, str] = {  # name -> "module:function"; the function returns a dict of figures
    "ingest": "spark_jobs.benchmarks:ingest_vs_pandas",
}


def run(name: str) -> dict:
    module, func = BENCHMARKS[name].split(":")
    fn: Callable[[], dict] = getattr(__import__(module, fromlist=[func]), func)
    started = time.time()
    result = {"benchmark": name, "machine": platform.platform(), "cpus": _cpus(), **fn(),
              "wall_s": round(time.time() - started, 1)}
    out = get_config().reports_dir / "bench" / f"{name}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1))
    result["written_to"] = str(out)
    return result


def _cpus() -> int:
    import os

    return len(os.sched_getaffinity(0))

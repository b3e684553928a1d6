"""Run one Spark job module in a fresh interpreter against a given master.

A Spark session is cached per process (`get_spark` uses getOrCreate), so a job meant for another
master runs in its own process: `python -m spark_jobs.<job>` with MMI_SPARK_MASTER and MMI_HOME.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from mminterest.config import REPO_ROOT

# "<counts>, <seconds> s", then optionally " | data docs <path>" (a path of that run's home)
_SECONDS = re.compile(r"^(?P<head>.*), (?P<s>\d+(?:\.\d+)?) s(?: \| .*)?$")


class JobFailed(RuntimeError):
    """The job exited non-zero (the message carries its output tail)."""


@dataclass(frozen=True)
class JobRun:
    module: str
    master: str
    wall_s: float  # the whole process: JVM start, executors, job
    summary: str  # the job's one-line summary (last stdout line)

    @property
    def job_s(self) -> float | None:
        """Seconds the job reports in its summary line (without interpreter and JVM start)."""
        match = _SECONDS.match(self.summary)
        return float(match["s"]) if match else None

    @property
    def counts(self) -> str:
        """The summary line without its time: equal for equal work."""
        match = _SECONDS.match(self.summary)
        return match["head"] if match else self.summary


def run_job(
    module: str,
    *,
    master: str,
    home: Path,
    env: Mapping[str, str] | None = None,
    args: tuple[str, ...] = (),
    timeout: float = 600.0,
) -> JobRun:
    """`python -m module args` from the repository root with MMI_SPARK_MASTER=master,
    MMI_HOME=home and `env` on top of this process's environment; raises JobFailed on exit != 0."""
    full_env = {
        **os.environ,
        "MMI_SPARK_MASTER": master,
        "MMI_HOME": str(home),
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")])),
        **(env or {}),
    }
    started = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", module, *args],
        cwd=REPO_ROOT,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    wall = time.perf_counter() - started
    lines = proc.stdout.strip().splitlines()
    if proc.returncode != 0:
        tail = "\n".join((proc.stderr.strip().splitlines() + lines)[-30:])
        raise JobFailed(f"{module} on {master} exited {proc.returncode}:\n{tail}")
    return JobRun(module, master, round(wall, 1), lines[-1] if lines else "")

"""Wiring shared by the mminterest DAGs (not a DAG file itself: .airflowignore skips it).

Every task runs one platform entry point from the repository root, in the project's environment,
as a bash command (`spark-submit spark_jobs/<job>.py` or `mmi <command>`). Its output streams into
the task log line by line; a non-zero exit fails the task, so a Great Expectations gate that raises
(with its report path) fails the task and shows that path in the log.

Every task sees the same environment:
  MMI_LOGICAL_DATE   the run's logical date, ISO 8601 (run_after for a run without one), so a
                     cleared and re-run task sees the date of its first run
  MMI_DATA_INTERVAL_START, MMI_DATA_INTERVAL_END
                     the run's data interval, ISO 8601 (empty for a run without one); windowed
                     jobs get them as `--start/--end` (WINDOW) and process that interval only
  MMI_SPARK_MASTER   the `spark_default` connection (infra/airflow.sh creates it from the config);
                     spark-submit gets it as --master too, so both agree
  PYSPARK_PYTHON     .venv's python; PYTHONPATH starts with the repository root
  everything else of the worker's environment (MMI_HOME, MMI_DATASET_DIR, ...) unchanged
Only the standard library and Airflow are imported here: DAG files must parse in milliseconds.
"""

from __future__ import annotations

import shlex
from datetime import timedelta
from pathlib import Path

from airflow.providers.standard.operators.bash import BashOperator

REPO = Path(__file__).resolve().parents[1]

LOGICAL_DATE = "{{ (dag_run.logical_date or dag_run.run_after).isoformat() }}"
# dag_run.*: the context has no data_interval_* at all for a run without a logical date (a REST
# or UI trigger without one); StrictUndefined would fail the task
INTERVAL = {
    f"MMI_DATA_INTERVAL_{edge.upper()}": (
        f"{{{{ dag_run.data_interval_{edge}.isoformat() if dag_run.data_interval_{edge} else '' }}}}"
    )
    for edge in ("start", "end")
}
# the job's window arguments: none for a run without a data interval (the job then rebuilds whole)
WINDOW = (
    '${MMI_DATA_INTERVAL_END:+--start "$MMI_DATA_INTERVAL_START" --end "$MMI_DATA_INTERVAL_END"}'
)
WINDOW_END = '${MMI_DATA_INTERVAL_END:+--end "$MMI_DATA_INTERVAL_END"}'
SPARK_MASTER = (
    "{{ conn.spark_default.host }}"
    "{{ (':' ~ conn.spark_default.port) if conn.spark_default.port else '' }}"
)

DEFAULT_ARGS = {
    "owner": "mminterest",
    "retries": 2,
    "retry_delay": timedelta(minutes=2),
    "retry_exponential_backoff": 2.0,
    "max_retry_delay": timedelta(minutes=30),
    # a job never runs twice at once, even across a backfill and the scheduled run: every job
    # MERGEs or rewrites whole tables (DAG max_active_runs does not cover backfill runs)
    "max_active_tis_per_dag": 1,
}


def _bin(venv: str) -> str:
    return shlex.quote(str(REPO / venv / "bin"))


def _script(venv: str, what: str, command: str) -> str:
    return "\n".join(
        [
            "set -euo pipefail",
            f"export PYTHONPATH={shlex.quote(str(REPO))}${{PYTHONPATH:+:$PYTHONPATH}}",
            f"export PYSPARK_PYTHON={_bin(venv)}/python PYSPARK_DRIVER_PYTHON={_bin(venv)}/python",
            f'echo "mminterest: {what} | logical date $MMI_LOGICAL_DATE | spark $MMI_SPARK_MASTER'
            ' | home ${MMI_HOME:-default}"',
            command,
        ]
    )


def _task(task_id: str, script: str, timeout: timedelta, doc: str, **kwargs) -> BashOperator:
    return BashOperator(
        task_id=task_id,
        bash_command=script,
        cwd=str(REPO),
        append_env=True,
        env={
            "MMI_LOGICAL_DATE": LOGICAL_DATE,
            **INTERVAL,
            "MMI_SPARK_MASTER": SPARK_MASTER,
            "HF_HUB_OFFLINE": "1",
            "TRANSFORMERS_OFFLINE": "1",
        },
        execution_timeout=timeout,
        doc_md=doc,
        **kwargs,
    )


def spark_job(
    task_id: str, job: str, timeout: timedelta, doc: str, args: str = "", **kwargs
) -> BashOperator:
    """`spark-submit spark_jobs/<job>.py [args]` on the `spark_default` master, with the config's
    driver memory (a session builder cannot set it once spark-submit has started the driver JVM)."""
    app, bin_dir = f"spark_jobs/{job}.py", _bin(".venv")
    command = "\n".join(
        [
            f"mem=$({bin_dir}/python -c 'from mminterest.config import get_config; "
            "print(get_config().spark_driver_memory)')",
            f'exec {bin_dir}/spark-submit --master "$MMI_SPARK_MASTER" --driver-memory "$mem" '
            "--conf spark.log.level=WARN "
            f"--name {{{{ dag.dag_id }}}}.{{{{ task.task_id }}}} {app}"
            + (f" {args}" if args else ""),
        ]
    )
    return _task(task_id, _script(".venv", f"spark-submit {app}", command), timeout, doc, **kwargs)


def mmi(
    task_id: str, args: str, timeout: timedelta, doc: str, venv: str = ".venv", **kwargs
) -> BashOperator:
    """`mmi <args>` of the environment `venv` (.venv: platform; .venv-train: petastorm input)."""
    command = f"exec {_bin(venv)}/mmi {args}"
    return _task(task_id, _script(venv, f"mmi {args}", command), timeout, doc, **kwargs)

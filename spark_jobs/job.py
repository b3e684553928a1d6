"""What every feature job shares: its one-line summary, a clear error for a missing input, the gated
publish of its output, and one line (exit OUT_OF_MEMORY_EXIT) when it runs out of memory."""

from __future__ import annotations

import logging
import os
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass

from pyspark.sql import DataFrame

from mminterest.config import Config
from spark_jobs import delta_io

MADE_BY = {
    "interactions": "mmi ingest",
    "items": "mmi ingest",
    "user_behaviour": "mmi build behaviour",
    "item_embeddings": "mmi embed items",
}


class MissingInputError(RuntimeError):
    """An input table of a feature job does not exist yet."""


def require(cfg: Config, *tables: str) -> None:
    """Raise MissingInputError naming each absent input table and what makes it."""
    missing = [t for t in tables if not delta_io.exists(cfg.table(t))]
    if missing:
        raise MissingInputError(
            "missing input table(s): "
            + "; ".join(f"{cfg.table(t)} (made by {MADE_BY.get(t, '?')})" for t in missing)
        )


def publish(
    df: DataFrame,
    path: str,
    check: Callable[[DataFrame], object],
    job: str,
    predicate: str | None = None,
) -> tuple[int, int]:
    """Compute `df` once into staging Parquet, `check` those rows (a feature_checks gate: raises to
    publish nothing), then overwrite the table at `path`, or only its rows matching `predicate`,
    with them in one commit. Nothing is cached in memory, whatever the size. Returns (version, rows)."""
    rows = 0

    def gate(staged: delta_io.Staged) -> None:
        nonlocal rows
        rows = staged.rows
        logging.getLogger(f"mminterest.{job}").info("%s [2/3] checking %s rows", job, f"{rows:,}")
        check(staged.frame)

    return delta_io.write(df, path, mode="overwrite", predicate=predicate, gate=gate), rows


@dataclass(frozen=True)
class JobSummary:
    """Counts and time of one run of a feature job; `line()` is its one-line summary."""

    job: str
    rows_in: int
    rows_out: int
    seconds: float
    note: str = ""

    def line(self) -> str:
        note = f" ({self.note})" if self.note else ""
        return (
            f"{self.job}: rows in {self.rows_in:,}, rows out {self.rows_out:,}{note}, "
            f"{self.seconds:.1f} s"
        )


OUT_OF_MEMORY_EXIT = 3  # `mmi` exit code of a feature job that ran out of memory
_JVM_OOM_EXIT = 52  # SparkExitCode.OOM: the JVM exits with it on an OutOfMemoryError in a task
_OOM_MARKS = (
    "OutOfMemoryError",
    "Java heap space",
    "GC overhead limit exceeded",
    "Cannot allocate memory",
)
_JVM_GONE = (
    "Answer from Java side is empty",
    "Connection refused",
    "Error while sending or receiving",
    "SparkContext was shut down",
    "SparkContext has been shutdown",
    # a command running while the context stops: Spark's INTERNAL_ERROR wrapping this NPE
    'SparkContext.dagScheduler()" is null',
)
_JVM_EXIT_WAIT_S = 120  # after a fatal error in a task, Spark stops its context, then the JVM
# exits: seconds when idle, over 30 s on a loaded machine (test_out_of_memory failed at load 5-9)
_STAGE = re.compile(r"^(?P<job>[a-z][\w ]*?) \[(?P<k>\d+)/(?P<n>\d+)\] (?P<what>.*)$")


class _LastStage(logging.Handler):
    """Remembers the last progress line `<job> [k/n] <what>` a job logged."""

    def __init__(self) -> None:
        super().__init__()
        self.match: re.Match | None = None

    def emit(self, record: logging.LogRecord) -> None:
        found = _STAGE.match(record.getMessage())
        self.match = found or self.match


def guarded(run: Callable[[], int], job: str | None = None) -> int:
    """`run()`, turning an out-of-memory failure (in the Spark JVM, the Python driver or a worker)
    into ONE line on stderr naming the job (`job`, else the one of the last progress line), its
    last stage and the setting to change, exit code OUT_OF_MEMORY_EXIT, with no Py4J traceback
    cascade. Nothing is committed by then: a job's Delta commit is its last step and is atomic."""
    stages, py4j = _LastStage(), logging.getLogger("py4j")
    root, level = logging.getLogger(), py4j.level
    root.addHandler(stages)
    root.addFilter(_not_py4j)  # py4j logs its connection errors after a JVM death (on the root
    py4j.setLevel(logging.CRITICAL)  # logger too): the one line below says it
    try:
        return run()
    except (
        Exception
    ) as err:  # MemoryError is an Exception too; anything but out of memory is re-raised
        jvm = _jvm_exit_code(wait=_jvm_gone(err))
        if not (_is_oom(err) or jvm == _JVM_OOM_EXIT):
            raise
        print(f"error: {oom_line(job, stages.match, jvm)}", file=sys.stderr, flush=True)
        os._exit(
            OUT_OF_MEMORY_EXIT
        )  # not sys.exit: Spark's shutdown hooks would talk to a dead JVM
    finally:
        root.removeHandler(stages)
        root.removeFilter(_not_py4j)
        py4j.setLevel(level)


def _not_py4j(record: logging.LogRecord) -> bool:
    return f"{os.sep}py4j{os.sep}" not in record.pathname


def oom_line(job: str | None, stage: re.Match | None, jvm_exit: int | None) -> str:
    """The one-line out-of-memory message."""
    from mminterest.config import get_config

    cfg = get_config()
    job = job or (stage["job"] if stage else "feature job")
    where = (
        f"stage [{stage['k']}/{stage['n']}] {stage['what']}" if stage else "before its first stage"
    )
    died = f"; the Spark JVM exited with code {jvm_exit}" if jvm_exit is not None else ""
    partitions = (
        f"or raise MMI_SPARK_SHUFFLE_PARTITIONS above {cfg.spark_shuffle_partitions}"
        if cfg.spark_shuffle_partitions > 0
        else "or set MMI_SPARK_SHUFFLE_PARTITIONS (0 = sized from the data) to more partitions"
    )
    return (
        f"{job}: out of memory at {where} (spark_driver_memory={cfg.spark_driver_memory}{died}); "
        f"raise MMI_SPARK_DRIVER_MEMORY (e.g. {_doubled(cfg.spark_driver_memory)}) {partitions}; "
        "nothing was committed"
    )


def _doubled(memory: str) -> str:
    found = re.fullmatch(r"(\d+)([kmgt]?)b?", memory.strip().lower())
    return f"{2 * int(found[1])}{found[2]}" if found else "twice " + memory


def _chain(err: BaseException | None):
    seen = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        yield err
        err = err.__cause__ or err.__context__


def _text(err: BaseException) -> str | None:
    """str(err), None when it fails: a Py4JJavaError's str asks the JVM, which may be gone."""
    try:
        return str(err)
    except Exception:  # noqa: BLE001 (py4j raises whatever its dead connection gives)
        return None


def _is_oom(err: BaseException) -> bool:
    return any(
        isinstance(e, MemoryError) or any(m in (_text(e) or "") for m in _OOM_MARKS)
        for e in _chain(err)
    )


def _jvm_gone(err: BaseException) -> bool:
    """The error says the JVM is gone, or cannot even be turned into text (its JVM is gone)."""
    return any(
        isinstance(e, ConnectionError)
        or "Py4JNetworkError" in type(e).__name__
        or (text := _text(e)) is None
        or any(m in text for m in _JVM_GONE)
        for e in _chain(err)
    )


def _jvm_exit_code(wait: bool) -> int | None:
    """Exit code of this process's Spark JVM if it has exited (negative: killed by that signal);
    with `wait`, give it _JVM_EXIT_WAIT_S to exit."""
    import subprocess

    try:
        from pyspark import SparkContext
    except ImportError:
        return None
    proc = getattr(SparkContext._gateway, "proc", None)
    if proc is None:
        return None
    try:
        return proc.wait(_JVM_EXIT_WAIT_S) if wait else proc.poll()
    except subprocess.TimeoutExpired:
        return None

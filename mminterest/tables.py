"""Spark-free Delta tables (delta-rs): exists, read, Arrow upsert and delete, every commit retried.

Delta commits are optimistic: a writer that read version v and finds v + 1 committed by someone else
fails with `CommitFailedError` ("a concurrent transaction added new data"). `committed` re-runs the
whole write, re-reading the table's newest snapshot, with bounded exponential backoff and jitter;
after `attempts` tries it raises `CommitConflict`, and nothing of that write is in the table.
Writers in one process take turns per table (a lock), so conflicts come only from other processes.
Spark jobs commit through the same `committed` (spark_jobs/delta_io.py).
"""

from __future__ import annotations

import threading
from collections import defaultdict
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TypeVar

import pandas as pd
import pyarrow as pa
from deltalake import DeltaTable, write_deltalake
from deltalake.exceptions import CommitFailedError
from tenacity import (
    RetryError,
    Retrying,
    retry_if_exception_type,
    stop_after_attempt,
    wait_random_exponential,
)

T = TypeVar("T")
MAX_WAIT_S = 2.0
_turns: defaultdict[str, threading.Lock] = defaultdict(
    threading.Lock
)  # table path -> this process's writer


class CommitConflict(RuntimeError):
    """A write kept conflicting with concurrent commits; none of it was committed."""


def exists(path: str) -> bool:
    return DeltaTable.is_deltatable(str(path))


def committed(path: str, write: Callable[[], T], attempts: int | None = None) -> T:
    """`write()` (which must open the table afresh) retried on commit conflicts; CommitConflict when
    `attempts` tries (default: the config's delta_commit_attempts) all conflicted."""
    if attempts is None:
        from mminterest.config import get_config

        attempts = get_config().delta_commit_attempts
    retrying = Retrying(
        retry=retry_if_exception_type(CommitFailedError),
        stop=stop_after_attempt(max(1, attempts)),
        wait=wait_random_exponential(multiplier=0.05, max=MAX_WAIT_S),
    )
    try:
        with _turns[str(Path(path).resolve())]:
            return retrying(write)
    except RetryError as err:
        raise CommitConflict(
            f"Delta table {path}: {attempts} attempt(s) all conflicted with concurrent commits "
            f"({err.last_attempt.exception()})"
        ) from err


def read(
    path: str,
    columns: Sequence[str] | None = None,
    ids: Sequence[int] | None = None,
    key: str = "item_id",
) -> pd.DataFrame:
    """The table's live rows (optionally only `columns`, only rows whose `key` is in `ids`);
    empty when absent."""
    if not exists(path):
        return pd.DataFrame(columns=list(columns or []))
    filters = [(key, "in", list(ids))] if ids is not None else None
    return DeltaTable(path).to_pandas(columns=list(columns) if columns else None, filters=filters)


def schema(path: str) -> pa.Schema:
    return pa.schema(DeltaTable(path).schema().to_arrow())


def merge_arrow(
    table: pa.Table,
    path: str,
    keys: Sequence[str],
    newer: str | None = None,
    attempts: int | None = None,
) -> int:
    """Upsert `table` on `keys` (creating the table when absent); with `newer`, a matched row is only
    replaced by a source row whose `newer` column is not older (a late writer with stale content
    loses). One commit, retried on conflicts; returns the version."""
    condition = " AND ".join(f"t.`{k}` = s.`{k}`" for k in keys)

    def write() -> int:
        if not exists(path):
            write_deltalake(path, table, mode="error")  # a concurrent creator makes this a conflict
        else:
            merger = DeltaTable(path).merge(table, condition, source_alias="s", target_alias="t")
            update = f"s.`{newer}` >= t.`{newer}`" if newer else None
            merger.when_matched_update_all(predicate=update).when_not_matched_insert_all().execute()
        return DeltaTable(path).version()

    return committed(path, _creating_as_conflict(write), attempts)


def delete(path: str, key: str, ids: Sequence[int], attempts: int | None = None) -> None:
    """Delete the rows whose `key` is in `ids`; one commit, retried on conflicts."""
    if not ids or not exists(path):
        return
    predicate = f"`{key}` IN ({', '.join(str(int(i)) for i in ids)})"
    committed(path, lambda: DeltaTable(path).delete(predicate), attempts)


def _creating_as_conflict(write: Callable[[], T]) -> Callable[[], T]:
    """Two writers creating the same table at once: the loser's 'table exists' becomes a retryable
    conflict (its retry then merges into the winner's table)."""

    def attempt() -> T:
        try:
            return write()
        except Exception as err:  # deltalake raises DeltaError when the table appeared meanwhile
            if "already exists" in str(err) and not isinstance(err, CommitFailedError):
                raise CommitFailedError(str(err)) from err
            raise

    return attempt

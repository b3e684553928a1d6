"""What a windowed run recomputes, read from real Delta commits (delta-rs, no Spark): the window's
events, the rows a MERGE added, updated or removed (its rewritten old rows cancel out), and each
user's earliest such event; a vacuumed old file means a full rebuild."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pyarrow as pa
from deltalake import DeltaTable, write_deltalake

from spark_jobs import increments

SCHEMA = pa.schema(
    [
        ("user_id", pa.int64()),
        ("item_id", pa.int64()),
        ("event_ts", pa.timestamp("us", "UTC")),
        ("rating", pa.float64()),
        ("label", pa.int32()),
    ]
)


def _ts(day: str) -> pd.Timestamp:
    return pd.Timestamp(day, tz="UTC")


def _events(rows) -> pa.Table:
    return pa.Table.from_pylist(
        [
            dict(zip(SCHEMA.names, (u, i, _ts(t), r, int(r >= 4)), strict=True))
            for u, i, t, r in rows
        ],
        schema=SCHEMA,
    )


def _merged(path: str, rows) -> int:
    (
        DeltaTable(path)
        .merge(_events(rows), "t.user_id = s.user_id AND t.item_id = s.item_id", "s", "t")
        .when_matched_update_all()
        .when_not_matched_insert_all()
        .execute()
    )
    return DeltaTable(path).version()


def test_changed_rows_are_the_added_updated_and_removed_ones_not_the_rewritten(tmp_path):
    path = str(tmp_path / "interactions")
    write_deltalake(path, _events([(1, 10, "2018-09-01", 4.0), (2, 20, "2018-09-02", 3.0)]))
    # user 2's rating is updated (old and new row differ), user 3 is new; user 1's row is
    # rewritten into the new file unchanged
    now = _merged(path, [(2, 20, "2018-09-02", 5.0), (3, 30, "2018-08-20", 4.0)])

    got = increments.changed(path, 0, now, increments.EVENT_COLUMNS).to_pandas()

    assert sorted(zip(got.user_id, got.rating, strict=True)) == [(2, 3.0), (2, 5.0), (3, 4.0)]
    assert increments.changed(path, now, now, increments.EVENT_COLUMNS).num_rows == 0


def test_cutoffs_are_each_users_earliest_event_in_the_window(tmp_path):
    path = str(tmp_path / "interactions")
    write_deltalake(
        path,
        _events(
            [
                (1, 10, "2018-09-01", 4.0),  # before the window
                (1, 11, "2018-09-03", 2.0),
                (1, 12, "2018-09-02 12:00", 5.0),
                (2, 20, "2018-09-04", 3.0),  # at the window's end: outside
            ]
        ),
    )
    where = increments.window_filter("2018-09-02", "2018-09-04")

    cut = increments.cutoffs(increments._events(path, 0, where))

    assert cut == {1: _ts("2018-09-02 12:00")}
    assert set(
        increments.cutoffs(increments._events(path, 0, increments.window_filter(None, None)))
    ) == {1, 2}


def test_a_vacuumed_old_file_means_no_change_set(tmp_path):
    path = str(tmp_path / "interactions")
    write_deltalake(path, _events([(1, 10, "2018-09-01", 4.0)]))
    [old] = DeltaTable(path).file_uris()
    now = _merged(path, [(1, 10, "2018-09-01", 2.0)])
    Path(old.removeprefix("file://")).unlink()

    assert increments.changed(path, 0, now, increments.EVENT_COLUMNS) is None

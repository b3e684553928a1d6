"""A home's Delta tables read whole, sorted by their keys, and compared row for row: the check behind
"backfill = rebuild" and "a re-run leaves the tables unchanged" (tests/integration/test_windows.py,
`mmi bench daily-increment`, infra/backfill_proof.py)."""

from __future__ import annotations

from collections.abc import Iterable

import pandas as pd

from mminterest.config import Config

KEYS = {  # table -> the columns that order its rows (a unique key)
    "interactions": ["user_id", "item_id", "event_ts"],
    "items": ["item_id"],
    "quarantine": ["source", "record_hash"],
    "item_embeddings": ["item_id"],
    "user_behaviour": ["user_id", "event_ts"],
    "interest_features": ["user_id", "item_id", "event_ts"],
}


def snapshot(cfg: Config, tables: Iterable[str] = KEYS) -> dict[str, pd.DataFrame]:
    """Each of `tables` (names in KEYS) of `cfg`'s home as one frame, sorted by its key."""
    from deltalake import DeltaTable

    return {
        t: DeltaTable(cfg.table(t)).to_pandas().sort_values(KEYS[t]).reset_index(drop=True)
        for t in tables
    }


def differences(got: dict[str, pd.DataFrame], want: dict[str, pd.DataFrame]) -> dict[str, str]:
    """Table -> the first line of how `got` differs from `want` (missing, rows, values); {} when
    every table is equal, row for row."""
    out = {}
    for name in sorted(set(got) | set(want)):
        if name not in got or name not in want:
            out[name] = "missing in " + ("got" if name not in got else "want")
            continue
        try:
            pd.testing.assert_frame_equal(got[name], want[name], obj=name)
        except AssertionError as err:
            out[name] = (
                f"{len(got[name]):,} vs {len(want[name]):,} rows; "
                + " ".join(str(err).split())[:500]
            )
    return out


def assert_equal(got: dict[str, pd.DataFrame], want: dict[str, pd.DataFrame]) -> None:
    """Fail with every differing table unless `got` equals `want` table by table, row for row."""
    diff = differences(got, want)
    assert not diff, diff

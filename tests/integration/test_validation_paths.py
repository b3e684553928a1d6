"""A small frame is validated on pandas, a large one on Spark: both paths fail the same rows for the
same reasons (ingest quarantines them with those reasons; a feature gate refuses the same rows)."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from spark_jobs.expectations import interaction_checks
from spark_jobs.feature_checks import KEY, behaviour_checks, behaviour_frame
from spark_jobs.validation import run_suite, split_failed

T0 = datetime(2018, 9, 1, tzinfo=UTC)
EVENTS = [  # _rid, user_id, item_id, event_ts, rating, item_known, first_of_key
    (0, 1, 10, T0, 4.0, True, True),
    (1, None, 10, T0, 4.0, True, True),
    (2, 1, None, T0, 4.0, False, True),
    (3, 1, 11, None, 4.0, True, True),
    (4, 1, 12, datetime(1970, 1, 2, tzinfo=UTC), 4.0, True, True),
    (5, 1, 13, datetime(2999, 1, 1, tzinfo=UTC), 9.0, True, True),
    (6, 1, 14, T0, None, True, True),
    (7, 1, 99, T0, 3.0, False, True),
    (8, 1, 10, T0, 4.0, True, False),
]
EVENT_SCHEMA = (
    "_rid long, user_id long, item_id long, event_ts timestamp, rating double, "
    "item_known boolean, first_of_key boolean"
)
STATES = [  # user_id, event_ts, hist_item_ids, hist_ts, hist_len
    (1, datetime(2018, 9, 1, 0, 0, 1, tzinfo=UTC), [5, 4], [1535760000, 1535750000], 2),
    (1, datetime(2018, 9, 1, 0, 0, 1, tzinfo=UTC), [5, 4], [1535760000, 1535750000], 2),
    (2, datetime(2018, 9, 1, tzinfo=UTC), [7], [1535760000], 1),
    (3, datetime(2018, 9, 2, tzinfo=UTC), [8, 9], [1535750000, 1535760000], 2),
    (4, datetime(2018, 9, 2, tzinfo=UTC), [8, 9], [1535750000, 1535740000], 3),
]
STATE_SCHEMA = (
    "user_id long, event_ts timestamp, hist_item_ids array<long>, hist_ts array<long>, hist_len int"
)


def _both(df, name, checks, id_col, tmp_path):
    """{path: failed ids (sorted) per reason} of the Spark and the pandas path."""
    out = {}
    for path, limit in (("spark", 0), ("pandas", 1000)):
        result = run_suite(df, f"{name}_{path}", checks, id_col, tmp_path / "validation", limit)
        assert result.docs_page is not None and result.docs_page.is_file()
        out[path] = (result, {r: sorted(ids) for r, ids in result.failed_ids.items()})
    return out


@pytest.mark.parametrize("events", [True, False], ids=["ingest", "feature_gate"])
def test_pandas_and_spark_paths_fail_the_same_rows_for_the_same_reasons(spark, tmp_path, events):
    if events:
        df = spark.createDataFrame(EVENTS, EVENT_SCHEMA)
        checks, id_col = interaction_checks(0.5, 5.0, now=T0), "_rid"
    else:
        df = behaviour_frame(spark.createDataFrame(STATES, STATE_SCHEMA))
        checks, id_col = behaviour_checks(seq_len=2), KEY
    got = _both(df, "paths", checks, id_col, tmp_path)
    assert got["pandas"][1] == got["spark"][1]
    assert not got["pandas"][0].success and len(got["pandas"][1]) >= 4
    if events:  # every crafted row is blamed for its own reason; quarantine takes the first
        assert got["pandas"][1] == {
            "missing or non-integer user_id": [1],
            "missing or non-integer item_id": [2],
            "unparsable timestamp": [3],
            "timestamp out of range": [4, 5],
            "missing or non-numeric rating": [6],
            "rating out of range [0.5, 5.0]": [5],
            "unknown item_id": [2, 7],
            "duplicate event": [8],
        }
        split = {
            path: sorted(
                (r["_rid"], r["reason"], tuple(r["checks"]))
                for r in split_failed(df, result, checks, id_col)[1].collect()
            )
            for path, (result, _) in got.items()
        }
        assert split["pandas"] == split["spark"] and len(split["pandas"]) == 8

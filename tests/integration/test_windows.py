"""Daily windows on a slice of the real data (the last days of the dataset, replayed as a stream):
consecutive daily runs of ingest -> behaviour -> interest features, with an event that arrives
late (in the last day's source, stamped days earlier), leave interactions and items equal to the
source's events before the last day's end, and user_behaviour and interest_features equal, row for
row, to a full rebuild from those interactions; a run admits nothing at or after its window's end;
re-running a day leaves the tables unchanged; an unchanged catalogue is not read again, a changed
one is; from an unchanged events source only the events since the last window are candidates.
No posters: the slice needs no image suite."""

from __future__ import annotations

import shutil

import pandas as pd
import pytest
from deltalake import DeltaTable

from mminterest.config import load_config
from spark_jobs import behaviour, delta_io, increments, ingest, interest_features
from spark_jobs.table_compare import KEYS, assert_equal, snapshot
from tests.conftest import REAL_DATASET
from tests.integration.test_interest_features import write_embeddings

USERS = {73, 251, 624}  # 251 and 624 rate on the last days; 73 last rated on 2016-10-10
DAYS = [pd.Timestamp(d, tz="UTC") for d in ("2016-10-14", "2016-10-15", "2016-10-16")]
DAY = pd.Timedelta(days=1)
# arrives with the last day's source, stamped before user 73's events of 2016-10-10 (a positive:
# every later state and row of user 73 changes, and user 73 has no event in the last window)
LATE = "73,1,5.0," + str(int(pd.Timestamp("2016-10-09 12:00", tz="UTC").timestamp()))
TABLES = {t: KEYS[t] for t in KEYS if t != "item_embeddings"}  # written once, up front
DERIVED = ("user_behaviour", "interest_features")


def _dataset(root, late: bool):
    """The slice's users' real ratings (plus LATE) and the movies they name."""
    root.mkdir(parents=True)
    ratings = (REAL_DATASET / "ratings.csv").read_text().splitlines()
    mine = [r for r in ratings[1:] if int(r.split(",")[0]) in USERS]
    (root / "ratings.csv").write_text(
        "\n".join(ratings[:1] + mine + ([LATE] if late else [])) + "\n"
    )
    ids = {r.split(",")[1] for r in mine}
    movies = (REAL_DATASET / "movies.csv").read_bytes().splitlines()
    (root / "movies.csv").write_bytes(
        b"\n".join(movies[:1] + [m for m in movies[1:] if m.split(b",", 1)[0].decode() in ids])
        + b"\n"
    )
    header = (REAL_DATASET / "posters_index.csv").read_text().splitlines()[0]
    (root / "posters_index.csv").write_text(header + "\n")
    return root


def _cfg(home, dataset):
    return load_config(
        home=home, dataset_dir=dataset, spark_master="local[2]", spark_shuffle_partitions=4
    )


def _day(spark, cfg, start, end):
    """One daily run of the feature jobs (embeddings: written once, before the first run)."""
    summary = ingest.run(cfg, spark, start=start, end=end)
    if not DeltaTable.is_deltatable(cfg.table("item_embeddings")):
        write_embeddings(spark, cfg, delta_io.read(spark, cfg.table("items")).toPandas()["item_id"])
    behaviour.run(cfg, spark, start=start, end=end)
    interest_features.run(cfg, spark, start=start, end=end)
    return summary


def _source_events(dataset, end) -> pd.DataFrame:
    """The interactions a full ingest up to `end` admits, read with pandas."""
    raw = pd.read_csv(dataset / "ratings.csv")
    events = pd.DataFrame(
        {
            "user_id": raw.userId,
            "item_id": raw.movieId,
            "event_ts": pd.to_datetime(raw.timestamp, unit="s", utc=True).astype(
                "datetime64[us, UTC]"
            ),
            "rating": raw.rating,
            "label": (raw.rating >= 4).astype("int32"),
        }
    )
    return events[events.event_ts < end].sort_values(TABLES["interactions"]).reset_index(drop=True)


@pytest.fixture(scope="module")
def runs(spark, tmp_path_factory):
    """(daily cfg after the three daily runs, a cfg holding a full rebuild of the derived tables
    from the same interactions and item vectors, the daily ingest summaries, the late dataset)."""
    root = tmp_path_factory.mktemp("windows")
    base, late = _dataset(root / "base", late=False), _dataset(root / "late", late=True)
    daily = _cfg(
        root / "daily", base
    )  # the first window is the first load: everything before its end
    summaries = [_day(spark, daily, day, day + DAY) for day in DAYS[:-1]]
    daily = _cfg(root / "daily", late)  # the last day's source holds the late event
    summaries.append(_day(spark, daily, DAYS[-1], DAYS[-1] + DAY))
    full = _cfg(root / "full", late)
    for name in ("interactions", "item_embeddings"):
        shutil.copytree(daily.table(name), full.table(name))
    behaviour.run(full, spark)
    interest_features.run(full, spark)
    return daily, full, summaries, late


def test_daily_windows_with_a_late_event_equal_one_full_run(runs):
    daily, full, summaries, late = runs
    got = snapshot(daily, TABLES)
    assert_equal({t: got[t] for t in DERIVED}, snapshot(full, DERIVED))
    events = _source_events(late, DAYS[-1] + DAY)
    pd.testing.assert_frame_equal(got["interactions"], events, check_dtype=False)
    first_seen = events.groupby("item_id").event_ts.min()
    items = got["items"].set_index("item_id")
    assert (items.first_seen_ts.reindex(first_seen.index) == first_seen).all()
    assert items.first_seen_ts.isna().sum() == len(items) - len(first_seen)
    assert got["quarantine"].empty
    # each later day admitted its own events only, the last one the late event too
    for day, summary in zip(DAYS[1:], summaries[1:]):
        in_day = ((events.event_ts >= day) & (events.event_ts < day + DAY)).sum()
        assert summary.written["interactions"] == in_day + (day == DAYS[-1]), day
        assert summary.rows_in["items"] == 0  # the catalogue is held: not validated again
    assert summaries[0].skipped["interactions"] == ((events.event_ts >= DAYS[0] + DAY).sum())
    # the second day's source is the first's, unchanged: only events from the first day's end on
    # were candidates; the last day's source changed (the late event): all were compared
    assert [s.held_before for s in summaries] == ["", str(DAYS[1]), ""]
    # the late event is seen by user 73's later rows, which the last window does not contain
    rows = got["interest_features"]
    user73 = rows[rows.user_id == 73].sort_values("event_ts")
    assert user73.event_ts.max() < DAYS[-1] and user73.hist_len.iloc[-1] > 0
    states = got["user_behaviour"]
    assert 1 in states[states.user_id == 73].sort_values("event_ts").hist_item_ids.iloc[-1]


def test_rerunning_a_day_leaves_the_tables_unchanged(runs, spark):
    daily = runs[0]
    before = snapshot(daily, TABLES)
    summary = _day(spark, daily, DAYS[1], DAYS[1] + DAY)
    assert summary.written["interactions"] == 0
    assert summary.held_before == str(DAYS[-1] + DAY)  # a re-run does not move the mark back
    assert_equal(snapshot(daily, TABLES), before)


def test_nothing_new_and_no_window_event_writes_nothing(runs, spark):
    """A window with no event and nothing admitted since the last run commits nothing."""
    daily = runs[0]
    versions = {t: DeltaTable(daily.table(t)).version() for t in TABLES}
    later = DAYS[-1] + 30 * DAY
    _day(spark, daily, later, later + DAY)
    assert {t: DeltaTable(daily.table(t)).version() for t in TABLES} == versions
    assert (
        increments.consumed(
            daily,
            "interest_features",
            {
                "seq_len": daily.seq_len,
                "time_slices": daily.time_slices,
                "sim_bins": daily.sim_bins,
            },
        )
        is not None
    )


def test_an_unchanged_catalogue_is_not_read_again_and_a_changed_one_is(runs, spark, tmp_path):
    daily, _, _, late = runs
    home, dataset = tmp_path / "home", tmp_path / "dataset"
    shutil.copytree(daily.home, home)  # the module's home stays as the other tests left it
    cfg = _cfg(home, late)
    items = snapshot(cfg, {"items": TABLES["items"]})
    again = ingest.run(cfg, spark, start=DAYS[-1], end=DAYS[-1] + DAY)
    assert not again.catalogue_read and again.rows_in["items"] == 0, again.line()
    assert "catalogue unchanged" in again.line()
    assert_equal(snapshot(cfg, {"items": TABLES["items"]}), items)

    shutil.copytree(late, dataset)
    movies = (dataset / "movies.csv").read_text().splitlines()
    item_id, rest = movies[1].split(",", 1)
    movies[1] = f"{item_id},Renamed (2016),{rest.rsplit(',', 1)[1]}"
    (dataset / "movies.csv").write_text("\n".join(movies) + "\n")
    changed = ingest.run(_cfg(home, dataset), spark, start=DAYS[-1], end=DAYS[-1] + DAY)
    assert changed.catalogue_read and changed.rows_in["items"] == 1, changed.line()
    renamed = delta_io.read(spark, cfg.table("items")).where(f"item_id = {item_id}").first()
    assert renamed is not None and renamed["title"] == "Renamed (2016)"

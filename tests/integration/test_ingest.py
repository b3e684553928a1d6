"""Ingest on a slice of the real data plus crafted bad rows: every bad row lands in quarantine
with the right reason, good + quarantined = input, re-runs are idempotent, the threshold holds."""

from __future__ import annotations

import json
import shutil

import pytest
from deltalake import DeltaTable

from mminterest.config import load_config
from spark_jobs import delta_io, ingest
from tests.conftest import REAL_DATASET

BAD_RATINGS = {
    ",31,2.5,1260759144": "missing or non-integer user_id",
    "1,abc,2.5,1260759144": "missing or non-integer item_id",
    "1,31,2.5,yesterday": "unparsable timestamp",
    "1,31,2.5,99999999999": "timestamp out of range",
    "1,31,7.0,1260759999": "rating out of range [0.5, 5.0]",
    "1,31,,1260759998": "missing or non-numeric rating",
    "1,99999999,3.0,1260759144": "unknown item_id",
}
BAD_MOVIES = {
    b",Nameless (2000),Drama": "missing or non-integer item_id",
    b"999001,,Drama": "missing title",
    b"999002," + b"x" * 3000 + b",Drama": "oversized text (> 2000 chars)",
    b"999003,Caf\xe9 Society (2001),Drama": "non-UTF-8 text",
    b"1,Toy Story again (1995),Comedy": "duplicate item_id",
}
N_RATINGS, N_POSTERS = 3000, 25
N_MOVIES = len((REAL_DATASET / "movies.csv").read_bytes().splitlines()) - 1


@pytest.fixture
def dataset(tmp_path):
    """A dataset folder: heads of the real CSVs, real posters (linked), and crafted bad rows."""
    root = tmp_path / "data"
    (root / "posters").mkdir(parents=True)
    ratings = (REAL_DATASET / "ratings.csv").read_text().splitlines()[: N_RATINGS + 1]
    (root / "ratings.csv").write_text("\n".join(ratings + list(BAD_RATINGS) + [ratings[1]]) + "\n")
    movies = (REAL_DATASET / "movies.csv").read_bytes().splitlines()[: N_MOVIES + 1]
    (root / "movies.csv").write_bytes(b"\n".join(movies + list(BAD_MOVIES)) + b"\n")
    index = (REAL_DATASET / "posters_index.csv").read_text().splitlines()[: N_POSTERS + 1]
    for line in index[1:]:
        path = line.split(",")[-2]
        (root / path).symlink_to(REAL_DATASET / path)
    (root / "posters" / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0 this is not a jpeg")
    extra = [
        "5000,A,A,exact,posters/missing.jpg,1",
        "5001,B,B,exact,posters/corrupt.jpg,1",
        "888888,C,C,exact,posters/1.jpg,1",
    ]
    (root / "posters_index.csv").write_text("\n".join(index + extra) + "\n")
    return root


def _quarantine(cfg):
    return DeltaTable(cfg.table("quarantine")).to_pandas()


def _state(cfg):
    return {
        t: DeltaTable(cfg.table(t)).to_pandas().sort_values(keys).reset_index(drop=True)
        for t, keys in [
            ("interactions", ["user_id", "item_id", "event_ts"]),
            ("items", ["item_id"]),
            ("quarantine", ["source", "record_hash"]),
        ]
    }


def test_bad_rows_are_quarantined_with_reasons(spark, cfg, dataset):
    cfg = load_config(home=cfg.home, dataset_dir=dataset, max_bad_fraction=0.2)
    summary = ingest.run(cfg, spark)

    q = _quarantine(cfg)
    reasons = {
        src: sorted(q[q.source == src].reason) for src in ("interactions", "items", "images")
    }
    assert reasons["interactions"] == sorted(list(BAD_RATINGS.values()) + ["duplicate event"])
    assert reasons["items"] == sorted(BAD_MOVIES.values())
    assert reasons["images"] == [
        "corrupt image file",
        "image of unknown item_id",
        "missing image file",
    ]
    # each crafted rating is quarantined under its own reason (matched on its raw fields)
    for line, reason in BAD_RATINGS.items():
        user, item, rating, ts = (v or None for v in line.split(","))
        rows = [json.loads(r) for r in q[q.reason == reason].record]
        assert {"userId": user, "movieId": item, "rating": rating, "timestamp": ts} in [
            {k: r.get(k) for k in ("userId", "movieId", "rating", "timestamp")} for r in rows
        ]

    # nothing lost: good + quarantined = input, per source
    assert summary.rows_in == {
        "interactions": N_RATINGS + len(BAD_RATINGS) + 1,
        "items": N_MOVIES + len(BAD_MOVIES),
        "images": N_POSTERS + 3,
    }
    for src, n in summary.rows_in.items():
        assert summary.written[src] + summary.quarantined[src] == n
        assert q[q.source == src].copies.sum() == summary.quarantined[src]
    assert len(DeltaTable(cfg.table("interactions")).to_pandas()) == summary.written["interactions"]
    # the tables read back in Spark too, with the canonical schema
    items = delta_io.read(spark, cfg.table("items"))
    assert items.columns == ["item_id", "title", "text", "category", "image_path", "first_seen_ts"]
    assert items.where("image_path IS NOT NULL").count() == N_POSTERS
    events = delta_io.read(spark, cfg.table("interactions")).toPandas()
    assert set(events.label) == {0, 1} and ((events.rating >= 4) == (events.label == 1)).all()


def test_rerun_is_idempotent(spark, cfg, dataset):
    cfg = load_config(home=cfg.home, dataset_dir=dataset, max_bad_fraction=0.2)
    ingest.run(cfg, spark)
    first = _state(cfg)
    ingest.run(cfg, spark)
    second = _state(cfg)
    for name in first:
        assert first[name].equals(second[name]), name
    assert len(second["interactions"]) == N_RATINGS  # the duplicate was not added twice


def test_too_many_bad_rows_fails_and_leaves_good_tables(spark, cfg, dataset):
    cfg = load_config(home=cfg.home, dataset_dir=dataset, max_bad_fraction=0.2)
    ingest.run(cfg, spark)
    versions = {t: DeltaTable(cfg.table(t)).version() for t in ("interactions", "items")}
    shutil.copy(dataset / "ratings.csv", dataset / "ratings.orig")
    rows = (dataset / "ratings.csv").read_text().splitlines()
    (dataset / "ratings.csv").write_text("\n".join(rows + ["x,y,z,w"] * 400) + "\n")
    with pytest.raises(ingest.BadInputError, match="max_bad_fraction"):
        ingest.run(load_config(home=cfg.home, dataset_dir=dataset, max_bad_fraction=0.05), spark)
    assert {t: DeltaTable(cfg.table(t)).version() for t in versions} == versions
    assert (_quarantine(cfg).copies.sum()) >= 400  # the bad rows are kept, not lost

"""Chunked reads of the feature tables: `mmi trainset build` in slices of users equals the one-slice
build row for row (slices follow the data size, one train row group each), and the streamed
newest-row-per-key selection of materialisation equals the whole-table one, ties included."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
from deltalake import write_deltalake
from feast import FileSource
from feast.data_format import DeltaFormat

from feature_repo import delta_offline_store, repo
from feature_repo.store_config import open_store
from mminterest import synthetic_tables
from mminterest.config import load_config
from training import trainset

T0 = pd.Timestamp("2020-01-01", tz="UTC")
DIMS = {"img": 6, "txt": 5, "fused": 4}
KEYS = ["user_id", "item_id", "event_ts"]


@pytest.fixture(scope="module")
def home(tmp_path_factory):
    """(cfg, store) over small synthetic Delta tables: 12 users, 480 labelled rows; T=8, l=2, n=4."""
    cfg = load_config(
        home=tmp_path_factory.mktemp("chunks") / "mmi", seq_len=8, time_slices=2, sim_bins=4
    )
    interactions = synthetic_tables.random_interactions(
        users=12, items=40, rows=480, start=T0, seed=5
    )
    synthetic_tables.write_ingested(cfg, interactions, ["G|X"] * 40)
    synthetic_tables.write_tables(cfg, interactions, DIMS, without_img=[2])
    store = open_store(cfg)
    repo.apply(store)
    return cfg, store


def _split(summary, split) -> pd.DataFrame:
    frame = pq.read_table(f"{summary.path}/{split}").to_pandas()
    return frame.sort_values(KEYS, kind="stable").reset_index(drop=True)


def _cells(column: pd.Series) -> list:
    return column.map(lambda v: np.asarray(v).tolist()).tolist()


def test_sliced_trainset_equals_the_one_slice_build(home):
    cfg, _ = home
    whole = trainset.build(cfg, name="whole")
    sliced = trainset.build(cfg.model_copy(update={"trainset_chunk_rows": 60}), name="sliced")
    coarse = trainset.build(cfg.model_copy(update={"trainset_chunk_rows": 200}), name="coarse")
    assert whole.slices == 1  # slices follow the rows: about rows / chunk (users never split)
    assert abs(coarse.slices - 480 / 200) <= 1 and abs(sliced.slices - 480 / 60) <= 1
    assert sliced.rows == whole.rows and sliced.cuts == whole.cuts
    for split in trainset.SPLITS:
        a, b = _split(whole, split), _split(sliced, split)
        pd.testing.assert_frame_equal(a[KEYS], b[KEYS])
        assert list(a.columns) == list(b.columns)
        for column in a.columns:  # list cells compared as lists
            assert _cells(a[column]) == _cells(b[column]), (split, column)
    groups = pq.ParquetFile(f"{sliced.path}/train/part-00000.parquet").num_row_groups
    assert groups == sliced.slices  # one row group per slice (each < ROW_GROUP train rows)


def test_streamed_newest_row_per_key_equals_the_whole_table_one(home, tmp_path, monkeypatch):
    cfg, store = home
    rows = synthetic_tables.behaviour_states(
        synthetic_tables.random_interactions(users=9, items=20, rows=300, start=T0, seed=2),
        cfg.seq_len,
    )[["user_id", "event_ts", "hist_len"]]
    ties = rows.groupby("user_id").tail(1).assign(hist_len=-1)  # same key and time, later row
    table = pd.concat([rows, ties], ignore_index=True)
    write_deltalake(tmp_path / "states", table)
    source = FileSource(
        name="states",
        path=str(tmp_path / "states"),
        file_format=DeltaFormat(),
        timestamp_field="event_ts",
    )
    monkeypatch.setattr(delta_offline_store, "_BATCH_ROWS", 7)  # many batches, many reductions
    got = (
        delta_offline_store.DeltaOfflineStore.pull_latest_from_table_or_query(
            store.config, source, ["user_id"], ["hist_len"], "event_ts", None
        )
        .to_df()
        .sort_values("user_id", ignore_index=True)
    )
    want = (
        table.sort_values("event_ts", kind="stable")
        .drop_duplicates("user_id", keep="last")
        .sort_values("user_id", ignore_index=True)
    )
    assert len(got) == table.user_id.nunique() == 9 and (got.hist_len == -1).all()
    pd.testing.assert_frame_equal(got[want.columns], want, check_dtype=False)

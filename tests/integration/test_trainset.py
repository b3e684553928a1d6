"""`mmi trainset build` over small synthetic Delta tables and a real Feast store: every labelled row kept,
temporal split without overlap, vocabulary from the train part only, features point-in-time."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from feature_repo import repo
from feature_repo.store_config import open_store
from mminterest import synthetic_tables
from mminterest.config import load_config
from training import trainset
from training.vocab import Vocab

T0 = pd.Timestamp("2020-01-01", tz="UTC")
DIMS = {"img": 6, "txt": 5, "fused": 4}


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """(cfg, interactions, summary) for a built training set; T=8, l=2, n=4."""
    cfg = load_config(
        home=tmp_path_factory.mktemp("ts") / "mmi", seq_len=8, time_slices=2, sim_bins=4
    )
    interactions = synthetic_tables.random_interactions(
        users=8, items=40, rows=400, start=T0, seed=3
    )
    synthetic_tables.write_ingested(cfg, interactions, [f"G{i % 3}|X" for i in range(1, 41)])
    synthetic_tables.write_tables(cfg, interactions, DIMS, without_img=[2])
    repo.apply(open_store(cfg))
    return cfg, interactions, trainset.build(cfg, name="t1")


def read(summary, split) -> pd.DataFrame:
    return pq.read_table(f"{summary.path}/{split}").to_pandas()


def test_every_row_once_in_time_ordered_splits(built):
    cfg, interactions, summary = built
    parts = {s: read(summary, s) for s in trainset.SPLITS}
    assert sum(len(p) for p in parts.values()) == len(interactions) == sum(summary.rows.values())
    assert len(parts["train"]) == pytest.approx(0.8 * len(interactions), abs=5)
    assert parts["train"].event_ts.max() < parts["valid"].event_ts.min()
    assert parts["valid"].event_ts.max() < parts["test"].event_ts.min()

    def keys(frame):
        return sorted(
            zip(
                frame.user_id,
                frame.item_id,
                frame.event_ts.map(pd.Timestamp.isoformat),
                frame.label,
            )
        )

    assert keys(pd.concat(parts.values())) == keys(interactions)
    assert "trainset t1: rows 400" in summary.line()
    cuts = [pd.Timestamp(c) for c in summary.cuts]
    assert parts["train"].event_ts.max() < cuts[0] <= parts["valid"].event_ts.min()
    assert parts["valid"].event_ts.max() < cuts[1] <= parts["test"].event_ts.min()


def test_vocab_comes_from_the_train_part(built):
    cfg, _, summary = built
    train, test = read(summary, "train"), read(summary, "test")
    vocab = Vocab.load(summary.path)
    assert (
        vocab.n_users - 1 == train.user_id.nunique()
        and vocab.n_items - 1 == train.item_id.nunique()
    )
    unseen = np.setdiff1d(test.item_id.unique(), train.item_id.unique())
    assert (vocab.item_index(unseen) == 0).all()
    assert (vocab.item_cat(test.item_id.to_numpy()) > 0).all()  # categories known for every item


def test_features_are_point_in_time(built):
    cfg, interactions, summary = built
    rows = pd.concat([read(summary, s) for s in trainset.SPLITS]).reset_index(drop=True)
    states = synthetic_tables.behaviour_states(interactions, cfg.seq_len)
    for _, row in rows.iloc[::13].iterrows():
        mine = states[(states.user_id == row.user_id) & (states.event_ts <= row.event_ts)]
        want = mine.iloc[-1].hist_item_ids if len(mine) else []
        assert list(row.hist_item_ids[: row.hist_len]) == want
        assert list(row.hist_mask) == [i < len(want) for i in range(cfg.seq_len)]
        assert len(row.dist_img) == 8 and len(row.target_mm) == DIMS["fused"]
    assert (rows.item_age_s >= 0).all() and rows.category.str.startswith("G").all()
    item_mm = pq.read_table(f"{summary.path}/item_mm").to_pandas().set_index("item_id")
    row = rows.iloc[-1]
    assert np.allclose(row.target_mm, item_mm.loc[row.item_id, "fused"])

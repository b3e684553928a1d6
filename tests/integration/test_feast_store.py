"""The Feast project over real Delta tables: generated config, both correctness traps of DESIGN.md,
point-in-time training sets, materialisation and the online read path (SQLite online store)."""

from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pytest
from deltalake import DeltaTable
from feast import FeatureStore, RepoConfig

from feature_repo import repo
from feature_repo.delta_offline_store import CLASS_PATH
from feature_repo.store_config import open_store, repo_config
from mminterest import synthetic_tables
from mminterest.config import load_config
from serving.online import OnlineFeatures
from training.training_frame import get_training_frame

T0 = pd.Timestamp("2020-01-01", tz="UTC")
DIMS = {"img": 6, "txt": 5, "fused": 4}
NO_IMG = [2, 3]


@pytest.fixture
def built(tmp_path):
    """(cfg, applied store, interactions) over small synthetic Delta tables; T=8, l=4, n=5."""
    cfg = load_config(home=tmp_path / "mmi", seq_len=8, time_slices=4, sim_bins=5)
    interactions = synthetic_tables.random_interactions(
        users=6, items=30, rows=200, start=T0, seed=1
    )
    synthetic_tables.write_tables(cfg, interactions, DIMS, without_img=NO_IMG)
    store = open_store(cfg)
    repo.apply(store)
    return cfg, store, interactions


def _reader(cfg, store) -> OnlineFeatures:
    return OnlineFeatures(store, cfg.seq_len, cfg.time_slices, cfg.sim_bins, item_cache_s=0)


def _stock_store(cfg) -> FeatureStore:
    """The same project with Feast's stock file offline store, to show what the traps do."""
    return FeatureStore(
        config=RepoConfig(
            repo_path=cfg.feast_dir, **{**repo_config(cfg), "offline_store": {"type": "file"}}
        )
    )


def test_feature_store_yaml_is_read_with_the_config(tmp_path):
    cfg = load_config(home=tmp_path / "h")
    sqlite = repo_config(cfg)
    assert sqlite["offline_store"] == {"type": CLASS_PATH}
    assert sqlite["online_store"] == {"type": "sqlite", "path": str(cfg.feast_dir / "online.db")}
    assert sqlite["registry"]["path"] == f"sqlite:///{cfg.feast_dir / 'registry.db'}"
    redis = repo_config(
        load_config(home=tmp_path / "h", online_store="redis", redis_url="10.1.2.3:6390")
    )
    assert redis["online_store"]["connection_string"] == "10.1.2.3:6390"
    store = open_store(cfg)
    assert type(store._get_provider().offline_store).__name__ == "DeltaOfflineStore"
    with pytest.raises(ValueError):
        repo_config(load_config(home=tmp_path / "h", online_store="memcached"))


def test_apply_registers_the_definitions_and_is_idempotent(built):
    cfg, store, _ = built
    assert {fv.name for fv in store.list_feature_views()} == {
        "item_embeddings",
        "user_behaviour",
        "interest_features",
    }
    assert {s.name for s in store.list_feature_services()} == {"ctr_training", "ctr_serving"}
    assert "FeatureService ctr_serving" in repo.apply(store)
    assert len(store.list_feature_views()) == 3


def test_trap1_after_a_merge_only_the_corrected_value_comes_back(built):
    cfg, store, _ = built
    path = cfg.table("item_embeddings")
    table = DeltaTable(path)
    fixed = table.to_pyarrow_table().filter(pc.field("item_id") == 7)
    fixed = fixed.set_column(
        fixed.schema.get_field_index("fused"),
        "fused",
        pa.array([[9.0, 9.0, 9.0, 9.0]], pa.list_(pa.float32())),
    )
    (
        table.merge(fixed, "t.item_id = s.item_id", source_alias="s", target_alias="t")
        .when_matched_update_all()
        .execute()
    )
    live = DeltaTable(path).file_uris()
    assert len(list(Path(path).glob("*.parquet"))) > len(live)  # the stale twin is still on disk

    entities = pd.DataFrame(
        {"item_id": [7, 7], "event_timestamp": [T0 + pd.Timedelta(days=400)] * 2}
    )
    frame = get_training_frame(store, entities, ["item_embeddings:fused"])
    assert len(frame) == 2
    assert [list(v) for v in frame["fused"]] == [[9.0] * 4] * 2

    stock = _stock_store(cfg).get_historical_features(entities, ["item_embeddings:fused"]).to_df()
    assert [list(v) for v in stock["fused"]] != [[9.0] * 4] * 2, "stock store fixed? (Trap 1)"

    repo.materialize(store)  # materialisation reads the same live files
    assert _reader(cfg, store).vectors([7]).vecs["fused"].tolist() == [[9.0] * 4]


def test_trap2_an_entity_row_before_every_feature_row_comes_back_with_nulls(built):
    cfg, store, interactions = built
    late = interactions.tail(3)
    entities = pd.concat(
        [
            late.iloc[:1],
            pd.DataFrame(
                {
                    "user_id": [1],
                    "item_id": [4],
                    "event_ts": [T0 - pd.Timedelta(days=1)],
                    "label": [0],
                }
            ),
            late.iloc[1:],
        ],
        ignore_index=True,
    ).rename(columns={"event_ts": "event_timestamp"})
    frame = get_training_frame(store, entities)  # ctr_training
    assert len(frame) == 4 and frame.attrs["restored_rows"] == 0
    assert frame[["user_id", "item_id", "label"]].equals(entities[["user_id", "item_id", "label"]])
    early = frame.iloc[1]
    assert early["hist_item_ids"] is None and early["sim_img"] is None and early["fused"] is None
    assert all(frame.drop(index=1)["sim_txt"].map(lambda v: v is not None))

    # Feast's stock file offline store drops that row; the wrapper puts it back, in place.
    restored = get_training_frame(
        _stock_store(cfg), entities, ["user_behaviour:hist_len", "item_embeddings:fused"]
    )
    assert restored.attrs["restored_rows"] >= 1, "the stock store no longer drops rows (Trap 2)"
    assert restored[["user_id", "item_id"]].equals(entities[["user_id", "item_id"]])
    assert pd.isna(restored.loc[1, "hist_len"]) and restored.loc[1, "fused"] is None
    assert restored["hist_len"].equals(frame["hist_len"])
    # The stock join drops a row when ANY view has nothing yet (here: users without a behaviour
    # state), so a restored row is null in every view; DeltaOfflineStore keeps the known values.
    kept = frame["hist_len"].notna()
    assert restored.attrs["restored_rows"] == (~kept).sum()
    assert restored["fused"][~kept].isna().all()
    assert [list(v) for v in restored["fused"][kept]] == [list(v) for v in frame["fused"][kept]]


def test_training_frame_joins_point_in_time(built):
    cfg, store, interactions = built
    entities = (
        interactions.sample(frac=1.0, random_state=2)
        .rename(columns={"event_ts": "event_timestamp"})
        .reset_index(drop=True)
    )
    frame = get_training_frame(store, entities)
    assert len(frame) == len(entities)
    states = synthetic_tables.behaviour_states(interactions, cfg.seq_len)
    for _, row in frame.iloc[::7].iterrows():
        mine = states[(states.user_id == row.user_id) & (states.event_ts <= row.event_timestamp)]
        want = mine.iloc[-1].hist_item_ids if len(mine) else None
        got = None if row.hist_item_ids is None else list(row.hist_item_ids)
        assert got == want
        assert row.sim_txt is not None and len(row.sim_txt) == cfg.seq_len
        assert len(row.dist_img) == cfg.time_slices * cfg.sim_bins
        assert row.has_img == (row.item_id not in NO_IMG)


def test_materialize_incremental_then_latest(built):
    cfg, store, interactions = built
    positives = interactions[interactions.label == 1].sort_values("event_ts")
    user = int(positives.user_id.value_counts().idxmax())
    times = positives[positives.user_id == user].event_ts
    mid = times.iloc[len(times) // 2] + pd.Timedelta(seconds=1)
    states = synthetic_tables.behaviour_states(interactions, cfg.seq_len)
    states = states[states.user_id == user]

    line = repo.materialize(store, end=mid.to_pydatetime())
    assert "user_behaviour (full)" in line
    reader = _reader(cfg, store)
    assert reader.history(user).tolist() == states[states.event_ts <= mid].iloc[-1].hist_item_ids
    line = repo.materialize(store)
    assert "user_behaviour (since" in line
    assert reader.history(user).tolist() == states.iloc[-1].hist_item_ids


def test_online_fetch_flags_missing_items_and_users(built):
    cfg, store, interactions = built
    repo.materialize(store)
    reader = OnlineFeatures.from_config(cfg)
    user = int(interactions[interactions.label == 1].user_id.iloc[0])
    candidates = [1, 2, 5, 99_999]
    got = reader.fetch(user, candidates)
    B, T = len(candidates), cfg.seq_len
    assert got.found.tolist() == [True, True, True, False]
    assert got.sim_img.shape == (B, T) and got.dist_txt.shape == (B, cfg.time_slices, cfg.sim_bins)
    assert got.target_mm.shape == (B, DIMS["fused"]) and got.hist_mm.shape == (T, DIMS["fused"])
    assert not got.target_mm[3].any() and not got.sim_mask_txt[3].any()
    assert not got.sim_mask_img[1].any()  # item 2 has no image: its img modality is masked
    assert got.sim_mask_txt[0].sum() == got.hist_len > 0
    assert np.isclose(got.dist_txt[0].sum(), got.hist_len / T)

    nobody = reader.fetch(123_456, candidates)
    assert nobody.hist_len == 0 and not nobody.sim_mask_txt.any() and not nobody.dist_img.any()
    assert nobody.found.tolist() == got.found.tolist()

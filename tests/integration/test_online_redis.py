"""The ranker's direct Redis reader (serving/online_redis.py) against Feast's own read path,
on a real redis-server: the same ValueProtos for present, absent and freshly written entities, and
the same scores through the whole ranker."""

import numpy as np
import pandas as pd
import pytest
from deltalake import DeltaTable

from feature_repo import repo
from feature_repo.store_config import open_store
from infra.redis_server import RedisServer
from mminterest import synthetic_tables
from mminterest.config import load_config
from serving import online_redis
from serving.model import Ranker
from serving.online import OnlineFeatures
from training.models import ModelConfig, build_model
from training.vocab import Vocab

T0 = pd.Timestamp("2022-05-01", tz="UTC")
DIMS = {"img": 6, "txt": 5, "fused": 4}
NEW_ITEM, MISSING_ITEM, MISSING_USER = 500, 99_999, 123_456


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """(cfg, store, interactions): small tables materialised into a throw-away redis-server, then
    one item (NEW_ITEM) written to the online store only, as POST /items does."""
    with RedisServer() as server:
        cfg = load_config(
            home=tmp_path_factory.mktemp("redis") / "mmi",
            online_store="redis",
            redis_url=server.url,
            seq_len=8,
            time_slices=4,
            sim_bins=5,
        )
        interactions = synthetic_tables.random_interactions(
            users=6, items=40, rows=300, start=T0, seed=2
        )
        synthetic_tables.write_tables(cfg, interactions, DIMS, without_img=range(1, 41, 3))
        store = open_store(cfg)
        repo.apply(store)
        repo.materialize(store)
        rows = DeltaTable(cfg.table("item_embeddings")).to_pandas().head(1)
        online = {f.name for f in store.get_feature_view("item_embeddings").features}
        rows = rows[[c for c in rows.columns if c in online | {"item_id", "valid_from_ts"}]]
        rows = rows.assign(item_id=NEW_ITEM, fused=[[0.5, -0.5, 0.25, 1.0]])
        store.write_to_online_store("item_embeddings", rows)
        yield cfg, store, interactions


def _refs(store, view: str) -> list[str]:
    service = store.get_feature_service("ctr_serving")
    return [
        f"{p.name}:{f.name}"
        for p in service.feature_view_projections
        for f in p.features
        if p.name == view
    ]


def test_fast_read_returns_what_get_online_features_returns(built):
    cfg, store, interactions = built
    reader = online_redis.reader(store)
    assert reader is not None
    users = [int(interactions.user_id.iloc[0]), MISSING_USER]
    items = sorted(interactions.item_id.unique().tolist()) + [NEW_ITEM, MISSING_ITEM]
    for view, key, ids in (
        ("user_behaviour", "user_id", users),
        ("item_embeddings", "item_id", items),
    ):
        refs = _refs(store, view)
        proto = store.get_online_features(refs, entity_rows={key: ids}).proto
        want = {
            n: list(r.values)
            for n, r in zip(proto.metadata.feature_names.val, proto.results)
            if n != key
        }
        got = reader.read(refs, key, ids)
        assert got == want, view
        assert len(want) == len(refs) and all(len(v) == len(ids) for v in want.values())
    got = reader.read(_refs(store, "user_behaviour"), "user_id", users)
    assert got["hist_item_ids"][0].WhichOneof("val") == "int64_list_val"
    assert got["hist_item_ids"][1].WhichOneof("val") is None  # the missing user: absent
    got = reader.read(_refs(store, "item_embeddings"), "item_id", [NEW_ITEM, MISSING_ITEM, 1])
    assert list(got["fused"][0].float_list_val.val) == [0.5, -0.5, 0.25, 1.0]
    assert got["fused"][1].WhichOneof("val") is None and got["img"][2].WhichOneof("val") is None
    sqlite = open_store(load_config(home=cfg.home.parent / "sqlite"))
    assert online_redis.reader(sqlite) is None  # other stores: get_online_features


def test_scores_through_the_fast_read_equal_the_feast_path(built):
    cfg, store, interactions = built
    items = np.arange(1, 41)
    vocab = Vocab(interactions.user_id.unique(), items, ["c1", "c2"], items, 1 + items % 2)
    model = build_model(
        "din",
        ModelConfig(
            n_users=vocab.n_users,
            n_items=vocab.n_items,
            n_cats=vocab.n_cats,
            emb_dim=8,
            seq_len=cfg.seq_len,
            time_slices=cfg.time_slices,
            sim_bins=cfg.sim_bins,
            mm_dim=DIMS["fused"],
        ),
    )
    ranker = Ranker(model, vocab)
    fast, feast = (
        OnlineFeatures(
            store, cfg.seq_len, cfg.time_slices, cfg.sim_bins, item_cache_s=0, fast_read=on
        )
        for on in (True, False)
    )
    assert fast._redis is not None and feast._redis is None
    candidates = [*items.tolist(), NEW_ITEM, MISSING_ITEM]
    for user in (*interactions.user_id.unique()[:3].tolist(), MISSING_USER):
        a, b = fast.fetch(user, candidates), feast.fetch(user, candidates)
        assert np.array_equal(a.hist_item_ids, b.hist_item_ids) and np.array_equal(a.found, b.found)
        assert np.array_equal(a.target_mm, b.target_mm) and np.array_equal(a.sim_txt, b.sim_txt)
        assert np.abs(ranker.score(a) - ranker.score(b)).max() <= 1e-6
    assert a.hist_len == 0 and a.found.tolist()[-2:] == [True, False]

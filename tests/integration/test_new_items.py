"""New-item inference without Spark: add_items with a tiny promoted encoder, real posters, the SQLite
online store; the vectors come back from OnlineFeatures and from Delta within the call."""

from __future__ import annotations

import numpy as np
import pytest
from deltalake import DeltaTable

from feature_repo import repo
from feature_repo.store_config import open_store
from mminterest.config import load_config
from serving.new_items import NewItemError, add_items
from serving.online import OnlineFeatures
from tests.conftest import REAL_DATASET, tiny_encoder
from training.content.item_rows import content_hash

POSTER = (REAL_DATASET / "posters" / "1.jpg").read_bytes()


@pytest.fixture
def setup(tmp_path):
    cfg = load_config(home=tmp_path / "mmi", seq_len=8, time_slices=2, sim_bins=4)
    tiny_encoder().save(cfg.encoder_dir)
    store = open_store(cfg)
    repo.apply(store)
    return cfg, store


def _delta(cfg, name):
    return DeltaTable(cfg.table(name)).to_pandas().set_index("item_id").sort_index()


def test_added_items_are_online_and_in_delta_at_once(setup):
    cfg, store = setup
    reader = OnlineFeatures(store, cfg.seq_len, cfg.time_slices, cfg.sim_bins, item_cache_s=0)
    assert not reader.vectors([900001]).present["txt"].any()
    out = add_items(
        cfg,
        [
            {
                "item_id": 900001,
                "text": "Toy Story (1995). Animation, Comedy",
                "category": "Animation",
                "image": POSTER,
            },
            {"item_id": 900002, "text": "A quiet documentary", "category": None, "image": None},
        ],
        store=store,
    )
    version = tiny_encoder().encoder_version()
    assert out == [
        {"item_id": 900001, "encoder_version": version, "has_img": True, "status": "created"},
        {"item_id": 900002, "encoder_version": version, "has_img": False, "status": "created"},
    ]
    emb, items = _delta(cfg, "item_embeddings"), _delta(cfg, "items")
    assert list(emb.index) == [900001, 900002] and emb.loc[900002, "img"] is None
    assert items.loc[900001, "category"] == "Animation" and items.loc[900002, "image_path"] is None
    stored = items.loc[900001, "image_path"]
    assert open(stored, "rb").read() == POSTER
    # the embedding job would skip them: same content hash from the stored file
    assert emb.loc[900001, "content_hash"] == content_hash(
        version, items.loc[900001, "text"], "Animation", stored
    )
    vectors = reader.vectors([900001, 900002])
    assert vectors.present["img"].tolist() == [True, False] and vectors.present["fused"].all()
    # the category, normalised once (None -> "unknown", as ingest writes it), in Delta and online
    assert items.loc[900002, "category"] == "unknown" and emb["category"].tolist() == [
        "Animation",
        "unknown",
    ]
    assert vectors.attrs["category"].tolist() == ["Animation", "unknown"]
    assert vectors.attrs["has_img"].tolist() == [True, False]
    for name in ("txt", "fused"):
        np.testing.assert_allclose(vectors.vecs[name], np.stack(emb[name].to_numpy()), atol=1e-6)
    np.testing.assert_allclose(vectors.vecs["img"][0], emb.loc[900001, "img"], atol=1e-6)
    features = reader.fetch(1, [900001, 900002])
    assert features.found.all() and np.allclose(
        np.linalg.norm(features.target_mm, axis=1), 1, atol=1e-5
    )

    again = add_items(
        cfg,
        [{"item_id": 900002, "text": "A loud action film", "category": "Action", "image": None}],
        store=store,
    )
    assert again[0]["status"] == "updated"
    changed = reader.vectors([900002]).vecs["txt"][0]
    assert not np.allclose(changed, vectors.vecs["txt"][1])
    np.testing.assert_allclose(
        changed, _delta(cfg, "item_embeddings").loc[900002, "txt"], atol=1e-6
    )


@pytest.mark.parametrize(
    "item, reason",
    [
        ({"item_id": 5, "text": "  ", "image": None}, "empty text"),
        ({"item_id": 5, "text": "x" * 2001, "image": None}, "exceeds"),
        (
            {"item_id": 5, "text": "ok", "image": b"\xff\xd8\xff\xe0 not a jpeg"},
            "undecodable image",
        ),
        ({"item_id": -1, "text": "ok", "image": None}, "item_id"),
        ({"item_id": 5, "text": "ok", "image": "posters/1.jpg"}, "bytes"),
    ],
)
def test_bad_items_are_refused_and_nothing_is_written(setup, item, reason):
    cfg, store = setup
    with pytest.raises(NewItemError, match=reason):
        add_items(cfg, [{"item_id": 7, "text": "fine", "image": None}, item], store=store)
    assert not DeltaTable.is_deltatable(cfg.table("items"))


def test_adding_an_item_imports_no_spark(setup):
    """The ranker's new-item path is Spark-free: a fresh interpreter adds an item, pyspark stays unloaded."""
    import subprocess
    import sys

    cfg, _ = setup
    code = (
        f"import sys\nfrom mminterest.config import load_config\nfrom serving.new_items import add_items\n"
        f"cfg = load_config(home={str(cfg.home)!r}, seq_len=8, time_slices=2, sim_bins=4)\n"
        "add_items(cfg, [{'item_id': 5, 'text': 'A film', 'category': 'Drama', 'image': None}])\n"
        "print(sorted({m.split('.')[0] for m in sys.modules} & {'pyspark', 'py4j'}))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip().splitlines()[-1] == "[]"
    assert _delta(cfg, "items").index.tolist() == [5]

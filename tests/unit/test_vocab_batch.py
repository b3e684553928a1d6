"""Vocab (dense indices, 0 = unknown, persistence) and make_batch (columns -> the CTR batch of
CONTRACTS.md)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from mminterest.schemas import UNKNOWN_CATEGORY
from training.batch import make_batch
from training.models import ModelConfig, build_model
from training.vocab import Vocab

INTERACTIONS = pd.DataFrame({"user_id": [30, 10, 30, 20], "item_id": [500, 100, 300, 100]})
ITEMS = pd.DataFrame(
    {
        "item_id": [100, 300, 500, 700],
        "category": ["Drama|Romance", "Action", None, "Action|Comedy"],
    }
)


@pytest.fixture
def vocab() -> Vocab:
    return Vocab.from_frames(INTERACTIONS, ITEMS)


def test_dense_indices_with_zero_for_unknown(vocab):
    assert (vocab.n_users, vocab.n_items, vocab.n_cats) == (4, 4, 4)
    assert vocab.user_index([10, 20, 30, 99]).tolist() == [1, 2, 3, 0]
    got = vocab.item_index(np.array([[100, 500], [700, 0]]))
    assert got.dtype == np.int64 and got.tolist() == [[1, 3], [0, 0]]
    assert vocab.cats == ["Action", "Drama", UNKNOWN_CATEGORY]  # sorted
    # 700 never interacted (no id index) but its category is known from the catalogue; 0 / 9 are uncatalogued
    assert vocab.item_cat([100, 300, 500, 700, 0, 9]).tolist() == [2, 1, 3, 1, 0, 0]


def test_one_category_index_for_an_item_without_category(vocab):
    """Ingest's "unknown", MovieLens' "(no genres listed)", a /items None or "": one index; a category
    read online (a new item) maps through the same names, the catalogue is the fallback."""
    no_category = vocab.cat_index(["unknown", "(no genres listed)", "", None, " | "])
    assert no_category.tolist() == [3] * 5
    assert vocab.cat_index(
        np.array([["Action|Drama", "Drama"], ["Sci-Fi", "unknown"]])
    ).tolist() == [[1, 2], [0, 3]]
    # 900 is a new item (not catalogued): its online category counts; 300's None falls back to the catalogue
    assert vocab.categories(["Drama", None, "Action"], [900, 300, 100]).tolist() == [2, 1, 1]


def test_save_load_round_trip(vocab, tmp_path):
    path = vocab.save(tmp_path / "run")
    assert path.name == "vocab.json"
    back = Vocab.load(tmp_path / "run")
    ids = np.array([0, 10, 20, 30, 100, 300, 500, 700])
    for method in ("user_index", "item_index", "item_cat"):
        assert np.array_equal(getattr(back, method)(ids), getattr(vocab, method)(ids))
    assert back.cats == vocab.cats


def test_empty_vocab_maps_everything_to_zero():
    empty = Vocab.from_frames(INTERACTIONS.iloc[:0], ITEMS.iloc[:0])
    assert empty.user_index([1, 2]).tolist() == [0, 0] and empty.item_cat([1]).tolist() == [0]


def columns(vocab_ids: bool = False, flat_dist: bool = True, B: int = 3, T: int = 4, D: int = 5):
    rng = np.random.default_rng(0)
    hist_len = np.array([4, 1, 0])[:B]
    mask = np.arange(T)[None] < hist_len[:, None]
    hist = np.where(mask, rng.choice([100, 300, 500, 700], (B, T)), 0)
    shape = (B, 4) if flat_dist else (B, 2, 2)
    return {
        "user_id": np.array([10, 30, 99]),
        "item_id": np.array([300, 700, 100]),
        # pandas list columns arrive as object arrays of arrays
        "hist_item_ids": np.array(list(hist), dtype=object),
        "hist_mask": mask,
        "sim_img": rng.random((B, T)) * mask,
        "sim_txt": rng.random((B, T)) * mask,
        "sim_mask_img": mask,
        "sim_mask_txt": mask,
        "dist_img": rng.random(shape),
        "dist_txt": rng.random(shape),
        "target_mm": rng.normal(size=(B, D)),
        "hist_mm": rng.normal(size=(B, T, D)),
        "label": np.array([1, 0, 1], np.int32),
    }


def test_make_batch_follows_the_contract(vocab):
    cols = columns()
    batch = make_batch(cols, vocab)
    assert batch["user"].tolist() == [1, 3, 0]
    assert batch["item"].tolist() == [2, 0, 1] and batch["cat"].tolist() == [1, 1, 2]
    assert batch["hist_item"].dtype == torch.long and batch["hist_mask"].dtype == torch.bool
    assert (
        not batch["hist_item"][~batch["hist_mask"]].any()
        and not batch["hist_cat"][~batch["hist_mask"]].any()
    )
    hist = np.stack(cols["hist_item_ids"])
    assert np.array_equal(
        batch["hist_item"].numpy(), np.where(cols["hist_mask"], vocab.item_index(hist), 0)
    )
    assert batch["dist_img"].shape == (3, 2, 2) and batch["dist_img"].dtype == torch.float32
    assert batch["hist_mm"].shape == (3, 4, 5) and batch["label"].dtype == torch.float32
    assert batch["label"].tolist() == [1.0, 0.0, 1.0]
    assert torch.equal(make_batch(columns(flat_dist=False), vocab)["dist_txt"], batch["dist_txt"])


def test_make_batch_takes_category_names_where_given(vocab):
    """The ranker passes the categories read online; None keeps the catalogue's category."""
    cols = columns()
    hist = np.stack(cols["hist_item_ids"])
    names = np.where(cols["hist_mask"], "Drama", None)
    batch = make_batch(
        {
            **cols,
            "category": np.array([None, "Drama", "(no genres listed)"], dtype=object),
            "hist_category": names,
        },
        vocab,
    )
    assert batch["cat"].tolist() == [1, 2, 3]
    assert np.array_equal(batch["hist_cat"].numpy(), np.where(cols["hist_mask"], 2, 0))
    assert torch.equal(
        make_batch(cols, vocab)["hist_cat"],
        torch.from_numpy(np.where(cols["hist_mask"], vocab.item_cat(hist), 0)),
    )


def test_make_batch_without_label_and_with_missing_column(vocab):
    cols = columns()
    del cols["label"]
    assert "label" not in make_batch(cols, vocab)
    del cols["hist_mm"]
    with pytest.raises(KeyError, match="hist_mm"):
        make_batch(cols, vocab)


def test_every_model_runs_on_a_made_batch(vocab):
    batch = make_batch(columns(), vocab)
    cfg = ModelConfig(
        n_users=vocab.n_users,
        n_items=vocab.n_items,
        n_cats=vocab.n_cats,
        emb_dim=4,
        seq_len=4,
        time_slices=2,
        sim_bins=2,
        mm_dim=5,
        mlp_dims=(8,),
        att_dims=(4,),
        sim_topk=2,
        twin_topk=2,
        n_tiers=2,
        n_buckets=2,
        window=2,
    )
    for name in ("din", "dmae", "ciubm_simtier"):
        out = build_model(name, cfg)(batch)
        assert out["logit"].shape == (3,) and torch.isfinite(out["logit"]).all()

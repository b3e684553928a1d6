"""embed_items on a 200-movie slice of the real data (ingested by the ingest job) with a tiny promoted
encoder: contract schema, coverage, the gate, an idempotent re-run embeds nothing, a changed item is
re-embedded, int8 storage report."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
import torch
from deltalake import DeltaTable, write_deltalake

from mminterest import schemas, tables
from mminterest.config import load_config
from spark_jobs import embed_items, ingest
from spark_jobs.feature_checks import FeatureCheckError, publish_gate
from spark_jobs.quantize import cosine_error, dequantize_int8, quantize_int8
from tests.conftest import REAL_DATASET, tiny_encoder

MOVIES = 200


def make_slice(root):
    """MOVIES movies spread over the real dataset (with and without posters), their ratings and
    posters (linked); returns the number of posters."""
    (root / "posters").mkdir(parents=True)
    lines = (REAL_DATASET / "movies.csv").read_bytes().splitlines()
    movies = lines[:1] + lines[1 :: (len(lines) - 1) // MOVIES][:MOVIES]
    (root / "movies.csv").write_bytes(b"\n".join(movies) + b"\n")
    ids = {line.split(b",")[0].decode() for line in movies[1:]}
    ratings = (REAL_DATASET / "ratings.csv").read_text().splitlines()
    (root / "ratings.csv").write_text(
        "\n".join(ratings[:1] + [r for r in ratings[1:] if r.split(",")[1] in ids]) + "\n"
    )
    index = (REAL_DATASET / "posters_index.csv").read_text().splitlines()
    kept = [line for line in index[1:] if line.split(",")[0] in ids]
    for line in kept:
        path = line.split(",")[-2]
        (root / path).symlink_to(REAL_DATASET / path)
    (root / "posters_index.csv").write_text("\n".join(index[:1] + kept) + "\n")
    return len(kept)


@pytest.fixture(scope="module")
def home(spark, tmp_path_factory):
    """(cfg with ingested items + a promoted tiny encoder, posters in the slice, first run summary)."""
    tmp = tmp_path_factory.mktemp("embed")
    posters = make_slice(tmp / "data")
    cfg = load_config(
        home=tmp / "mmi",
        dataset_dir=tmp / "data",
        spark_master="local[2]",
        spark_shuffle_partitions=4,
    )
    ingest.run(cfg, spark)
    tiny_encoder().save(cfg.encoder_dir)
    return cfg, posters, embed_items.run(cfg, spark, batch_size=32, int8=True)


def _table(cfg) -> pd.DataFrame:
    return (
        DeltaTable(cfg.table("item_embeddings"))
        .to_pandas()
        .sort_values("item_id")
        .reset_index(drop=True)
    )


def test_schema_coverage_and_vectors(home):
    cfg, posters, summary = home
    emb = DeltaTable(cfg.table("item_embeddings"))
    types = {f.name: str(f.type) for f in pa.schema(emb.schema().to_arrow())}
    assert list(types) == schemas.ITEM_EMBEDDINGS.names  # CONTRACTS.md
    assert (
        types["item_id"] == "int64"
        and types["has_img"] == "bool"
        and types["fused"] == "list<element: float>"
    )
    assert types["valid_from_ts"].startswith("timestamp")
    table, items = _table(cfg), DeltaTable(cfg.table("items")).to_pandas().sort_values("item_id")
    assert summary.rows_in == summary.embedded == summary.total == len(table) == MOVIES
    assert summary.with_image == posters == int(table.has_img.sum()) and 0 < posters < MOVIES
    assert (
        "coverage with image" in summary.line()
        and (table.encoder_version == tiny_encoder().encoder_version()).all()
    )
    assert (table.has_img.to_numpy() == items.image_path.notna().to_numpy()).all()
    # one normalised category, the same in items and item_embeddings (no-genre movies: "unknown")
    assert (table.category.to_numpy() == items.category.to_numpy()).all()
    assert items.category.map(schemas.category).equals(items.category) and "|" not in "".join(
        items.category
    )
    assert table.loc[~table.has_img, "img"].isna().all()
    for name in ("txt", "fused"):
        vecs = np.stack(table[name].to_numpy())
        assert vecs.shape == (MOVIES, 16) and np.allclose(
            np.linalg.norm(vecs, axis=1), 1, atol=1e-4
        )
    img = np.stack(table.loc[table.has_img, "img"].to_numpy())
    assert np.allclose(np.linalg.norm(img, axis=1), 1, atol=1e-4)
    first_seen = items.set_index("item_id").first_seen_ts
    expected = first_seen.reindex(table.item_id).fillna(table.set_index("item_id").updated_ts)
    assert (table.set_index("item_id").valid_from_ts == expected).all()
    assert (cfg.reports_dir / "int8_item_embeddings.json").is_file()


def test_rerun_embeds_nothing_and_a_changed_item_is_reembedded(home, spark):
    cfg, _, _ = home
    before, version = _table(cfg), DeltaTable(cfg.table("item_embeddings")).version()
    again = embed_items.run(cfg, spark, batch_size=32)
    assert (again.embedded, again.skipped) == (0, MOVIES)
    assert DeltaTable(cfg.table("item_embeddings")).version() == version  # nothing committed

    items = DeltaTable(cfg.table("items")).to_pyarrow_table()
    changed_id = int(before.item_id[5])
    row = items.filter(pa.compute.equal(items["item_id"], changed_id))
    row = row.set_column(
        row.schema.get_field_index("text"), "text", pa.array(["A brand new synopsis."])
    )
    tables.merge_arrow(row, cfg.table("items"), ["item_id"])
    third = embed_items.run(cfg, spark, batch_size=32)
    assert (third.embedded, third.skipped) == (1, MOVIES - 1)
    after = _table(cfg)
    moved = after.item_id == changed_id
    assert not np.allclose(after.loc[moved, "txt"].iloc[0], before.loc[moved, "txt"].iloc[0])
    assert after.loc[moved, "content_hash"].iloc[0] != before.loc[moved, "content_hash"].iloc[0]
    for name in ("txt", "fused", "content_hash"):
        assert after.loc[~moved, name].map(tuple).equals(before.loc[~moved, name].map(tuple))


def test_gate_refuses_bad_vectors(home, spark):
    cfg, _, _ = home
    rows = _table(cfg).head(3)
    rows["fused"] = [np.full(16, 0.5, np.float32), rows.fused[1], np.full(16, np.nan, np.float32)]
    frame = spark.createDataFrame(
        rows[["item_id", "encoder_version", "img", "txt", "fused", "has_img", "valid_from_ts"]]
    )
    with pytest.raises(FeatureCheckError, match="fused vector"):
        publish_gate(
            embed_items.check_frame(frame, 16), "test_item_embeddings", embed_items.checks(16), cfg
        )


def test_a_table_without_category_gets_it_from_items_without_reembedding(tmp_path):
    """item_embeddings written before the category column: the job adds it from `items`, one commit."""
    cfg = load_config(home=tmp_path / "mmi")
    old = schemas.table("item_embeddings", {"item_id": [1, 2, 3], "txt": [[1.0], [0.0], [0.5]]})
    write_deltalake(cfg.table("item_embeddings"), old.drop_columns(["category"]))
    write_deltalake(
        cfg.table("items"), schemas.table("items", {"item_id": [1, 2], "category": ["Drama", None]})
    )
    assert embed_items.backfill_category(cfg) and not embed_items.backfill_category(cfg)
    table = _table(cfg)
    assert table.category.tolist() == ["Drama", "unknown", None] and table.txt.map(
        list
    ).tolist() == [[1], [0], [0.5]]


def test_int8_round_trip():
    vecs = torch.nn.functional.normalize(
        torch.randn(50, 32, generator=torch.Generator().manual_seed(0)), dim=1
    )
    codes, scales = quantize_int8(vecs.numpy())
    assert codes.dtype == np.int8 and scales.dtype == np.float32
    assert np.abs(dequantize_int8(codes, scales) - vecs.numpy()).max() <= scales.max() / 2 + 1e-7
    report = cosine_error(vecs.numpy())
    assert report["int8_bytes"] == 50 * (32 + 4) and report["max_cos_error"] < 1e-3

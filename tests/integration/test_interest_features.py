"""interest_features on a slice of the real interactions plus crafted rows, with a fixture
item_embeddings table (random unit vectors; some items without img, some without any vector):
equal to feature_math called directly on brute-force histories, point-in-time, gated, and a
windowed re-run recomputes only its users' rows, to the same values."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from deltalake import DeltaTable
from pyspark.sql import functions as F

from mminterest import feature_math
from spark_jobs import delta_io, interest_features
from spark_jobs.feature_checks import FeatureCheckError
from tests.integration.test_behaviour import (  # noqa: F401 (behaviour_home: a shared fixture)
    T0,
    TIE_USER,
    Positives,
    behaviour_home,
)

DIMS = {"img": 12, "txt": 8, "fused": 6}
KEY = ["user_id", "item_id", "event_ts"]


def write_embeddings(spark, cfg, item_ids) -> pd.DataFrame:
    """Random unit vectors for all but every 7th item; every 3rd item has no img."""
    rng = np.random.default_rng(0)
    ids = np.array(sorted(i for i in item_ids if i % 7 != 0), dtype=np.int64)
    frame = pd.DataFrame({"item_id": ids, "encoder_version": "test-v1"})
    for field, dim in DIMS.items():
        vecs = rng.standard_normal((len(ids), dim)).astype(np.float32)
        frame[field] = list(vecs / np.linalg.norm(vecs, axis=1, keepdims=True))
    frame["has_img"] = ids % 3 != 0
    frame["img"] = [v if h else None for v, h in zip(frame["img"], frame["has_img"])]
    frame["content_hash"] = frame["item_id"].astype(str)
    frame["valid_from_ts"] = frame["updated_ts"] = pd.Timestamp("1990-01-01", tz="UTC")
    schema = (
        "item_id long, encoder_version string, img array<float>, txt array<float>, "
        "fused array<float>, has_img boolean, content_hash string, valid_from_ts timestamp, "
        "updated_ts timestamp"
    )
    cols = [c.split()[0] for c in schema.split(", ")]
    frame[["img", "txt", "fused"]] = frame[["img", "txt", "fused"]].map(
        lambda v: None if v is None else v.tolist()
    )
    delta_io.write(spark.createDataFrame(frame[cols], schema), cfg.table("item_embeddings"))
    return frame


@pytest.fixture(scope="module")
def built(spark, behaviour_home):
    """(cfg, interactions, embeddings, interest_features after one full run, summary)."""
    cfg, _ = behaviour_home
    interactions = DeltaTable(cfg.table("interactions")).to_pandas()
    embeddings = write_embeddings(spark, cfg, interactions["item_id"].unique())
    summary = interest_features.run(cfg, spark)
    return cfg, interactions, embeddings, _table(cfg), summary


def _table(cfg) -> pd.DataFrame:
    return (
        DeltaTable(cfg.table("interest_features"))
        .to_pandas()
        .sort_values(KEY)
        .reset_index(drop=True)
    )


def _lookup(embeddings: pd.DataFrame, field: str, item_ids: np.ndarray):
    """(vectors (..., d), presence (...)) of `item_ids`; zeros where absent."""
    ids = embeddings["item_id"].to_numpy()
    has = embeddings[field].notna().to_numpy()
    mat = np.stack(
        [
            np.zeros(DIMS[field], np.float32) if v is None else np.asarray(v, np.float32)
            for v in embeddings[field]
        ]
    )
    pos = np.clip(np.searchsorted(ids, item_ids), 0, len(ids) - 1)
    present = (ids[pos] == item_ids) & has[pos]
    return np.where(present[..., None], mat[pos], np.float32(0)), present


def _reference(cfg, rows: pd.DataFrame, interactions, embeddings) -> dict[str, np.ndarray]:
    """feature_math called directly on brute-force histories (positives strictly before ts)."""
    T, positives = cfg.seq_len, Positives(interactions)
    hist = np.zeros((len(rows), T), np.int64)
    hist_mask = np.zeros((len(rows), T), bool)
    for b, row in enumerate(rows.itertuples()):
        items, _ = positives.before(row.user_id, row.event_ts, T)
        hist[b, : len(items)], hist_mask[b, : len(items)] = items, True
    targets, histories, masks = {}, {}, {}
    for m in ("img", "txt"):
        targets[m], target_has = _lookup(embeddings, m, rows["item_id"].to_numpy())
        histories[m], hist_has = _lookup(embeddings, m, hist)
        masks[m] = target_has[:, None] & hist_mask & hist_has
    out = feature_math.target_features(targets, histories, masks, cfg.time_slices, cfg.sim_bins)
    out = {k: v.reshape(len(rows), -1) if k.startswith("dist") else v for k, v in out.items()}
    return {"hist_len": hist_mask.sum(axis=1), **out}


def test_equal_to_feature_math_on_brute_force_histories(built):
    cfg, interactions, embeddings, table, summary = built
    assert summary.rows_out == len(table) == len(interactions)
    want = _reference(cfg, table, interactions, embeddings)
    np.testing.assert_array_equal(table["hist_len"].to_numpy(), want["hist_len"])
    for name, ref in want.items():
        if name == "hist_len":
            continue
        got = np.stack(table[name].to_numpy())
        assert got.shape == ref.shape, name
        if "mask" in name:
            np.testing.assert_array_equal(got, ref, err_msg=name)
        else:
            assert np.abs(got - ref).max() < 1e-6, name
    # missing modalities are really exercised
    assert (np.stack(table["sim_mask_img"]).sum(1) < table["hist_len"]).any()
    assert (~np.stack(table["sim_mask_txt"]).any(1) & (table["hist_len"] > 0)).any()


def test_point_in_time_rows_see_only_earlier_positives(built):
    _, _, _, table, _ = built
    tie = table[table.user_id == TIE_USER].set_index("item_id")["hist_len"]
    assert tie[80] == 0 and tie[70] == 1  # 80 arrived late but is the earliest event
    assert [tie[i] for i in (10, 20, 30, 40)] == [2, 2, 2, 2]  # same second: not each other
    assert tie[50] == tie[60] == 5


def test_window_rerun_recomputes_its_users_from_their_first_window_event(built, spark):
    """A run for [T0, T0 + 1 s) recomputes TIE_USER's rows from T0 on (the window's 4 rows and
    the 2 later ones, which see them), nothing else, in one commit, to the same values."""
    cfg, interactions, _, before, _ = built
    start, end = T0, T0 + pd.Timedelta(seconds=1)
    version = DeltaTable(cfg.table("interest_features")).version()
    summary = interest_features.run(cfg, spark, start=start, end=end)
    inside = (interactions.event_ts >= start) & (interactions.event_ts < end)
    assert set(interactions[inside].user_id) == {TIE_USER} and inside.sum() == 4
    later = (interactions.user_id == TIE_USER) & (interactions.event_ts >= start)
    assert summary.rows_out == later.sum() == 6
    assert DeltaTable(cfg.table("interest_features")).version() == version + 1
    pd.testing.assert_frame_equal(_table(cfg), before)


def test_gate_refuses_a_bad_table_and_writes_nothing(built, spark):
    cfg, _, _, _, _ = built
    version = DeltaTable(cfg.table("interest_features")).version()
    good = delta_io.read(spark, cfg.table("interest_features")).where("hist_len > 0").limit(20)
    bad = good.withColumn(
        "sim_txt",
        F.concat(F.array(F.lit(1.5).cast("float")), F.slice("sim_txt", 2, cfg.seq_len - 1)),
    )
    with pytest.raises(FeatureCheckError, match=r"similarity score outside \[0, 1\]") as err:
        interest_features.publish(bad, cfg)
    assert "features_interest.json" in str(err.value)
    assert DeltaTable(cfg.table("interest_features")).version() == version

"""Feature views over the Delta sources. No ttl: a state stays valid until a newer row replaces it."""
from datetime import timedelta

from feast import FeatureView, Field
from feast.types import Array, Bool, Float32, Int32, Int64, String

from feature_repo.entities import item, user
from feature_repo.sources import (
    interest_features_source,
    item_embeddings_source,
    user_behaviour_source,
)

item_embeddings = FeatureView(
    name="item_embeddings", entities=[item], ttl=timedelta(0), online=True,
    source=item_embeddings_source,
    schema=[
        Field(name="item_id", dtype=Int64),
        Field(name="encoder_version", dtype=String),
        Field(name="img", dtype=Array(Float32), description="image vector; null = no image"),
        Field(name="txt", dtype=Array(Float32)),
        Field(name="fused", dtype=Array(Float32), description="fused multimodal vector"),
        Field(name="has_img", dtype=Bool),
    ],
)

user_behaviour = FeatureView(
    name="user_behaviour", entities=[user], ttl=timedelta(0), online=True,
    source=user_behaviour_source,
    schema=[
        Field(name="user_id", dtype=Int64),
        Field(name="hist_item_ids", dtype=Array(Int64), description="most recent first, <= T"),
        Field(name="hist_ts", dtype=Array(Int64), description="epoch seconds"),
        Field(name="hist_len", dtype=Int32),
    ],
)

# Offline only: one row per labelled (user, item, ts). Online, the ranker computes the same
# features at request time with feature_math (feature_repo/online.py).
interest_features = FeatureView(
    name="interest_features", entities=[user, item], ttl=timedelta(0), online=False,
    source=interest_features_source,
    schema=[
        Field(name="user_id", dtype=Int64),
        Field(name="item_id", dtype=Int64),
        Field(name="hist_len", dtype=Int32),
        Field(name="sim_img", dtype=Array(Float32)),
        Field(name="sim_txt", dtype=Array(Float32)),
        Field(name="sim_mask_img", dtype=Array(Bool)),
        Field(name="sim_mask_txt", dtype=Array(Bool)),
        Field(name="dist_img", dtype=Array(Float32), description="l*n, row-major"),
        Field(name="dist_txt", dtype=Array(Float32), description="l*n, row-major"),
    ],
)

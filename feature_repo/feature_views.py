"""Feature views over the Delta sources. No ttl: a state stays valid until a newer row replaces it.

The fields are derived from the Arrow schemas of mminterest/schemas.py (the one schema source).
"""

from datetime import timedelta

import pyarrow as pa
from feast import FeatureView, Field
from feast.types import Array, Bool, FeastType, Float32, Float64, Int32, Int64, String

from feature_repo.entities import item, user
from feature_repo.sources import (
    interest_features_source,
    item_embeddings_source,
    user_behaviour_source,
)
from mminterest import schemas

_SCALARS = {
    pa.int64(): Int64,
    pa.int32(): Int32,
    pa.float32(): Float32,
    pa.float64(): Float64,
    pa.string(): String,
    pa.bool_(): Bool,
}


def feast_type(arrow: pa.DataType) -> FeastType:
    """The feast.types type of an Arrow type (scalars and lists of scalars)."""
    if pa.types.is_list(arrow):
        return Array(feast_type(arrow.value_type))
    if arrow not in _SCALARS:
        raise TypeError(f"no Feast type for Arrow {arrow}")
    return _SCALARS[arrow]


def fields(table: str, columns: list[str]) -> list[Field]:
    """Feast fields of `columns` of `table`, typed and described by mminterest/schemas.py."""
    return [
        Field(name=f.name, dtype=feast_type(f.type), description=schemas.description(f))
        for f in schemas.schema(table, columns)
    ]


item_embeddings = FeatureView(
    name="item_embeddings",
    entities=[item],
    ttl=timedelta(0),
    online=True,
    source=item_embeddings_source,
    schema=fields(
        "item_embeddings", ["item_id", "encoder_version", *schemas.VECTORS, "has_img", "category"]
    ),
)

user_behaviour = FeatureView(
    name="user_behaviour",
    entities=[user],
    ttl=timedelta(0),
    online=True,
    source=user_behaviour_source,
    schema=fields("user_behaviour", ["user_id", "hist_item_ids", "hist_ts", "hist_len"]),
)

# Offline only: one row per labelled (user, item, ts). Online, the ranker computes the same
# features at request time with feature_math (serving/online.py).
interest_features = FeatureView(
    name="interest_features",
    entities=[user, item],
    ttl=timedelta(0),
    online=False,
    source=interest_features_source,
    schema=fields(
        "interest_features",
        [
            "user_id",
            "item_id",
            "hist_len",
            *[f"{k}_{m}" for k in ("sim", "sim_mask", "dist") for m in schemas.MODALITIES],
        ],
    ),
)

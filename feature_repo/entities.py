"""Entities: the join keys of the feature views (int64 ids, CONTRACTS.md)."""

from feast import Entity, ValueType

user = Entity(
    name="user",
    join_keys=["user_id"],
    value_type=ValueType.INT64,
    description="a user (MovieLens userId)",
)
item = Entity(
    name="item",
    join_keys=["item_id"],
    value_type=ValueType.INT64,
    description="an item (MovieLens movieId)",
)

"""Batch sources: the Delta tables of CONTRACTS.md, read by `DeltaOfflineStore` (live files only).

Paths are relative to `cfg.feast_dir` (<home>/feast, the repo path `open_store` gives Feast), so
these definitions hold for every `MMI_HOME`.
"""

import os

from feast import FileSource
from feast.data_format import DeltaFormat

from mminterest.config import Config

_LAYOUT = Config()  # only the relative layout home/feast -> home/delta/<table> is used


def _table(name: str) -> str:
    return os.path.relpath(_LAYOUT.table(name), _LAYOUT.feast_dir)


item_embeddings_source = FileSource(
    name="item_embeddings",
    path=_table("item_embeddings"),
    file_format=DeltaFormat(),
    timestamp_field="valid_from_ts",
    description="item image/text/fused vectors (embed_items.py)",
)
user_behaviour_source = FileSource(
    name="user_behaviour",
    path=_table("user_behaviour"),
    file_format=DeltaFormat(),
    timestamp_field="event_ts",
    description="behaviour sequence states (behaviour.py)",
)
interest_features_source = FileSource(
    name="interest_features",
    path=_table("interest_features"),
    file_format=DeltaFormat(),
    timestamp_field="event_ts",
    description="similarity sequences and interest distributions per labelled row "
    "(interest_features.py)",
)

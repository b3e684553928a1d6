"""The one schema source: the Delta tables of CONTRACTS.md as Arrow schemas, plus the helpers every
layer shares (category normaliser, UTC timestamps, modalities). pyarrow + pandas only.

Derived from here: the Spark schemas of the jobs (spark_jobs/schemas.py), the Feast `Field`s
(feature_repo/feature_views.py), the new-item rows (serving/new_items.py) and test fixtures.
A field's `description` metadata becomes the Feast field description.
"""

from __future__ import annotations

import pandas as pd
import pyarrow as pa

MODALITIES = ("img", "txt")  # modalities of the similarity / distribution features
VECTORS = (*MODALITIES, "fused")  # item vectors; fused feeds the models directly
ITEM_ATTRIBUTES = (
    "category",
    "has_img",
)  # item attributes the ranker reads online with the vectors
UNKNOWN_CATEGORY = "unknown"  # the category of an item with none
TS = pa.timestamp("us", tz="UTC")


def _list(value_type: pa.DataType) -> pa.DataType:
    return pa.list_(pa.field("element", value_type))  # Delta's element name: stored == declared


def _field(name: str, typ: pa.DataType, description: str = "") -> pa.Field:
    return pa.field(name, typ, metadata={"description": description} if description else None)


INTERACTIONS = pa.schema(
    [
        _field("user_id", pa.int64()),
        _field("item_id", pa.int64()),
        _field("event_ts", TS),
        _field("rating", pa.float64()),
        _field("label", pa.int32()),
    ]
)
ITEMS = pa.schema(
    [
        _field("item_id", pa.int64()),
        _field("title", pa.string()),
        _field("text", pa.string()),
        _field(
            "category", pa.string(), "normalised primary category (mminterest.schemas.category)"
        ),
        _field("image_path", pa.string(), "null = no image"),
        _field("first_seen_ts", TS, "first interaction; null = never seen"),
    ]
)
QUARANTINE = pa.schema(
    [
        _field("source", pa.string()),
        _field("record_hash", pa.string()),
        _field("reason", pa.string()),
        _field("checks", _list(pa.string())),
        _field("record", pa.string(), "raw JSON"),
        _field("copies", pa.int64()),
    ]
)
ITEM_EMBEDDINGS = pa.schema(
    [
        _field("item_id", pa.int64()),
        _field("encoder_version", pa.string()),
        _field("img", _list(pa.float32()), "image vector; null = no image"),
        _field("txt", _list(pa.float32()), "text vector"),
        _field("fused", _list(pa.float32()), "fused multimodal vector"),
        _field("has_img", pa.bool_(), "the item has an image (img is present)"),
        _field("content_hash", pa.string()),
        _field("valid_from_ts", TS, "coalesce(first_seen_ts, updated_ts)"),
        _field("updated_ts", TS),
        _field("category", pa.string(), "the item's normalised category (as in items)"),
    ]
)
USER_BEHAVIOUR = pa.schema(
    [
        _field("user_id", pa.int64()),
        _field("event_ts", TS, "valid-from time of this state"),
        _field("hist_item_ids", _list(pa.int64()), "most recent first, <= T"),
        _field("hist_ts", _list(pa.int64()), "epoch seconds"),
        _field("hist_len", pa.int32()),
    ]
)
INTEREST_FEATURES = pa.schema(
    [
        _field("user_id", pa.int64()),
        _field("item_id", pa.int64()),
        _field("event_ts", TS, "the labelled row's time"),
        _field("hist_len", pa.int32()),
        *[_field(f"sim_{m}", _list(pa.float32())) for m in MODALITIES],
        *[_field(f"sim_mask_{m}", _list(pa.bool_())) for m in MODALITIES],
        *[_field(f"dist_{m}", _list(pa.float32()), "l*n, row-major") for m in MODALITIES],
    ]
)

TABLES: dict[str, pa.Schema] = {
    "interactions": INTERACTIONS,
    "items": ITEMS,
    "quarantine": QUARANTINE,
    "item_embeddings": ITEM_EMBEDDINGS,
    "user_behaviour": USER_BEHAVIOUR,
    "interest_features": INTEREST_FEATURES,
}


def schema(name: str, columns: list[str] | None = None) -> pa.Schema:
    """The schema of table `name` (only `columns`, in that order, when given)."""
    full = TABLES[name]
    return full if columns is None else pa.schema([full.field(c) for c in columns])


def table(name: str, columns: dict) -> pa.Table:
    """An Arrow table of `name` from column values (lists, arrays, pandas Series); columns not
    given are null."""
    full = TABLES[name]
    rows = len(next(iter(columns.values()))) if columns else 0

    def column(field: pa.Field):
        values = columns.get(field.name)
        if values is None:
            return pa.nulls(rows, field.type)
        if isinstance(values, (pa.Array, pa.ChunkedArray)):
            return values.cast(field.type)
        return pa.array(values, field.type)

    unknown = set(columns) - set(full.names)
    if unknown:
        raise KeyError(f"table {name} has no columns {sorted(unknown)}")
    return pa.table([column(f) for f in full], schema=full)


def description(field: pa.Field) -> str:
    return (field.metadata or {}).get(b"description", b"").decode()


def category(raw) -> str:
    """The one category normaliser: the first of `|`-separated genres, stripped; missing, empty or
    "(no genres listed)" -> UNKNOWN_CATEGORY. Used by ingest, the vocabulary and new items, so a
    no-category item always gets the same category index."""
    if not isinstance(raw, str):
        return UNKNOWN_CATEGORY
    first = raw.split("|", 1)[0].strip()
    return UNKNOWN_CATEGORY if first in ("", "(no genres listed)") else first


def utc(t) -> pd.Timestamp | None:
    """A timestamp (str, datetime, pandas) in UTC: naive means UTC, aware is converted; None stays."""
    if t is None:
        return None
    t = pd.Timestamp(t)
    return t.tz_localize("UTC") if t.tzinfo is None else t.tz_convert("UTC")

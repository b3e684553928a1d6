"""Point-in-time training sets that keep every labelled row (Trap 2 of DESIGN.md).

Feast's file offline store drops an entity row whose feature rows all lie after its timestamp
(3 entity rows in, 2 out), and returns rows in its own order. A training set must keep every
labelled row, so this wrapper tags each row, checks the count, and restores dropped rows with
null features, in the order of the entity frame. It holds for any offline store in
feature_store.yaml (DeltaOfflineStore keeps every row already; the check stays as a guard).
`training_frames` gives the same rows in slices, for a set larger than memory.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator

import numpy as np
import pandas as pd

from feature_repo.delta_offline_store import as_utc

log = logging.getLogger(__name__)
_ROW = "__mmi_row"


def _request(store, entity_df: pd.DataFrame, service, full_feature_names: bool):
    """(entities, retrieval job): `entity_df` tagged with its row numbers, sent to Feast."""
    if _ROW in entity_df.columns:
        raise ValueError(f"entity_df must not have a column {_ROW!r}")
    wanted = store.get_feature_service(service) if isinstance(service, str) else service
    entities = entity_df.reset_index(drop=True)
    tagged = entities.assign(**{_ROW: np.arange(len(entities))})
    job = store.get_historical_features(
        entity_df=tagged, features=wanted, full_feature_names=full_feature_names
    )
    return entities, job


def _with_entities(entities: pd.DataFrame, features: pd.DataFrame) -> pd.DataFrame:
    """The entity rows (timestamps as UTC) beside their features (same index)."""
    timestamps = entities.select_dtypes(include=["datetime", "datetimetz"]).columns
    out = entities.assign(**{c: as_utc(entities[c]) for c in timestamps})
    return pd.concat([out, features], axis=1)


def get_training_frame(
    store, entity_df: pd.DataFrame, service="ctr_training", full_feature_names: bool = False
) -> pd.DataFrame:
    """`entity_df` (join keys, an event timestamp, any labels) with the features of `service`
    (a FeatureService, its name, or a list of 'view:feature' refs) as of each row's timestamp:
    one output row per input row, in input order; features are null where nothing was known
    yet. `.attrs["restored_rows"]` counts the rows the offline store had dropped."""
    entities, job = _request(store, entity_df, service, full_feature_names)
    got = job.to_df()
    if got[_ROW].duplicated().any():
        raise RuntimeError("the offline store returned an entity row more than once")
    features = got.drop(columns=[c for c in entities.columns if c in got.columns])
    if not np.array_equal(features[_ROW].to_numpy(), np.arange(len(entities))):
        features = features.set_index(_ROW).reindex(pd.RangeIndex(len(entities)))
    features = features.drop(columns=_ROW, errors="ignore").reset_index(drop=True)
    restored = len(entities) - len(got)
    if restored:
        for c in features.select_dtypes(
            include="object"
        ).columns:  # lists, strings: None, like Arrow
            features[c] = features[c].where(features[c].notna(), None)
        log.warning(
            "restored %d of %d entity rows the offline store dropped (features null)",
            restored,
            len(entities),
        )
    out = _with_entities(entities, features)
    out.attrs["restored_rows"] = restored
    return out


def training_frames(
    store,
    entity_df: pd.DataFrame,
    rows: int,
    service="ctr_training",
    full_feature_names: bool = False,
) -> Iterator[pd.DataFrame]:
    """The rows of `get_training_frame` as frames of about `rows` rows, each indexed by its rows'
    positions in `entity_df` and its `.attrs["restored_rows"]`; together they hold every entity
    row exactly once. The offline
    store's `slices` (DeltaOfflineStore: slices of one join key's values) bound the memory; a
    store without them builds the whole frame and cuts it."""
    entities, job = _request(store, entity_df, service, full_feature_names)
    if not hasattr(job, "slices"):
        whole = get_training_frame(store, entity_df, service, full_feature_names)
        for lo in range(0, len(whole), rows):
            part = whole.iloc[lo : lo + rows]
            part.attrs = {"restored_rows": whole.attrs["restored_rows"] if lo == 0 else 0}
            yield part
        return
    done = np.zeros(len(entities), bool)
    for got in job.slices(rows):
        positions = got[_ROW].to_numpy()
        if done[positions].any() or len(np.unique(positions)) < len(positions):
            raise RuntimeError("the offline store returned an entity row more than once")
        done[positions] = True
        features = got.drop(columns=[c for c in [*entities.columns, _ROW] if c in got.columns])
        frame = _with_entities(entities.iloc[positions], features.set_axis(positions))
        frame.attrs["restored_rows"] = 0  # this store keeps every row
        yield frame
    if not done.all():
        raise RuntimeError(
            f"the offline store returned {int(done.sum())} of {len(entities)} entity rows"
        )

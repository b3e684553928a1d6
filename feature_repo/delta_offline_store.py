"""Feast's file offline store, made to read Delta tables through their transaction log.

Trap 1 of DESIGN.md: the stock store (feast/infra/offline_stores/dask.py, `_read_datasource`)
reads a FileSource folder with `dask.dataframe.read_parquet`, so after a MERGE or overwrite the
superseded files reach the point-in-time join next to their corrected twins. This subclass reads
only the live files of the current table version (`DeltaTable(path).to_pyarrow_dataset()`, i.e.
the files of `file_uris()`), for training sets and for materialisation alike.

Its point-in-time join is `pandas.merge_asof` on (join keys, timestamp) over key and timestamp
columns only; feature values are then gathered by row number. The stock join pairs every entity
row with every feature row of its key before filtering, which does not fit in memory for behaviour
sequences (MovieLens: 22 M pairs of 64-long arrays). Semantics are Feast's: the latest feature row
with timestamp <= the entity row's (and >= it - ttl when the view has a ttl); unlike the stock
join, every entity row comes back, in the order given (`training_frame.get_training_frame` still
guards Trap 2 for any store). The job also gives the join in slices of entity rows
(`SlicedRetrievalJob.slices`: a grace join over one join key's ranges, each feature table read
once), so a training set larger than memory is built slice by slice. Materialisation's newest row
per key is selected in one streaming pass (memory: about one row per key, not the table).
Non-Delta sources fall back to the stock store.

Named by its class path in feature_repo/feature_store.yaml (`offline_store: {type: CLASS_PATH}`).
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Iterator, Sequence
from datetime import datetime
from pathlib import Path
from typing import Literal, cast

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads
from deltalake import DeltaTable
from feast.data_format import DeltaFormat
from feast.feature_view import DUMMY_ENTITY_ID, DUMMY_ENTITY_VAL, FeatureView
from feast.infra.offline_stores.dask import DaskOfflineStore, DaskOfflineStoreConfig
from feast.infra.offline_stores.file_source import FileSource
from feast.infra.offline_stores.offline_store import RetrievalJob, RetrievalMetadata
from feast.infra.offline_stores.offline_utils import DEFAULT_ENTITY_DF_EVENT_TIMESTAMP_COL
from feast.on_demand_feature_view import OnDemandFeatureView
from feast.utils import (
    _get_requested_feature_views_to_features_dict,
    _get_requested_on_demand_feature_views,
)

CLASS_PATH = "feature_repo.delta_offline_store.DeltaOfflineStore"
_UTC_NS = "datetime64[ns, UTC]"
_BATCH_ROWS = 16_384  # rows per streamed batch of a feature table (~23 MB of interest features)


class DeltaOfflineStoreConfig(DaskOfflineStoreConfig):
    """Offline store config: the file store's, under this store's class path."""

    # narrowing the base's Literal discriminator is how feast/pydantic select a store config
    type: Literal["feature_repo.delta_offline_store.DeltaOfflineStore"] = CLASS_PATH  # type: ignore[assignment]


def is_delta(source) -> bool:
    return isinstance(source, FileSource) and isinstance(source.file_format, DeltaFormat)


def source_path(source: FileSource, repo_path) -> str:
    """Absolute path of a FileSource (relative paths are relative to the Feast repo dir)."""
    return FileSource.get_uri_for_file_path(repo_path=repo_path, uri=source.path)


def live_dataset(path: str) -> pads.Dataset:
    """The current version of the Delta table at `path`: its live files only."""
    return DeltaTable(path).to_pyarrow_dataset()


class FrameRetrievalJob(RetrievalJob):
    """A lazy retrieval whose evaluation returns a pandas DataFrame or an Arrow table."""

    def __init__(
        self,
        evaluate: Callable[[], pd.DataFrame | pa.Table],
        full_feature_names: bool = False,
        on_demand_feature_views: Sequence[OnDemandFeatureView] = (),
        metadata: RetrievalMetadata | None = None,
    ):
        self._evaluate = evaluate
        self._full_feature_names = full_feature_names
        self._on_demand_feature_views = list(on_demand_feature_views)
        self._metadata = metadata

    @property
    def full_feature_names(self) -> bool:
        return self._full_feature_names

    @property
    def on_demand_feature_views(self) -> list[OnDemandFeatureView]:
        return self._on_demand_feature_views

    @property
    def metadata(self) -> RetrievalMetadata | None:
        return self._metadata

    def to_df(self, validation_reference=None, timeout: int | None = None) -> pd.DataFrame:
        """The frame itself when nothing is left to apply (skips a pandas -> Arrow -> pandas trip)."""
        if self._on_demand_feature_views or validation_reference is not None:
            return super().to_df(validation_reference=validation_reference, timeout=timeout)
        return self._to_df_internal(timeout)

    def _to_arrow_internal(self, timeout: int | None = None) -> pa.Table:
        out = self._evaluate()
        return out if isinstance(out, pa.Table) else pa.Table.from_pandas(out, preserve_index=False)

    def _to_df_internal(self, timeout: int | None = None) -> pd.DataFrame:
        out = self._evaluate()
        return out.to_pandas() if isinstance(out, pa.Table) else out

    def supports_remote_storage_export(self) -> bool:
        return False


class SlicedRetrievalJob(FrameRetrievalJob):
    """A point-in-time join that can also be consumed in slices of entity rows (`slices`), so a
    training set larger than memory is written slice by slice."""

    def __init__(
        self,
        slices: Callable[[int | None], Iterator[pd.DataFrame]],
        full_feature_names: bool = False,
        on_demand_feature_views: Sequence[OnDemandFeatureView] = (),
        metadata: RetrievalMetadata | None = None,
    ):
        super().__init__(
            lambda: next(iter(slices(None))),
            full_feature_names,
            on_demand_feature_views,
            metadata,
        )
        self._slices = slices

    def slices(self, rows: int) -> Iterator[pd.DataFrame]:
        """The joined rows as frames of about `rows` entity rows (rows sharing a join key value
        stay together); each frame's index holds its rows' positions in the entity frame.
        On-demand views are not applied here."""
        return self._slices(rows)


class DeltaOfflineStore(DaskOfflineStore):
    """File offline store that reads only the live files of Delta sources."""

    @staticmethod
    def get_historical_features(
        config,
        feature_views: list[FeatureView],
        feature_refs: list[str],
        entity_df,
        registry,
        project: str,
        full_feature_names: bool = False,
        filter_by_created_timestamp: bool = False,
        **kwargs,
    ) -> RetrievalJob:
        if not isinstance(entity_df, pd.DataFrame) or not all(
            is_delta(fv.batch_source) for fv in feature_views
        ):
            return DaskOfflineStore.get_historical_features(
                config,
                feature_views,
                feature_refs,
                entity_df,
                registry,
                project,
                full_feature_names,
                filter_by_created_timestamp=filter_by_created_timestamp,
                **kwargs,
            )
        ts_col = _entity_timestamp_column(entity_df)
        odfvs = _get_requested_on_demand_feature_views(feature_refs, project, registry)
        views, _ = _get_requested_feature_views_to_features_dict(feature_refs, feature_views, odfvs)

        def slices(rows: int | None) -> Iterator[pd.DataFrame]:
            entities = entity_df.reset_index(drop=True)
            entities[ts_col] = as_utc(entities[ts_col]).astype(_UTC_NS)
            return _join_views(entities, ts_col, views, config.repo_path, full_feature_names, rows)

        ts = as_utc(entity_df[ts_col])
        metadata = RetrievalMetadata(
            features=feature_refs,
            keys=[c for c in entity_df.columns if c != ts_col],
            min_event_timestamp=ts.min().to_pydatetime(),
            max_event_timestamp=ts.max().to_pydatetime(),
        )
        return SlicedRetrievalJob(
            slices,
            full_feature_names,
            OnDemandFeatureView.get_requested_odfvs(feature_refs, project, registry),
            metadata,
        )

    @staticmethod
    def pull_latest_from_table_or_query(
        config,
        data_source,
        join_key_columns: list[str],
        feature_name_columns: list[str],
        timestamp_field: str,
        created_timestamp_column: str | None,
        start_date: datetime | None = None,
        end_date: datetime | None = None,
    ) -> RetrievalJob:
        args = (
            join_key_columns,
            feature_name_columns,
            timestamp_field,
            created_timestamp_column,
            start_date,
            end_date,
        )
        return _pull_job("pull_latest_from_table_or_query", config, data_source, args, latest=True)

    @staticmethod
    def pull_all_from_table_or_query(
        config,
        data_source,
        join_key_columns: list[str],
        feature_name_columns: list[str],
        timestamp_field: str,
        created_timestamp_column: str | None = None,
        start_date: datetime | None = None,
        end_date: datetime | None = None,
    ) -> RetrievalJob:
        args = (
            join_key_columns,
            feature_name_columns,
            timestamp_field,
            created_timestamp_column,
            start_date,
            end_date,
        )
        return _pull_job("pull_all_from_table_or_query", config, data_source, args, latest=False)

    @staticmethod
    def offline_write_batch(config, feature_view, table, progress):
        if is_delta(feature_view.batch_source):
            raise NotImplementedError("Delta feature tables are written by spark_jobs/delta_io.py")
        return DaskOfflineStore.offline_write_batch(config, feature_view, table, progress)


def _entity_timestamp_column(entity_df: pd.DataFrame) -> str:
    """Feast's rule: `event_timestamp`, else the one datetime column."""
    if DEFAULT_ENTITY_DF_EVENT_TIMESTAMP_COL in entity_df.columns:
        return DEFAULT_ENTITY_DF_EVENT_TIMESTAMP_COL
    datetimes = entity_df.select_dtypes(include=["datetime", "datetimetz"]).columns
    if len(datetimes) != 1:
        raise ValueError(
            f"entity_df needs a column {DEFAULT_ENTITY_DF_EVENT_TIMESTAMP_COL!r} "
            "or exactly one datetime column"
        )
    return datetimes[0]


def as_utc(times: pd.Series) -> pd.Series:
    """Timestamps as tz-aware UTC (naive ones are taken as UTC, as Feast does)."""
    if isinstance(times.dtype, pd.DatetimeTZDtype):
        return times.dt.tz_convert("UTC")
    return pd.to_datetime(times, utc=True)


def _ts_scalar(value) -> pa.Scalar:
    stamp = pd.Timestamp(value)
    stamp = stamp.tz_convert("UTC") if stamp.tzinfo else stamp.tz_localize("UTC")
    return pa.scalar(stamp, type=pa.timestamp("us", tz="UTC"))


class _ViewRead:
    """What the join reads of one feature view: its Delta source, join keys, feature columns."""

    def __init__(self, fv: FeatureView, features: list[str], repo_path):
        source = cast(FileSource, fv.batch_source)  # a Delta FileSource: checked by is_delta()
        self.fv, self.features, self.source = fv, features, source
        self.path = source_path(source, repo_path)
        self.column = {v: k for k, v in (source.field_mapping or {}).items()}  # feature -> column
        self.source_keys = [c.name for c in fv.entity_columns]
        self.keys = [fv.projection.join_key_map.get(k, k) for k in self.source_keys]
        self.ttl = pd.Timedelta(fv.ttl) if fv.ttl and fv.ttl.total_seconds() > 0 else None
        self.columns = list(
            dict.fromkeys(
                self.source_keys
                + [source.timestamp_field]
                + [self.column.get(f, f) for f in features]
            )
        )

    def dataset(self) -> pads.Dataset:
        return live_dataset(self.path)

    def bytes(self) -> int:
        """Size of the table's live files (the weight of a view when choosing the slicing key)."""
        sizes = pa.table(DeltaTable(self.path).get_add_actions(flatten=True))["size_bytes"]
        return int(pc.sum(sizes).as_py() or 0)


def _join_views(
    entities: pd.DataFrame,
    ts_col: str,
    views: dict[FeatureView, list[str]],
    repo_path,
    full_feature_names: bool,
    rows: int | None = None,
) -> Iterator[pd.DataFrame]:
    """The point-in-time join of `entities` with `views`, as frames of about `rows` entity rows
    (None: one frame); each frame's index holds its rows' positions in `entities`.

    Several slices: the entity rows are cut into ranges of one join key (the one of the largest
    views), each view holding that key is read ONCE and its rows spilled to one Arrow file per
    range (a grace join: the tables need no particular layout), and a slice joins only its range's
    file; views without the key are read whole once (they must fit in memory: item vectors)."""
    reads = [_ViewRead(fv, features, repo_path) for fv, features in views.items()]
    if rows is None or len(entities) <= rows:
        yield _join_slice(
            entities, ts_col, reads, [_read_all(r) for r in reads], full_feature_names
        )
        return
    key = max(
        {k for r in reads for k in r.keys if k in entities.columns},
        key=lambda k: (sum(r.bytes() for r in reads if k in r.keys), k),
    )
    values = entities[key].to_numpy()
    bounds = _bounds(values, rows)
    slice_of = np.clip(np.searchsorted(bounds, values, side="right") - 1, 0, None)
    top, newest = values.max(), as_utc(entities[ts_col]).max()
    with tempfile.TemporaryDirectory(prefix="mmi-pit-join-") as tmp:
        spilled = {
            id(r): _spill(
                r, r.source_keys[r.keys.index(key)], bounds, top, newest, Path(tmp, str(i))
            )
            for i, r in enumerate(reads)
            if key in r.keys
        }
        whole = {id(r): _read_all(r) for r in reads if key not in r.keys}

        def table(r: _ViewRead, s: int) -> pa.Table:
            if id(r) in whole:
                return whole[id(r)]
            file = spilled[id(r)][s]
            if file is None:
                return _read_all(r, filter=pc.scalar(False))
            with pa.ipc.open_file(str(file)) as reader:
                return reader.read_all()

        for s in range(len(bounds)):
            part = entities[slice_of == s]
            if len(part):
                yield _join_slice(
                    part, ts_col, reads, [table(r, s) for r in reads], full_feature_names
                )


def _read_all(r: _ViewRead, filter=None) -> pa.Table:
    return r.dataset().to_table(columns=r.columns, filter=filter)


def _bounds(values: np.ndarray, rows: int) -> np.ndarray:
    """The first key value of each slice: sorted key values cut every ~`rows` rows (a value is
    never split, so a slice holds all rows of its keys)."""
    keys, counts = np.unique(values, return_counts=True)
    ends = np.cumsum(counts)
    starts = np.concatenate([[0], ends[:-1]])
    return keys[np.flatnonzero(np.diff(starts // rows, prepend=-1) > 0)]


def _spill(
    r: _ViewRead, key: str, bounds: np.ndarray, top, newest: pd.Timestamp, directory: Path
) -> list[Path | None]:
    """One streaming read of the view (rows with bounds[0] <= key <= `top`, ts <= `newest`) into
    one Arrow file per key range [bounds[s], bounds[s + 1]); scan order is kept within a file.
    Returns each range's file (None where no row fell in it)."""
    directory.mkdir(parents=True)
    where = (
        (pc.field(key) >= pa.scalar(bounds[0]))
        & (pc.field(key) <= pa.scalar(top))
        & (pc.field(r.source.timestamp_field) <= _ts_scalar(newest))
    )
    files: list[Path | None] = [None] * len(bounds)
    writers: dict[int, pa.ipc.RecordBatchFileWriter] = {}
    options = pa.ipc.IpcWriteOptions(compression="lz4")  # fast: written once, read once
    try:
        for batch in _batches(r.dataset(), r.columns, where):
            if not batch.num_rows:
                continue
            slices = np.searchsorted(bounds, batch[key].to_numpy(zero_copy_only=False), "right")
            order = np.argsort(slices, kind="stable")
            batch, slices = batch.take(pa.array(order)), slices[order] - 1
            cuts = np.flatnonzero(np.diff(slices)) + 1
            for lo, hi in zip([0, *cuts], [*cuts, len(slices)], strict=True):
                s = int(slices[lo])
                if s not in writers:
                    files[s] = directory / f"{s}.arrow"
                    writers[s] = pa.ipc.new_file(str(files[s]), batch.schema, options=options)
                writers[s].write_batch(batch.slice(lo, hi - lo))
    finally:
        for writer in writers.values():
            writer.close()
    return files


def _join_slice(
    entities: pd.DataFrame,
    ts_col: str,
    reads: list[_ViewRead],
    tables: list[pa.Table],
    full_feature_names: bool,
) -> pd.DataFrame:
    """`entities` with the features of every view in `reads`, from its rows in `tables`."""
    columns = {}
    positional = entities.reset_index(drop=True)
    for r, table in zip(reads, tables, strict=True):
        columns.update(_join_view(positional, ts_col, r, table, full_feature_names))
    return pd.concat([entities, pd.DataFrame(columns, index=entities.index)], axis=1)


def _join_view(
    entities: pd.DataFrame,
    ts_col: str,
    r: _ViewRead,
    table: pa.Table,
    full_feature_names: bool,
) -> dict[str, np.ndarray]:
    """Point-in-time join of one feature view: its requested columns, aligned to `entities`.

    merge_asof runs on keys and timestamps only; feature values are then gathered by row number
    from `table` (the view's rows that may match) converted once to pandas (list cells stay views
    on Arrow buffers)."""
    right = pd.DataFrame({key: table[sk].to_numpy() for sk, key in zip(r.source_keys, r.keys)})
    right["__fts"] = pd.to_datetime(table[r.source.timestamp_field].to_numpy(), utc=True).astype(
        _UTC_NS
    )
    right["__row"] = np.arange(len(right), dtype="float64")
    for key in r.keys:
        right[key] = right[key].astype(entities[key].dtype)
    left = entities[r.keys + [ts_col]].assign(__pos=np.arange(len(entities)))
    matched = pd.merge_asof(
        left.sort_values(ts_col, kind="stable"),
        right.sort_values("__fts", kind="stable"),
        left_on=ts_col,
        right_on="__fts",
        by=r.keys,
        direction="backward",
        tolerance=r.ttl,
    )
    rows = np.full(len(entities), np.nan)
    rows[matched["__pos"].to_numpy()] = matched["__row"].to_numpy()
    missing = np.isnan(rows)
    rows = np.where(missing, 0, rows).astype(np.int64)
    values = table.select([r.column.get(f, f) for f in r.features]).to_pandas()
    prefix = f"{r.fv.projection.name_to_use()}__" if full_feature_names else ""
    return {
        prefix + f: _gather(values[r.column.get(f, f)].to_numpy(), rows, missing)
        for f in r.features
    }


def _gather(values: np.ndarray, rows: np.ndarray, missing: np.ndarray) -> np.ndarray:
    """values[rows] with nulls where `missing` (NaN for numbers, None otherwise, as Arrow gives)."""
    if not len(values):
        values = np.array([None], dtype=object)
    out = values[rows]
    if not missing.any():
        return out
    out = out.astype(np.float64 if out.dtype.kind in "iuf" else object)
    out[missing] = np.nan if out.dtype.kind == "f" else None
    return out


PullArgs = tuple[list[str], list[str], str, str | None, datetime | None, datetime | None]


def _pull_job(method: str, config, source, args: PullArgs, latest: bool) -> RetrievalJob:
    """Feast's pull `method` (args: join keys, features, timestamp fields, start, end): Delta
    sources through `_pull`, any other source through Dask's."""
    if not is_delta(source):
        return getattr(DaskOfflineStore, method)(config, source, *args)
    return FrameRetrievalJob(lambda: _pull(config, source, *args, latest=latest))


def _pull(
    config,
    source: FileSource,
    join_keys: list[str],
    features: list[str],
    ts_field: str,
    created_field: str | None,
    start: datetime | None,
    end: datetime | None,
    latest: bool,
) -> pa.Table:
    """Rows of a Delta source with start <= ts <= end; with `latest`, the newest per key."""
    ts_fields = [ts_field] + ([created_field] if created_field else [])
    where = None
    if start is not None:
        where = pc.field(ts_field) >= _ts_scalar(start)
    if end is not None:
        upper = pc.field(ts_field) <= _ts_scalar(end)
        where = upper if where is None else where & upper
    dataset = live_dataset(source_path(source, config.repo_path))
    columns = list(dict.fromkeys(join_keys + features + ts_fields))
    if latest and join_keys:
        return _newest_rows(dataset, columns, where, join_keys, ts_fields)
    table = dataset.to_table(columns=columns, filter=where)
    if not join_keys:
        table = table.append_column(DUMMY_ENTITY_ID, pa.array([DUMMY_ENTITY_VAL] * table.num_rows))
    return table


def _batches(dataset: pads.Dataset, columns: list[str], where) -> Iterator[pa.RecordBatch]:
    """The matching rows of `dataset`, streamed in batches of _BATCH_ROWS (one fragment at a time)."""
    return dataset.scanner(
        columns=columns,
        filter=where,
        batch_size=_BATCH_ROWS,
        batch_readahead=1,
        fragment_readahead=1,
    ).to_batches()


def _newest_rows(
    dataset: pads.Dataset, columns: list[str], where, keys: list[str], ts_fields: list[str]
) -> pa.Table:
    """The newest row per key (the later one in scan order among equal timestamps), in one
    streaming pass: each batch's newest rows are kept and re-reduced with the kept ones whenever
    they outnumber them, so memory holds about one row per key, never the table."""
    kept: list[pa.Table] = []
    held = newest = 0
    for batch in _batches(dataset, columns, where):
        kept.append(_newest(pa.Table.from_batches([batch]), keys, ts_fields))
        held += kept[-1].num_rows
        if held > max(2 * newest, _BATCH_ROWS):
            kept = [_newest(pa.concat_tables(kept), keys, ts_fields)]
            held = newest = kept[0].num_rows
    if not kept:
        return dataset.schema.empty_table().select(columns)
    return _newest(pa.concat_tables(kept), keys, ts_fields)


def _newest(table: pa.Table, keys: list[str], ts_fields: list[str]) -> pa.Table:
    """The newest row of each key of `table` (the last one among equal timestamps)."""
    if not table.num_rows:
        return table
    order = table.select(keys + ts_fields).to_pandas()
    newest = order.sort_values(ts_fields, kind="stable").drop_duplicates(keys, keep="last")
    return table.take(pa.array(np.sort(newest.index.to_numpy())))

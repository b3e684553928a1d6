"""Feature freshness after materialisation: per online view, its newest row against the window's end.

Materialising up to `end` loads each view's rows with timestamp < end, so the newest row the online
store holds is the newest source row before `end`; it is read from the view's Delta source (its
timestamp column only). lag = end - newest. Past `max_feature_lag_hours` (> 0) the check fails;
a view with no row before `end` has no freshness at all and fails too. The report is printed as
one line and written to <home>/reports/freshness.json.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
from deltalake import DeltaTable


class StaleFeaturesError(RuntimeError):
    """An online view's newest row is older than the configured lag allows."""


@dataclass(frozen=True)
class ViewFreshness:
    view: str
    newest: datetime | None  # newest source timestamp before the window's end
    lag_hours: float | None  # end - newest; None without any row

    def text(self) -> str:
        if self.newest is None:
            return f"{self.view} no row"
        return f"{self.view} newest {self.newest:%Y-%m-%d %H:%M:%S} (lag {self.lag_hours:,.1f} h)"


@dataclass(frozen=True)
class Freshness:
    end: datetime
    max_lag_hours: float  # 0: report only
    views: list[ViewFreshness]

    @property
    def stale(self) -> list[ViewFreshness]:
        if self.max_lag_hours <= 0:
            return []
        return [v for v in self.views if v.lag_hours is None or v.lag_hours > self.max_lag_hours]

    def line(self) -> str:
        limit = (
            f"max_feature_lag_hours={self.max_lag_hours:g}"
            if self.max_lag_hours > 0
            else "no lag limit"
        )
        views = ", ".join(v.text() for v in self.views) or "no online views"
        verdict = f"STALE: {', '.join(v.view for v in self.stale)}" if self.stale else "ok"
        return f"freshness at {self.end:%Y-%m-%d %H:%M:%S}: {views}; {limit}: {verdict}"


def newest_before(path: str, column: str, end: datetime) -> datetime | None:
    """max(column) over the rows of the Delta table at `path` with column < end (None: no row)."""
    data = DeltaTable(path).to_pyarrow_dataset()
    col_type = data.schema.field(column).type
    bound = pa.scalar(end if col_type.tz else end.replace(tzinfo=None), type=col_type)
    newest = pc.max(
        data.to_table(columns=[column], filter=ds.field(column) < bound)[column]
    ).as_py()
    if newest is not None and newest.tzinfo is None:
        newest = newest.replace(tzinfo=UTC)
    return newest


def check(store, end: datetime, max_lag_hours: float, feast_dir: Path) -> Freshness:
    """Freshness of every online view of `store` (sources relative to `feast_dir`) at `end`."""
    views = []
    for fv in sorted(store.list_feature_views(), key=lambda v: v.name):
        if not fv.online:
            continue
        source = fv.batch_source
        newest = newest_before(str(feast_dir / source.path), source.timestamp_field, end)
        lag = None if newest is None else (end - newest).total_seconds() / 3600
        views.append(ViewFreshness(fv.name, newest, lag))
    return Freshness(end, max_lag_hours, views)


def report(freshness: Freshness, reports_dir: Path) -> Path:
    """Write the report to reports_dir/freshness.json; raise StaleFeaturesError when stale."""
    path = reports_dir / "freshness.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(
        json.dumps(
            {**asdict(freshness), "stale": [v.view for v in freshness.stale]}, indent=1, default=str
        )
    )
    if freshness.stale:
        raise StaleFeaturesError(
            f"stale online features: {', '.join(v.text() for v in freshness.stale)} at "
            f"{freshness.end:%Y-%m-%d %H:%M:%S}, above max_feature_lag_hours={freshness.max_lag_hours:g} "
            f"(report {path})"
        )
    return path

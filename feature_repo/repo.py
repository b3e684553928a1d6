"""The Feast workflow of the project: apply the definitions, materialise into the online store."""
from __future__ import annotations

import time
from datetime import datetime, timezone

from feature_repo import entities, feature_services, feature_views, sources

EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)


def definitions() -> list:
    """Every Feast object the project registers, as declared in the definition modules."""
    modules = (sources, entities, feature_views, feature_services)
    kinds = ("Entity", "FileSource", "FeatureView", "FeatureService", "OnDemandFeatureView")
    found = {id(obj): obj for module in modules for obj in vars(module).values()
             if type(obj).__name__ in kinds}  # modules re-export what they import
    return list(found.values())


def apply(store) -> list[str]:
    """Register the definitions; delete registered objects no longer defined. Returns
    'Kind name' of each definition."""
    objects = definitions()
    names = {(type(o).__name__, o.name) for o in objects}
    registered = (store.list_entities() + store.list_feature_views() + store.list_feature_services()
                  + store.list_on_demand_feature_views())
    stale = [o for o in registered if (type(o).__name__, o.name) not in names]
    store.apply(objects, objects_to_delete=stale, partial=not stale)
    return sorted(f"{kind} {name}" for kind, name in names)


def materialize(store, full: bool = False, end: datetime | None = None) -> str:
    """Load the online views up to `end` (default now): incrementally since each view's last run;
    from the epoch for a view never materialised or with `full`. Returns a one-line summary."""
    started = time.time()
    end = end or datetime.now(timezone.utc)
    done = []
    for fv in store.list_feature_views():
        if not fv.online:
            continue
        if full or fv.most_recent_end_time is None:
            store.materialize(start_date=EPOCH, end_date=end, feature_views=[fv.name])
            done.append(f"{fv.name} (full)")
        else:
            store.materialize_incremental(end_date=end, feature_views=[fv.name])
            done.append(f"{fv.name} (since {fv.most_recent_end_time:%Y-%m-%d %H:%M:%S})")
    return (f"materialize: {', '.join(done) or 'no online views'} up to {end:%Y-%m-%d %H:%M:%S}, "
            f"{time.time() - started:.1f} s")

"""The Feast workflow of the project: apply the definitions, materialise into the online store.

`apply` is the code path of `feast apply` (Feast's own parse of this folder, then
`apply_total_with_repo_instance`) on an in-process store, so `mmi features apply` and
`feast apply` run from feature_repo/ register the same objects and delete the same stale ones.
"""

from __future__ import annotations

import contextlib
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
REPO_DIR = Path(__file__).resolve().parent


def contents():
    """Feast's RepoContents of this folder, parsed as `feast plan/apply` parse it (the modules
    that .feastignore leaves: definitions.py)."""
    from feast.repo_operations import parse_repo

    with contextlib.chdir(REPO_DIR):  # Feast names the modules by their path from the cwd
        sys.path.insert(0, str(REPO_DIR))
        try:
            return parse_repo(REPO_DIR)
        finally:
            sys.path.remove(str(REPO_DIR))


def apply(store) -> list[str]:
    """Register the definitions; delete registered objects no longer defined (as `feast apply`).
    Returns 'Kind name' of each definition."""
    from feast.feature_view import DUMMY_ENTITY_NAME
    from feast.repo_operations import apply_total_with_repo_instance

    repo = contents()
    apply_total_with_repo_instance(
        store, store.project, store.registry, repo, skip_source_validation=False
    )
    kinds = {
        "Entity": repo.entities,
        "FeatureView": repo.feature_views,
        "FeatureService": repo.feature_services,
        "OnDemandFeatureView": repo.on_demand_feature_views,
    }
    return sorted(
        f"{kind} {obj.name}"
        for kind, objects in kinds.items()
        for obj in objects
        if obj.name != DUMMY_ENTITY_NAME
    )


def materialize(store, full: bool = False, end: datetime | None = None) -> str:
    """Load the online views up to `end` (default now): incrementally since each view's last run;
    from the epoch for a view never materialised or with `full`. Returns a one-line summary."""
    started = time.time()
    end = end or datetime.now(UTC)
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
    return (
        f"materialize: {', '.join(done) or 'no online views'} up to {end:%Y-%m-%d %H:%M:%S}, "
        f"{time.time() - started:.1f} s"
    )

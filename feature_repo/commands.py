"""`mmi features ...`: apply the Feast definitions, materialise online, check online/offline parity."""

from __future__ import annotations

from datetime import UTC


def _store():
    from feature_repo.store_config import open_store

    return open_store()


def _apply(args) -> int:
    from feature_repo import repo

    names = repo.apply(_store())
    print(f"apply: {len(names)} objects registered ({', '.join(names)})")
    return 0


def _materialize(args) -> int:
    """Materialise up to the window's end (--end, default now), then report each online view's
    freshness; exit 2 past max_feature_lag_hours (the online store is loaded either way)."""
    from datetime import datetime

    from feature_repo import freshness, repo
    from mminterest.cli import fail
    from mminterest.config import get_config

    cfg, store = get_config(), _store()
    end = args.end or datetime.now(UTC)
    end = end if end.tzinfo else end.replace(tzinfo=UTC)
    print(repo.materialize(store, full=args.full, end=end))
    fresh = freshness.check(store, end, cfg.max_feature_lag_hours, cfg.feast_dir)
    print(fresh.line())
    try:
        freshness.report(fresh, cfg.reports_dir)
    except freshness.StaleFeaturesError as err:
        return fail(err)
    return 0


def _parity(args) -> int:
    from mminterest.config import get_config
    from serving import parity

    report = parity.check(get_config(), sample=args.sample)
    print(report.line())
    return 0 if report.max_abs_diff <= args.tolerance else 1


def _iso(text: str):
    from datetime import datetime

    return datetime.fromisoformat(text)


def register(sub) -> None:
    features = sub.add_parser("features", help="Feast feature store: apply, materialize, parity")
    actions = features.add_subparsers(dest="action", required=True)
    actions.add_parser(
        "apply",
        help="register the definitions of feature_repo/ (as `feast apply` "
        "there) in the store of the config",
    ).set_defaults(func=_apply)
    materialize = actions.add_parser(
        "materialize",
        help="load the online store up to now "
        "(incremental since the last run), then report each online "
        "view's freshness (fails past max_feature_lag_hours)",
    )
    materialize.add_argument(
        "--full",
        action="store_true",
        help="re-materialise everything (after backfills or corrections)",
    )
    materialize.add_argument(
        "--end",
        type=_iso,
        metavar="ISO",
        help="materialise only up to this time (the DAG run's data interval "
        "end), UTC if naive; default now",
    )
    materialize.set_defaults(func=_materialize)
    parity = actions.add_parser(
        "parity",
        help="online features (latest state) vs an offline "
        "recomputation from the Delta tables; prints the largest difference",
    )
    parity.add_argument(
        "--sample",
        type=int,
        default=200,
        metavar="N",
        help="interest_features rows to compare (default 200)",
    )
    parity.add_argument(
        "--tolerance",
        type=float,
        default=1e-5,
        help="exit 1 when the largest difference exceeds this (default 1e-5)",
    )
    parity.set_defaults(func=_parity)

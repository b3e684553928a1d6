"""Feast project of mminterest: definitions, the Delta-aware offline store, training and online reads.

Feature definitions are declarative modules (entities, sources, feature_views, feature_services);
`feature_store.yaml` is generated from the config into `cfg.feast_dir` (store_config.py).
"""

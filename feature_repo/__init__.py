"""Feast project of mminterest: definitions, the Delta-aware offline store, training and online reads.

Feature definitions are declarative modules (entities, sources, feature_views, feature_services);
`feature_store.yaml` is committed here (paths through `${MMI_HOME}`), so the `feast` CLI works
from this folder; definitions.py is the module it reads (.feastignore).
"""

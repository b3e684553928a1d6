"""Generate `feature_store.yaml` from the config, and open the Feast store it describes.

Paths and endpoints come from `mminterest.config` (environment), so the YAML is written into
`cfg.feast_dir` rather than kept in the repository; the definitions stay declarative modules.
"""
from __future__ import annotations

from pathlib import Path

import yaml

from feature_repo.delta_offline_store import CLASS_PATH
from mminterest.config import Config, get_config

PROJECT = "mminterest"


def repo_config(cfg: Config) -> dict:
    """The content of feature_store.yaml for `cfg`."""
    if cfg.online_store == "sqlite":
        online = {"type": "sqlite", "path": str(cfg.feast_dir / "online.db")}
    elif cfg.online_store == "redis":
        # skip_dedup: materialisation writes the offline store's latest row per key, so a
        # corrected row with an unchanged timestamp (e.g. a re-embedded item) must overwrite.
        online = {"type": "redis", "connection_string": cfg.redis_url, "skip_dedup": True}
    else:
        raise ValueError(f"online_store must be sqlite or redis, not {cfg.online_store!r}")
    return {
        "project": PROJECT,
        "provider": "local",
        "registry": {"registry_type": "sql", "path": f"sqlite:///{cfg.feast_dir / 'registry.db'}",
                     "cache_ttl_seconds": 60},
        "offline_store": {"type": CLASS_PATH},
        "online_store": online,
        "materialization": {"pull_latest_features": True},
        "entity_key_serialization_version": 3,
        "auth": {"type": "no_auth"},
    }


def write_feature_store_yaml(cfg: Config) -> Path:
    """Write `cfg.feast_dir/feature_store.yaml` (only when its content changes); return its path."""
    path = cfg.feast_dir / "feature_store.yaml"
    text = "# generated from mminterest.config by feature_repo/store_config.py: do not edit\n" + \
        yaml.safe_dump(repo_config(cfg), sort_keys=False)
    path.parent.mkdir(parents=True, exist_ok=True)
    if not path.exists() or path.read_text() != text:
        path.write_text(text)
    return path


def open_store(cfg: Config | None = None):
    """A Feast FeatureStore over `cfg` (default: the process config)."""
    from feast import FeatureStore

    cfg = cfg or get_config()
    return FeatureStore(repo_path=str(write_feature_store_yaml(cfg).parent))

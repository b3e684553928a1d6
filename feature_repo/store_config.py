"""Open the Feast store of a config from the committed `feature_repo/feature_store.yaml`.

The YAML names paths through `${MMI_HOME}`, which the `feast` CLI takes from the environment
(Feast reads the file through `os.path.expandvars`); in-process, `repo_config(cfg)` substitutes the
same variables from `cfg`, so a store can be opened for any home. The YAML describes the embedded
store (SQLite online store); `online_store: redis` swaps in the Redis block at `MMI_REDIS_URL`.
"""

from __future__ import annotations

from pathlib import Path
from string import Template

import yaml

from mminterest.config import Config, get_config

FEATURE_STORE_YAML = Path(__file__).resolve().parent / "feature_store.yaml"


def store_env(cfg: Config) -> dict[str, str]:
    """The environment variables feature_store.yaml names, with the values of `cfg`."""
    return {"MMI_HOME": str(cfg.home), "MMI_REDIS_URL": cfg.redis_url}


def repo_config(cfg: Config) -> dict:
    """The content of feature_store.yaml for `cfg` (every `${VAR}` must be known)."""
    config = yaml.safe_load(Template(FEATURE_STORE_YAML.read_text()).substitute(store_env(cfg)))
    if cfg.online_store == "redis":
        # skip_dedup: materialisation writes the offline store's latest row per key, so a
        # corrected row with an unchanged timestamp (e.g. a re-embedded item) must overwrite.
        config["online_store"] = {
            "type": "redis",
            "connection_string": cfg.redis_url,
            "skip_dedup": True,
        }
    elif cfg.online_store != "sqlite":
        raise ValueError(f"online_store must be sqlite or redis, not {cfg.online_store!r}")
    return config


def open_store(cfg: Config | None = None):
    """A Feast FeatureStore over `cfg` (default: the process config). Its repo path is
    `cfg.feast_dir`, against which the sources' relative Delta paths resolve."""
    from feast import FeatureStore, RepoConfig

    cfg = cfg or get_config()
    cfg.feast_dir.mkdir(parents=True, exist_ok=True)
    return FeatureStore(config=RepoConfig(repo_path=cfg.feast_dir, **repo_config(cfg)))

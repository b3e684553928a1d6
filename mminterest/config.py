"""The one typed config. Defaults run on one machine; every field is overridable by `MMI_<FIELD>`
(read and type-checked by pydantic-settings)."""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path

from pydantic_settings import BaseSettings, SettingsConfigDict

REPO_ROOT = Path(__file__).resolve().parents[1]
ENV_PREFIX = "MMI_"


class Config(BaseSettings):
    """Effective settings: defaults, then `MMI_*` environment variables, then keyword arguments;
    frozen (`cfg.model_copy(update={...})` for a variant). Paths are absolute after `load_config()`."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, frozen=True, extra="forbid")

    home: Path = REPO_ROOT / ".mmi"  # all state: Delta tables, registry, models, reports
    dataset: str = "movielens"  # adapter name in spark_jobs.adapters
    # MovieLens 2018 (posters for 97.7% of movies);
    # the 2016 sample "movielens-latest-small-posters" also works
    dataset_dir: Path = (
        REPO_ROOT.parent / "shared" / "datasets" / "movielens-latest-small-2018-posters"
    )
    spark_master: str = "local[*]"
    spark_driver_memory: str = "4g"
    spark_shuffle_partitions: int = (
        0  # 0 = sized from the data (AQE, spark_jobs/session.py); > 0 = fixed override
    )
    max_bad_fraction: float = 0.05  # ingest fails past this share of quarantined rows
    # `features materialize` fails when an online view's newest row is older than this many hours
    # before the window's end; 0 = report the lag only (the bundled dataset is historical)
    max_feature_lag_hours: float = 0.0
    max_text_chars: int = 2000
    # a GE suite validates a frame of at most this many rows on pandas, not Spark (same suite,
    # same reports); 0 = always Spark
    ge_pandas_max_rows: int = 20_000
    delta_commit_attempts: int = (
        8  # tries of one Delta commit that conflicts with concurrent writers
    )
    positive_rating: float = 4.0  # label = rating >= this
    rating_min: float = 0.5
    rating_max: float = 5.0
    # labelled rows per slice of `mmi trainset build` (features joined and written a slice at a
    # time); 0 = sized from the row width (training/trainset.py: slice_rows)
    trainset_chunk_rows: int = 0
    seq_len: int = 64  # T
    time_slices: int = 10  # l
    sim_bins: int = 10  # n
    online_store: str = "sqlite"  # sqlite | redis
    redis_url: str = "127.0.0.1:6379"
    serve_host: str = "127.0.0.1"
    serve_port: int = 8000
    serve_max_items: int = 500
    serve_token: str = "change-me"
    seed: int = 7
    encoder_dir: Path = Path(
        ""
    )  # content encoder for embeddings; empty = <home>/models/content/current
    model_dir: Path = Path(
        ""
    )  # promoted CTR model of the ranker; empty = <home>/models/ctr/current

    def table(self, name: str) -> str:
        """Path of the Delta table `name`."""
        return str(self.home / "delta" / name)

    @property
    def reports_dir(self) -> Path:
        return self.home / "reports"

    @property
    def models_dir(self) -> Path:
        return self.home / "models"

    @property
    def feast_dir(self) -> Path:
        return self.home / "feast"

    def sources(self) -> dict[str, str]:
        """Field name -> 'env' or 'default', for `mmi config show`."""
        env = {name.upper() for name in os.environ}
        return {
            name: ("env" if (ENV_PREFIX + name).upper() in env else "default")
            for name in type(self).model_fields
        }


def load_config(**overrides) -> Config:
    """Build the config from defaults, then `MMI_*` environment variables, then explicit overrides;
    paths made absolute (empty model folders: their defaults under home)."""
    cfg = Config(**overrides)
    home = cfg.home.resolve()

    def model_path(value: Path, default: Path) -> Path:
        return default if str(value) in ("", ".") else value.resolve()

    return cfg.model_copy(
        update={
            "home": home,
            "dataset_dir": cfg.dataset_dir.resolve(),
            "encoder_dir": model_path(cfg.encoder_dir, home / "models" / "content" / "current"),
            "model_dir": model_path(cfg.model_dir, home / "models" / "ctr" / "current"),
        }
    )


@lru_cache(maxsize=1)
def get_config() -> Config:
    """Process-wide config (read once from the environment)."""
    return load_config()

"""Shared fixtures: one local Spark session per test run, a private MMI home per test, and a tiny
content encoder (seconds instead of MiniLM's minutes) for tests that embed items."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from mminterest.config import REPO_ROOT, load_config  # noqa: E402

REAL_DATASET = REPO_ROOT.parent / "shared" / "datasets" / "movielens-latest-small-posters"


def tiny_encoder():
    """A small seeded encoder (tiny text tower, 16-px ViT): the same weights and version every call."""
    from training.content.encoders import EncoderConfig, base_encoder

    return base_encoder(
        EncoderConfig(
            dim=16,
            text_source="tiny",
            text_max_len=24,
            tiny_text_hidden=32,
            tiny_text_layers=1,
            image_source="vit",
            image_size=16,
            image_patch=8,
            image_hidden=32,
            image_layers=1,
            image_heads=2,
            fusion_hidden=32,
        ),
        seed=3,
    )


@pytest.fixture(scope="session")
def spark():
    from spark_jobs.session import get_spark

    session = get_spark(
        "mmi-tests",
        load_config(spark_master="local[2]", spark_shuffle_partitions=4, spark_driver_memory="2g"),
    )
    yield session
    session.stop()


@pytest.fixture
def cfg(tmp_path):
    """A config whose state lives in tmp_path (dataset: the real one unless a test overrides it)."""
    return load_config(
        home=tmp_path / "mmi",
        dataset_dir=REAL_DATASET,
        spark_master="local[2]",
        spark_shuffle_partitions=4,
    )

"""petastorm loader over a synthetic Parquet training set: batch contract, every row once,
shuffling, sharding.

petastorm only imports in .venv-train. Run from the platform env (`make test`), this module re-runs itself
with .venv-train's interpreter and asserts that those tests passed, so petastorm is exercised for real.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess

import numpy as np
import pytest

from mminterest.config import REPO_ROOT

TRAIN_PYTHON = REPO_ROOT / ".venv-train" / "bin" / "python"
HAS_PETASTORM = importlib.util.find_spec("petastorm") is not None


def run_in_train_env(*pytest_args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    """`pytest *args` under .venv-train (skips when that env is absent)."""
    if not TRAIN_PYTHON.exists():
        pytest.skip(f"training environment missing: {TRAIN_PYTHON}")
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    return subprocess.run(
        [
            str(TRAIN_PYTHON),
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            "-o",
            "addopts=",
            *pytest_args,
        ],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.mark.skipif(HAS_PETASTORM, reason="already in the training environment")
def test_loader_in_the_training_environment():
    done = run_in_train_env(__file__, "-k", "not in_the_training_environment")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "skipped" not in done.stdout.splitlines()[-1], done.stdout[-2000:]


needs_petastorm = pytest.mark.skipif(
    not HAS_PETASTORM, reason="petastorm imports only in .venv-train"
)


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    from training.synthetic import write_trainset

    return write_trainset(
        tmp_path_factory.mktemp("ts") / "tiny", rows=(300, 70, 50), row_group_size=32
    )


def rows_of(loader) -> list[tuple[int, int, float]]:
    return [
        (u, i, a)
        for b in loader
        for u, i, a in zip(b["user_id"].tolist(), b["item"].tolist(), b["item_age_s"].tolist())
    ]


@needs_petastorm
def test_batches_follow_the_contract_and_cover_every_row(root):
    import pyarrow.parquet as pq
    import torch

    from training.loader import FusedVectorTable, make_loader
    from training.vocab import Vocab

    vocab = Vocab.load(root)
    batches = list(make_loader(root, "valid", batch_size=32))
    assert [len(b["label"]) for b in batches] == [32, 32, 6]
    b = batches[0]
    assert b["hist_item"].shape == (32, 8) and b["hist_mask"].dtype == torch.bool
    assert b["dist_img"].shape == (32, 2, 4) and b["hist_mm"].shape == (32, 8, 6)
    assert b["label"].dtype == torch.float32 and b["user_id"].dtype == torch.int64
    # unshuffled: the file's order; ids through the vocabulary; hist_mm gathered from item_mm
    table = pq.read_table(root / "valid").to_pandas()
    assert [r[0] for r in rows_of(batches)] == table["user_id"].tolist()
    assert b["item"].tolist() == vocab.item_index(table["item_id"][:32].to_numpy()).tolist()
    hist = np.stack(table["hist_item_ids"][:32])
    mask = np.stack(table["hist_mask"][:32])
    want = FusedVectorTable(root)(hist, mask)
    assert np.allclose(b["hist_mm"].numpy(), want) and not b["hist_mm"][~b["hist_mask"]].any()


@needs_petastorm
def test_shuffling_changes_order_per_epoch_not_content(root):
    from training.loader import make_loader

    loader = make_loader(root, "train", batch_size=50, shuffle=True, seed=3)
    first = rows_of(loader)
    again = rows_of(loader)
    loader.dataset.set_epoch(1)
    other = rows_of(loader)
    plain = rows_of(make_loader(root, "train", batch_size=50))
    assert first == again and first != other and first != plain
    assert sorted(first) == sorted(other) == sorted(plain) and len(plain) == 300


@needs_petastorm
def test_ranks_partition_the_rows(root):
    from training.loader import make_loader

    shards = [
        rows_of(make_loader(root, "train", 40, shuffle=True, seed=5, rank=r, world=2))
        for r in (0, 1)
    ]
    assert abs(len(shards[0]) - len(shards[1])) <= 1
    assert sorted(shards[0] + shards[1]) == sorted(rows_of(make_loader(root, "train", 40)))

"""Evaluation protocols over one point-in-time training set (platform env; pyarrow + numpy).

- `temporal` (production): the training set as built, split by event time (train < valid < test).
- `user-kfold` (the papers'; DIN's protocol, used by DMAE on MovieLens): users are divided into K
  disjoint folds; fold k tests on every row of its users and trains on the other users' rows, of
  which the users of one more share (`valid_share`) are held out for early stopping. Every user is
  tested exactly once; no test user is in training (the user embedding falls back to the learned
  unknown-user row). The features need no rebuild: each row's history is its own user's past,
  point-in-time, whatever the split.

Each fold is a training-set folder of its own (train/ valid/ test/, vocab.json from its train rows,
meta.json) sharing the source's item_mm/, so `training.train` runs on it unchanged.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np

from training.trainset import SPLITS, write_parquet
from training.vocab import Vocab

PROTOCOLS = ("temporal", "user-kfold")


def user_folds(user_ids, k: int, seed: int) -> dict[int, int]:
    """user id -> fold in 0..k-1: a seeded permutation of the distinct users dealt round-robin, so
    fold sizes differ by at most one user."""
    users = np.unique(np.asarray(user_ids, np.int64))
    if k < 2 or k > len(users):
        raise ValueError(f"need 2 <= folds <= {len(users)} users, got {k}")
    order = np.random.default_rng(seed).permutation(users)
    return {int(u): i % k for i, u in enumerate(order)}


def _all_rows(source: Path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    return pa.concat_tables([pq.read_table(source / part) for part in SPLITS])


def build_user_kfold(source: Path, folds: int = 5, seed: int = 7, valid_share: float = 0.1) -> Path:
    """Write `<source>-ukf<folds>/fold<k>/` for k < folds from the training set at `source` (each fold's
    vocabulary: its train rows' users and items, the source's categories). Returns the parent folder."""
    import pyarrow as pa
    import pyarrow.compute as pc

    source = Path(source)
    rows = _all_rows(source)
    users = rows["user_id"].to_numpy()
    fold_of = user_folds(users, folds, seed)
    fold = np.fromiter((fold_of[int(u)] for u in users), np.int64, len(users))
    rng = np.random.default_rng(seed + 1)
    out = source.with_name(f"{source.name}-ukf{folds}")
    shutil.rmtree(out, ignore_errors=True)
    info = json.loads((source / "meta.json").read_text())
    catalogue = Vocab.load(source).to_dict()
    for k in range(folds):
        rest = np.unique(users[fold != k])
        held = set(rng.choice(rest, max(1, round(valid_share * len(rest))), replace=False).tolist())
        is_valid = np.isin(users, list(held))
        parts = {
            "train": (fold != k) & ~is_valid,
            "valid": (fold != k) & is_valid,
            "test": fold == k,
        }
        root = out / f"fold{k}"
        for part, keep in parts.items():
            idx = np.flatnonzero(keep)
            if (
                part == "train"
            ):  # row groups of mixed users: shuffling row groups then shuffles rows
                idx = rng.permutation(idx)
            write_parquet(rows.take(pa.array(idx)), root / part)
        train = rows.filter(pa.array(parts["train"]))
        vocab = Vocab.from_dict(
            {
                **catalogue,
                "users": np.unique(train["user_id"].to_numpy()).tolist(),
                "items": np.unique(train["item_id"].to_numpy()).tolist(),
            }
        )
        vocab.save(root)
        (root / "item_mm").symlink_to((source / "item_mm").resolve(), target_is_directory=True)
        counts = {part: int(keep.sum()) for part, keep in parts.items()}
        test_users = pc.unique(rows.filter(pa.array(parts["test"]))["user_id"])
        (root / "meta.json").write_text(
            json.dumps(
                {
                    **info,
                    "name": f"{info.get('name')}-ukf{folds}-fold{k}",
                    "protocol": "user-kfold",
                    "cuts": None,
                    "fold": k,
                    "folds": folds,
                    "fold_seed": seed,
                    "rows": counts,
                    "test_users": len(test_users),
                    "n_users": vocab.n_users,
                    "n_items": vocab.n_items,
                    "n_cats": vocab.n_cats,
                },
                indent=2,
            )
            + "\n"
        )
    return out

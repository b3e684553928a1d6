"""petastorm -> PyTorch: a training-set split as a DataLoader of CTR batches (runs in .venv-train).

`make_batch_reader` streams the split's Parquet row groups (shuffled per epoch when training, in a
fixed order otherwise); rows are re-cut into batches of `batch_size`, hist_mm is gathered from the
set's item vectors (`item_mm/`), and `make_batch` turns them into the CTR batch. Each batch also
carries `user_id` (raw, for GAUC) and `item_age_s` (for the cold-start breakdown).
Distributed: row r of the epoch's stream goes to rank r % world, so ranks differ by at most one row.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset

from training.batch import COLUMNS, make_batch
from training.models.base import renamed
from training.vocab import IdIndex, Vocab

# petastorm 0.12 uses pyarrow's legacy dataset API (the reason for .venv-train);
# its deprecation noise is known
warnings.filterwarnings("ignore", category=FutureWarning, module=r"petastorm(\.|$)")

READ = [c for c in COLUMNS if c != "hist_mm"] + ["label", "item_age_s"]


def split_url(root: str | Path, split: str) -> str:
    return (Path(root).resolve() / split).as_uri()


def meta(root: str | Path) -> dict:
    """A training set's meta.json (legacy keys T, l, n under their current names)."""
    return renamed(json.loads((Path(root) / "meta.json").read_text()))


class FusedVectorTable:
    """item id -> fused vector (zeros for an unknown id), from `<root>/item_mm/`."""

    def __init__(self, root: str | Path):
        import pyarrow.parquet as pq

        table = pq.read_table(Path(root) / "item_mm")
        ids = table["item_id"].to_numpy()
        fused = (
            table["fused"]
            .combine_chunks()
            .flatten()
            .to_numpy()
            .astype(np.float32)
            .reshape(len(ids), -1)
        )
        self.index = IdIndex(ids)
        self.table = np.zeros((len(self.index) + 1, fused.shape[1]), np.float32)
        self.table[self.index.lookup(ids)] = fused

    def __call__(self, item_ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
        return self.table[np.where(mask, self.index.lookup(item_ids), 0)]


class TrainsetBatches(IterableDataset):
    """Batches of one split; `set_epoch(e)` reshuffles (when `shuffle`) with seed + e."""

    def __init__(
        self,
        root: str | Path,
        split: str,
        vocab: Vocab,
        batch_size: int,
        shuffle: bool = False,
        seed: int = 0,
        rank: int = 0,
        world: int = 1,
        vectors: FusedVectorTable | None = None,
    ):
        super().__init__()
        self.root, self.split, self.vocab = Path(root), split, vocab
        self.batch_size, self.shuffle, self.seed, self.rank, self.world = (
            batch_size,
            shuffle,
            seed,
            rank,
            world,
        )
        self.vectors = vectors or FusedVectorTable(root)
        info = meta(root)
        self.rows, self.dist_shape = info["rows"][split], (info["time_slices"], info["sim_bins"])
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _chunks(self) -> Iterator[dict[str, np.ndarray]]:
        """This rank's rows, one row group at a time (row order shuffled within a group when training)."""
        from petastorm import make_batch_reader

        rng = np.random.default_rng(self.seed + self.epoch)
        offset = 0
        with make_batch_reader(
            split_url(self.root, self.split),
            schema_fields=READ,
            num_epochs=1,
            shuffle_row_groups=self.shuffle,
            seed=self.seed + self.epoch,
            reader_pool_type="dummy",
        ) as reader:
            for group in reader:
                cols = group._asdict()
                n = len(cols["label"])
                mine = np.flatnonzero((offset + np.arange(n)) % self.world == self.rank)
                offset += n
                if self.shuffle:
                    mine = rng.permutation(mine)
                yield {k: v[mine] for k, v in cols.items()}

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        pending: dict[str, np.ndarray] | None = None
        for chunk in self._chunks():
            pending = (
                chunk
                if pending is None
                else {k: np.concatenate([pending[k], chunk[k]]) for k in chunk}
            )
            while len(pending["label"]) >= self.batch_size:
                yield self._batch({k: v[: self.batch_size] for k, v in pending.items()})
                pending = {k: v[self.batch_size :] for k, v in pending.items()}
        if pending is not None and len(pending["label"]):
            yield self._batch(pending)

    def _batch(self, cols: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
        cols["hist_mm"] = self.vectors(cols["hist_item_ids"], cols["hist_mask"])
        batch = make_batch(cols, self.vocab, self.dist_shape)
        batch["user_id"] = torch.from_numpy(np.asarray(cols["user_id"], np.int64))
        batch["item_age_s"] = torch.from_numpy(np.asarray(cols["item_age_s"], np.float64))
        return batch


def make_loader(
    root: str | Path,
    split: str,
    batch_size: int,
    shuffle: bool = False,
    seed: int = 0,
    rank: int = 0,
    world: int = 1,
    vocab: Vocab | None = None,
) -> DataLoader:
    """A DataLoader over `split` of the training set at `root` yielding CTR batch dicts."""
    dataset = TrainsetBatches(
        root, split, vocab or Vocab.load(root), batch_size, shuffle, seed, rank, world
    )
    return DataLoader(dataset, batch_size=None, num_workers=0)

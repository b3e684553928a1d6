"""ItemTable: an item catalogue (pandas) with its images decoded once, for the training loops."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import numpy as np
import pandas as pd

from mminterest.schemas import UNKNOWN_CATEGORY, category
from training.content.images import load_image

log = logging.getLogger(__name__)


@dataclass
class ItemTable:
    """Row-aligned item ids, texts, categories and uint8 images (None = no usable image)."""

    item_ids: np.ndarray
    texts: list[str]
    categories: np.ndarray
    images: list[np.ndarray | None]
    index: dict[int, int]

    @classmethod
    def from_frame(cls, items: pd.DataFrame, image_size: int) -> ItemTable:
        """items: item_id, text, optional category and image_path (None / NaN = no image)."""
        start = time.time()
        frame = items.drop_duplicates("item_id").reset_index(drop=True)
        ids = frame["item_id"].astype("int64").to_numpy()
        texts = frame["text"].fillna("").astype(str).tolist()
        cats = (
            frame["category"].map(category)
            if "category" in frame
            else pd.Series([UNKNOWN_CATEGORY] * len(frame))
        ).to_numpy()
        paths = frame["image_path"].tolist() if "image_path" in frame else [None] * len(frame)
        images = [load_image(p, image_size) for p in paths]
        declared = sum(p is not None and p == p for p in paths)
        loaded = sum(img is not None for img in images)
        log.info(
            "items: %d rows, %d images loaded (%d declared, %d unreadable) in %.1fs",
            len(ids),
            loaded,
            declared,
            declared - loaded,
            time.time() - start,
        )
        return cls(ids, texts, cats, images, {int(i): r for r, i in enumerate(ids)})

    def __len__(self) -> int:
        return len(self.item_ids)

    @property
    def has_image(self) -> np.ndarray:
        return np.array([img is not None for img in self.images], dtype=bool)

    def rows(self, item_ids) -> np.ndarray:
        """Row positions of item ids (KeyError for an unknown id)."""
        return np.array([self.index[int(i)] for i in item_ids], dtype=np.int64)

    def contains(self, item_ids) -> np.ndarray:
        return np.array([int(i) in self.index for i in item_ids], dtype=bool)

    def batch(self, rows) -> tuple[list[str], list[np.ndarray | None]]:
        """(texts, images) for the given rows, ready for MultimodalEncoder.encode."""
        return [self.texts[r] for r in rows], [self.images[r] for r in rows]

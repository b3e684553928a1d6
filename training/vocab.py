"""Dense id vocabularies for the CTR models (numpy only; the ranker imports it).

Index 0 is padding / unknown everywhere. Users and items are indexed from a training frame
(ids unseen there map to 0: a new item keeps its category and content, not an id embedding);
categories and the item -> category map come from the whole item catalogue, which is content known
from an item's first appearance. Category names go through the one normaliser
(`mminterest.schemas.category`: first genre, "Action|Drama" -> "Action"; none -> "unknown"), so the
ranker maps a category read online (an item added after training) to the index training used.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from numpy.typing import ArrayLike

from mminterest.schemas import category as primary_category

VOCAB_FILE = "vocab.json"


def named(names) -> np.ndarray:
    """True where an element of an object array is not None (same shape)."""
    return np.frompyfunc(lambda n: n is not None, 1, 1)(np.asarray(names, dtype=object)).astype(
        bool
    )


class IdIndex:
    """Sorted int64 keys -> 1..len(keys); anything else -> 0. Vectorised lookup by binary search."""

    def __init__(self, keys: ArrayLike):
        self.keys = np.unique(np.asarray(keys, dtype=np.int64))

    def __len__(self) -> int:
        return len(self.keys)

    def lookup(self, ids) -> np.ndarray:
        ids = np.asarray(ids, dtype=np.int64)
        if not len(self.keys):
            return np.zeros(ids.shape, np.int64)
        pos = np.searchsorted(self.keys, ids).clip(0, len(self.keys) - 1)
        return np.where(self.keys[pos] == ids, pos + 1, 0).astype(np.int64)


class Vocab:
    """users, items: id -> dense index; cats: category names (index = position + 1);
    item_cat: item id -> category index for every catalogued item."""

    def __init__(
        self,
        users: ArrayLike,
        items: ArrayLike,
        cats: list[str],
        cat_item_ids: ArrayLike,
        cat_of_item: ArrayLike,
    ):
        self.users, self.items = IdIndex(users), IdIndex(items)
        self.cats = list(cats)
        self._cat_index = {c: i + 1 for i, c in enumerate(self.cats)}
        self._cat_items = IdIndex(cat_item_ids)
        order = np.argsort(np.asarray(cat_item_ids, dtype=np.int64), kind="stable")
        # category of the k-th sorted catalogued item, with a leading 0 for unknown items
        self._cat_table = np.r_[0, np.asarray(cat_of_item, dtype=np.int64)[order]]
        if len(self._cat_table) != len(self._cat_items) + 1:
            raise ValueError("cat_item_ids must be unique and as many as cat_of_item")

    @classmethod
    def from_frames(cls, interactions, items) -> Vocab:
        """Users and items of `interactions` (pandas: user_id, item_id); categories of `items`
        (pandas: item_id, category = genres string)."""
        catalogue = items.drop_duplicates("item_id")
        primary = catalogue["category"].map(primary_category)
        cats = sorted(primary.unique())
        cat_index = {c: i + 1 for i, c in enumerate(cats)}
        return cls(
            interactions["user_id"].to_numpy(np.int64),
            interactions["item_id"].to_numpy(np.int64),
            cats,
            catalogue["item_id"].to_numpy(np.int64),
            primary.map(cat_index).to_numpy(np.int64),
        )

    # --- sizes (each includes index 0) ---------------------------------------------------------------
    @property
    def n_users(self) -> int:
        return len(self.users) + 1

    @property
    def n_items(self) -> int:
        return len(self.items) + 1

    @property
    def n_cats(self) -> int:
        return len(self.cats) + 1

    # --- lookups (any shape in, same shape of int64 out) ---------------------------------------------
    def user_index(self, ids) -> np.ndarray:
        return self.users.lookup(ids)

    def item_index(self, ids) -> np.ndarray:
        return self.items.lookup(ids)

    def item_cat(self, item_ids) -> np.ndarray:
        """Category index of each item id (0 for an uncatalogued id, e.g. padding)."""
        return self._cat_table[self._cat_items.lookup(item_ids)]

    def cat_index(self, names) -> np.ndarray:
        """Category index of each category name (normalised first; 0 for a name training never saw)."""
        names = np.asarray(names, dtype=object)
        index = {
            n: self._cat_index.get(primary_category(n), 0) for n in set(names.ravel().tolist())
        }
        return np.fromiter(
            (index[n] for n in names.ravel().tolist()), np.int64, names.size
        ).reshape(names.shape)

    def categories(self, names, item_ids) -> np.ndarray:
        """Category index from `names` (e.g. read online) where given, else from the catalogue map
        of `item_ids` (same shape): an item added after training keeps its category."""
        names = np.asarray(names, dtype=object)
        known = named(names)
        return np.where(known, self.cat_index(names), self.item_cat(item_ids))

    # --- persistence ---------------------------------------------------------------------------------
    def to_dict(self) -> dict:
        return {
            "users": self.users.keys.tolist(),
            "items": self.items.keys.tolist(),
            "cats": self.cats,
            "item_cat": {
                "item_id": self._cat_items.keys.tolist(),
                "cat": self._cat_table[1:].tolist(),
            },
        }

    @classmethod
    def from_dict(cls, data: dict) -> Vocab:
        return cls(
            data["users"],
            data["items"],
            data["cats"],
            data["item_cat"]["item_id"],
            data["item_cat"]["cat"],
        )

    def save(self, directory: str | Path) -> Path:
        """Write `<directory>/vocab.json`; returns its path."""
        path = Path(directory) / VOCAB_FILE
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_dict()))
        return path

    @classmethod
    def load(cls, directory: str | Path) -> Vocab:
        """Read `<directory>/vocab.json` (or the file itself when given)."""
        path = Path(directory)
        return cls.from_dict(json.loads((path / VOCAB_FILE if path.is_dir() else path).read_text()))

    def __repr__(self) -> str:
        return f"Vocab(users={len(self.users)}, items={len(self.items)}, cats={len(self.cats)})"

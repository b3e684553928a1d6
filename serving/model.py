"""The promoted CTR model as the ranker uses it: loaded once (weights_only), eval mode, no grad.

`Ranker.score(features)` turns one user's `CandidateFeatures` into the CTR batch with
`training.batch.make_batch` (the conversion training uses) and returns click probabilities. The
one history is broadcast to the B candidates (numpy views, not copies). Categories come from the
online store (mapped through the model's vocabulary), so an item added after training is scored
with its category; `Ranker.used` says which features each score used.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from mminterest.candidates import CandidateFeatures
from mminterest.schemas import VECTORS
from training.batch import make_batch
from training.models import CTRModel, load_model
from training.vocab import Vocab


def columns(features: CandidateFeatures) -> dict[str, np.ndarray]:
    """The numpy columns of `make_batch` for one user against B candidates."""
    B = len(features.item_ids)

    def each(history: np.ndarray) -> np.ndarray:
        return np.broadcast_to(history, (B,) + history.shape)

    return {
        "user_id": np.full(B, features.user_id, dtype=np.int64),
        "item_id": features.item_ids,
        "hist_item_ids": each(features.hist_item_ids),
        "hist_mask": each(features.hist_mask),
        "sim_img": features.sim_img,
        "sim_txt": features.sim_txt,
        "sim_mask_img": features.sim_mask_img,
        "sim_mask_txt": features.sim_mask_txt,
        "dist_img": features.dist_img,
        "dist_txt": features.dist_txt,
        "target_mm": features.target_mm,
        "hist_mm": each(features.hist_mm),
        "category": features.category,
        "hist_category": each(features.hist_category),
    }


class Ranker:
    """A loaded CTR model and its vocabulary; `score` is thread-safe (no state, no grad)."""

    def __init__(self, model: CTRModel, vocab: Vocab, version: str = ""):
        self.model = model.eval()
        self.vocab = vocab
        self.version = version
        keys = set(model.required_keys())  # in eval mode
        reads = {"fused": "target_mm", **{m: f"sim_{m}" for m in VECTORS if m != "fused"}}
        self.vectors_read = [
            f for f in VECTORS if reads[f] in keys
        ]  # candidate vectors the model reads

    @classmethod
    def load(cls, directory: str | Path) -> Ranker:
        """The model dir of CONTRACTS.md: `CTRModel.save` output + vocab.json (+ metrics.json).
        `version` is the resolved folder name (`ctr/current` is usually a link to a run)."""
        src = Path(directory)
        if not (src / "config.json").exists():
            raise FileNotFoundError(f"no CTR model in {src} (train and promote one first)")
        return cls(load_model(src), Vocab.load(src), src.resolve().name)

    @torch.inference_mode()
    def score(self, features: CandidateFeatures) -> np.ndarray:
        """Click probabilities (B,) float32, in the order of `features.item_ids`."""
        if not len(features.item_ids):
            return np.zeros(0, dtype=np.float32)
        logit = self.model(make_batch(columns(features), self.vocab))["logit"]
        return torch.sigmoid(logit).numpy().astype(np.float32)

    def known_users(self, user_ids) -> np.ndarray:
        """True where the user has an ID embedding (is in the vocabulary)."""
        return np.asarray(self.vocab.user_index(np.asarray(user_ids, dtype=np.int64))) > 0

    def known_items(self, item_ids) -> np.ndarray:
        """True where the item has an ID embedding (is in the vocabulary)."""
        return np.asarray(self.vocab.item_index(np.asarray(item_ids, dtype=np.int64))) > 0

    def used(self, features: CandidateFeatures) -> list[dict]:
        """Per candidate, the features its score used: `id` (the item has an ID embedding),
        `category` (the category name the model embedded; None when it knows none for the item)
        and `vectors` (the candidate's content vectors the model reads and the store holds)."""
        cats = self.vocab.categories(features.category, features.item_ids)
        names = np.asarray([None, *self.vocab.cats], dtype=object)[cats]
        present = [(f, features.present[f]) for f in self.vectors_read]
        return [
            {"id": bool(known), "category": name, "vectors": [f for f, has in present if has[b]]}
            for b, (known, name) in enumerate(zip(self.known_items(features.item_ids), names))
        ]

"""SIM (Pi et al., CIKM 2020): search-based interest model, two stages.

General search unit: hard search keeps the history items of the target's category; soft search keeps
the top-`sim_topk` items by inner product of target and history embeddings (the same embeddings the model
trains; selection itself passes no gradient). Exact search unit: DIN attention over the retrieved items.
"""

from __future__ import annotations

import torch
from torch import Tensor

from training.models.base import Batch, CTRModel, FeatureEmbeddings, ModelConfig
from training.models.layers import TargetAttention


def top_k_positions(scores: Tensor, mask: Tensor, k: int) -> Tensor:
    """Indices (B, min(k, T)) of the best-scoring real positions (padded ones rank last)."""
    k = min(k, scores.shape[1])
    return scores.masked_fill(~mask, float("-inf")).topk(k, dim=1).indices


def gather_positions(x: Tensor, idx: Tensor) -> Tensor:
    """x (B, T, ...) at positions idx (B, K) -> (B, K, ...)."""
    return x[torch.arange(x.shape[0], device=x.device).unsqueeze(1), idx]


class SIM(CTRModel):
    """Interest = DIN attention over the general-search-unit's retrieved items (`cfg.sim_mode`)."""

    name = "sim"
    batch_keys = ("hist_item", "hist_cat", "hist_mask")

    def __init__(self, cfg: ModelConfig, embeddings: FeatureEmbeddings | None = None):
        super().__init__(cfg, embeddings)
        self.mode = cfg.sim_mode
        self.attention = TargetAttention(
            self.item_dim, cfg.att_dims, softmax=cfg.att_softmax, dropout=cfg.dropout
        )
        self.build_head(self.item_dim)

    def interest(self, batch: Batch) -> Tensor:
        target, hist, mask = self.target(batch), self.history(batch), batch["hist_mask"]
        if self.mode == "hard":
            mask = mask & (batch["hist_cat"] == batch["cat"].unsqueeze(1))
        else:
            scores = torch.einsum("bd,btd->bt", target, hist).detach()
            idx = top_k_positions(scores, mask, self.cfg.sim_topk)
            hist, mask = gather_positions(hist, idx), gather_positions(mask, idx)
        return self.attention(target, hist, mask)

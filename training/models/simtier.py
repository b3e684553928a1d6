"""SimTier (Sheng et al., 2024): a histogram of target-history similarity scores as an extra feature.

Each modality's similarity sequence (`sim_img`, `sim_txt`, CONTRACTS.md) is split into `n_tiers` equal
tiers of [0, 1]; the tier counts of the real positions, divided by T, are concatenated over both
modalities (2 * n_tiers values) and appended to a DIN interest.
"""
from __future__ import annotations

import torch
from torch import Tensor
from torch.nn import functional as F

from training.models.base import Batch, CTRModel, FeatureEmbeddings, ModelConfig
from training.models.layers import TargetAttention

MODALITIES = ("img", "txt")


def similarity_histogram(sim: Tensor, mask: Tensor, n_tiers: int) -> Tensor:
    """Tier counts / T (B, n_tiers) of sim (B, T) in [0, 1] over mask; tier = min(floor(r * N), N - 1)."""
    tiers = (sim.clamp(0.0, 1.0) * n_tiers).long().clamp_max(n_tiers - 1)
    counts = (F.one_hot(tiers, n_tiers).to(sim.dtype) * mask.unsqueeze(-1).to(sim.dtype)).sum(dim=1)
    return counts / sim.shape[1]


class SimTier(CTRModel):
    """Interest = concat(DIN interest, SimTier histograms of img and txt)."""

    name = "simtier"
    batch_keys = ("hist_item", "hist_cat", "hist_mask", "sim_img", "sim_txt", "sim_mask_img", "sim_mask_txt")

    def __init__(self, cfg: ModelConfig, embeddings: FeatureEmbeddings | None = None):
        super().__init__(cfg, embeddings)
        self.attention = TargetAttention(self.item_dim, cfg.att_dims, softmax=cfg.att_softmax, dropout=cfg.dropout)
        self.build_head(self.item_dim + len(MODALITIES) * cfg.n_tiers)

    def interest(self, batch: Batch) -> Tensor:
        h_id = self.attention(self.target(batch), self.history(batch), batch["hist_mask"])
        tiers = [similarity_histogram(batch[f"sim_{m}"], batch[f"sim_mask_{m}"], self.cfg.n_tiers)
                 for m in MODALITIES]
        return torch.cat([h_id, *tiers], dim=-1)

"""BST (Chen et al., 2019): a transformer over [target; history] with learned position embeddings."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from training.models.base import Batch, CTRModel, FeatureEmbeddings, ModelConfig
from training.models.layers import SelfAttentionBlock, masked_mean


class BST(CTRModel):
    """Interest = concat(output at the target position, masked mean of the history outputs).

    Position 0 is the target, position 1 + i history item i (0 = most recent).
    """

    name = "bst"
    batch_keys = ("hist_item", "hist_cat", "hist_mask")

    def __init__(self, cfg: ModelConfig, embeddings: FeatureEmbeddings | None = None):
        super().__init__(cfg, embeddings)
        if self.item_dim % cfg.n_heads:
            raise ValueError(
                f"2 * emb_dim = {self.item_dim} is not divisible by n_heads = {cfg.n_heads}"
            )
        self.position = nn.Embedding(cfg.seq_len + 1, self.item_dim)
        nn.init.normal_(self.position.weight, std=0.05)
        self.transformer = SelfAttentionBlock(self.item_dim, cfg.n_heads, cfg.n_layers, cfg.dropout)
        self.build_head(2 * self.item_dim)

    def interest(self, batch: Batch) -> Tensor:
        hist_mask = batch["hist_mask"]
        seq = torch.cat([self.target(batch).unsqueeze(1), self.history(batch)], dim=1)
        seq = seq + self.position.weight[: seq.shape[1]]
        mask = torch.cat([torch.ones_like(hist_mask[:, :1]), hist_mask], dim=1)
        out = self.transformer(seq, mask)
        return torch.cat([out[:, 0], masked_mean(out[:, 1:], hist_mask)], dim=-1)

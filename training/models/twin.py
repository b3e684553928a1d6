"""TWIN (Chang et al., KDD 2023): consistency-preserving two-stage target attention.

One scoring function, multi-head scaled dot product s_h(t, i) = <W_q^h t, W_k^h h_i> / sqrt(d_h), serves
both stages: the general search unit keeps the top-`twin_topk` positions by the head-averaged score, the
exact search unit softmax-normalises the very same scores over the kept positions and pools W_v^h h_i.
(The paper's cached inherent features and cross-feature bias are not modelled: no such features here.)
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from training.models.base import Batch, CTRModel, FeatureEmbeddings, ModelConfig
from training.models.layers import masked_softmax
from training.models.sim import gather_positions, top_k_positions


class TWIN(CTRModel):
    """Interest = W_o concat_h sum_{i in top-k} softmax_i(s_h(t, i)) W_v^h h_i."""

    name = "twin"
    batch_keys = ("hist_item", "hist_cat", "hist_mask")

    def __init__(self, cfg: ModelConfig, embeddings: FeatureEmbeddings | None = None):
        super().__init__(cfg, embeddings)
        if self.item_dim % cfg.n_heads:
            raise ValueError(
                f"2 * emb_dim = {self.item_dim} is not divisible by n_heads = {cfg.n_heads}"
            )
        self.n_heads, self.head_dim = cfg.n_heads, self.item_dim // cfg.n_heads
        self.q = nn.Linear(self.item_dim, self.item_dim)
        self.k = nn.Linear(self.item_dim, self.item_dim)
        self.v = nn.Linear(self.item_dim, self.item_dim)
        self.out = nn.Linear(self.item_dim, self.item_dim)
        self.build_head(self.item_dim)

    def _heads(self, x: Tensor) -> Tensor:
        return x.view(*x.shape[:-1], self.n_heads, self.head_dim)

    def scores(self, target: Tensor, hist: Tensor) -> Tensor:
        """The shared relevance score (B, H, T) of every history position for every head."""
        q, k = self._heads(self.q(target)), self._heads(self.k(hist))  # (B, H, hd), (B, T, H, hd)
        return torch.einsum("bhd,bthd->bht", q, k) / math.sqrt(self.head_dim)

    def interest(self, batch: Batch) -> Tensor:
        hist, mask = self.history(batch), batch["hist_mask"]
        scores = self.scores(self.target(batch), hist)
        idx = top_k_positions(
            scores.detach().mean(dim=1), mask, self.cfg.twin_topk
        )  # general search unit
        kept_scores = torch.gather(scores, 2, idx.unsqueeze(1).expand(-1, self.n_heads, -1))
        kept_mask = gather_positions(mask, idx)
        w = masked_softmax(
            kept_scores, kept_mask.unsqueeze(1)
        )  # exact search unit: the same scores
        values = self._heads(self.v(gather_positions(hist, idx)))  # (B, K, H, hd)
        pooled = torch.einsum("bhk,bkhd->bhd", w, values).reshape(hist.shape[0], self.item_dim)
        return self.out(pooled)

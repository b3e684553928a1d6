"""DIEN (Zhou et al., AAAI 2019): GRU interest extractor + AUGRU interest evolution.

Differences from the paper: the auxiliary next-behaviour loss of the extractor (which needs sampled
negative histories) is omitted, so `aux_loss` is 0; attention scores come from the DIN attention unit
(softmax-normalised over the real positions).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from training.models.base import Batch, CTRModel, FeatureEmbeddings, ModelConfig
from training.models.layers import TargetAttention


class AUGRUCell(nn.Module):
    """GRU cell whose update gate is scaled by an attention score: u' = a * u; h = (1 - u') h + u' h~."""

    def __init__(self, in_dim: int, hidden: int):
        super().__init__()
        self.x2h = nn.Linear(in_dim, 3 * hidden)
        self.h2h = nn.Linear(hidden, 3 * hidden, bias=False)

    def forward(self, x: Tensor, h: Tensor, att: Tensor) -> Tensor:
        xr, xu, xn = self.x2h(x).chunk(3, dim=-1)
        hr, hu, hn = self.h2h(h).chunk(3, dim=-1)
        reset = torch.sigmoid(xr + hr)
        update = att.unsqueeze(-1) * torch.sigmoid(xu + hu)
        candidate = torch.tanh(xn + reset * hn)
        return (1.0 - update) * h + update * candidate


class DIEN(CTRModel):
    """Interest = last AUGRU state after running oldest -> newest over the extracted interest states."""

    name = "dien"
    batch_keys = ("hist_item", "hist_cat", "hist_mask")

    def __init__(self, cfg: ModelConfig, embeddings: FeatureEmbeddings | None = None):
        super().__init__(cfg, embeddings)
        self.extractor = nn.GRUCell(self.item_dim, self.item_dim)
        self.attention = TargetAttention(
            self.item_dim, cfg.att_dims, softmax=True, dropout=cfg.dropout
        )
        self.evolution = AUGRUCell(self.item_dim, self.item_dim)
        self.build_head(self.item_dim)

    def interest(self, batch: Batch) -> Tensor:
        x, mask = self.history(batch), batch["hist_mask"]
        steps = range(
            x.shape[1] - 1, -1, -1
        )  # position 0 is the most recent: walk oldest -> newest
        h = x.new_zeros(x.shape[0], self.item_dim)
        states = [h] * x.shape[1]
        for t in steps:
            h = torch.where(mask[:, t, None], self.extractor(x[:, t], h), h)
            states[t] = h
        interests = torch.stack(states, dim=1)
        att = self.attention.weights(self.target(batch), interests, mask)
        h = x.new_zeros(x.shape[0], self.item_dim)
        for t in steps:
            h = torch.where(mask[:, t, None], self.evolution(interests[:, t], h, att[:, t]), h)
        return h

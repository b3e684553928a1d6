"""DIN (Zhou et al., KDD 2018): target attention over the history with the DIN attention unit."""

from __future__ import annotations

from torch import Tensor

from training.models.base import Batch, CTRModel, FeatureEmbeddings, ModelConfig
from training.models.layers import TargetAttention


class DIN(CTRModel):
    """Interest = sum_i a(target, h_i) h_i, a from MLP([q, k, q-k, q*k]) (raw weights, as in the
    paper; a masked
    softmax over the history with `att_softmax`)."""

    name = "din"
    batch_keys = ("hist_item", "hist_cat", "hist_mask")

    def __init__(self, cfg: ModelConfig, embeddings: FeatureEmbeddings | None = None):
        super().__init__(cfg, embeddings)
        self.attention = TargetAttention(
            self.item_dim, cfg.att_dims, softmax=cfg.att_softmax, dropout=cfg.dropout
        )
        self.build_head(self.item_dim)

    def interest(self, batch: Batch) -> Tensor:
        return self.attention(self.target(batch), self.history(batch), batch["hist_mask"])

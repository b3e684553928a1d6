"""AvgPool: the user interest is the mean of the history item embeddings."""

from __future__ import annotations

from torch import Tensor

from training.models.base import Batch, CTRModel, FeatureEmbeddings, ModelConfig
from training.models.layers import masked_mean


class AvgPool(CTRModel):
    """Mean pooling over the real history positions."""

    name = "avgpool"
    batch_keys = ("hist_item", "hist_cat", "hist_mask")

    def __init__(self, cfg: ModelConfig, embeddings: FeatureEmbeddings | None = None):
        super().__init__(cfg, embeddings)
        self.build_head(self.item_dim)

    def interest(self, batch: Batch) -> Tensor:
        return masked_mean(self.history(batch), batch["hist_mask"])

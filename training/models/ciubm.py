"""CiUBM (MIM, arXiv 2502.00321): content-interest user-behaviour model wrapped around any backbone.

Default = MIM eq. 7-9, sums over the history:
h_B = concat(h_ID [use_id], sum_i a_ti proj(h_i^MM) [use_content], sum_i a_ti h_i^ID [use_fusion]),
a_ti = cos(target_mm, hist_mm_i) over the real history positions (0 where a vector is all zero, e.g. an
item without content). h_ID is the backbone's interest (its auxiliary loss is passed on); h_i^ID are the
backbone's history item embeddings, shared. CiUBM has its own head; the backbone's head is unused.
Named variant `ciubm_mean` (not the paper): the weights are divided by the history length, so both sums
become means (their scale then no longer grows with the history: with cosines around 0.5 a 64-item sum is
~30x one item).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from training.models.base import Batch, CTRModel, ModelConfig
from training.models.layers import cosine_to_history

PREFIX = "ciubm_"


class CiUBM(CTRModel):
    """CiUBM over `backbone` (a built CTRModel sharing `cfg`)."""

    name = "ciubm"

    def __init__(self, cfg: ModelConfig, backbone: CTRModel):
        if isinstance(backbone, CiUBM):
            raise ValueError("CiUBM cannot wrap another CiUBM")
        if not (cfg.use_id or cfg.use_content or cfg.use_fusion):
            raise ValueError("CiUBM needs at least one of use_id, use_content, use_fusion")
        super().__init__(cfg, backbone.embeddings)
        self.backbone = backbone
        self.mm_proj = nn.Linear(cfg.mm_dim, self.item_dim) if cfg.use_content else None
        dims = (
            backbone.interest_dim if cfg.use_id else 0,
            self.item_dim if cfg.use_content else 0,
            self.item_dim if cfg.use_fusion else 0,
        )
        self.build_head(sum(dims))

    @property
    def model_name(self) -> str:
        return PREFIX + self.backbone.model_name

    def required_keys(self) -> tuple[str, ...]:
        keys = list(self.backbone.required_keys() if self.cfg.use_id else self.BASE_KEYS)
        if self.cfg.use_content or self.cfg.use_fusion:
            keys += ["hist_mask", "target_mm", "hist_mm"]
        if self.cfg.use_fusion:
            keys += ["hist_item", "hist_cat"]
        return tuple(dict.fromkeys(keys))

    def content_weights(self, batch: Batch) -> Tensor:
        """a_ti (B, T): cosine of target and history multimodal vectors, 0 at padded positions; divided by
        the history length with `ciubm_mean`."""
        a = cosine_to_history(batch["target_mm"], batch["hist_mm"])
        mask = batch["hist_mask"].to(a.dtype)
        if self.cfg.ciubm_mean:
            mask = mask / mask.sum(dim=1, keepdim=True).clamp_min(1.0)
        return a * mask

    def encode(self, batch: Batch) -> tuple[Tensor, Tensor]:
        parts: list[Tensor] = []
        aux = self.target(batch).new_zeros(())
        if self.cfg.use_id:
            h_id, aux = self.backbone.encode(batch)
            parts.append(h_id)
        if self.mm_proj is not None or self.cfg.use_fusion:
            a = self.content_weights(batch)
            if self.mm_proj is not None:
                parts.append(torch.einsum("bt,btd->bd", a, self.mm_proj(batch["hist_mm"])))
            if self.cfg.use_fusion:
                parts.append(torch.einsum("bt,btd->bd", a, self.history(batch)))
        return torch.cat(parts, dim=-1), aux

    def interest(self, batch: Batch) -> Tensor:
        return self.encode(batch)[0]

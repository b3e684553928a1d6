"""SimTier (Sheng et al., 2024): a histogram of target-history similarity scores beside the DIN interest.

Default (`simtier_source="fused"`, the paper): ONE histogram over a single multimodal vector per item.
r_t = (cos(target_mm, hist_mm_t) + 1) / 2 in [0, 1] for each real history position t (hist_mask) whose
item and target both have a vector (a vector that is all zero = no content, CONTRACTS.md, is left out);
[0, 1] is split into `n_tiers` equal tiers (tier = min(floor(r * N), N - 1)) and the tier counts divided
by T are the histogram (n_tiers values; they sum to the number of counted positions / T, i.e. hist_len / T
when every item has content). It is computed in the model from `target_mm` / `hist_mm`, so a ranker that
builds the CTR batch needs nothing else.

Variant `simtier_source="per_modality"`: one such histogram per modality from the precomputed similarity
sequences `sim_img`, `sim_txt` over their own masks, concatenated (2 * n_tiers values).
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.nn import functional as F

from training.models.base import Batch, CTRModel, FeatureEmbeddings, ModelConfig
from training.models.layers import TargetAttention, cosine_to_history

MODALITIES = ("img", "txt")
ID_KEYS = ("hist_item", "hist_cat", "hist_mask")
FUSED_KEYS = ("target_mm", "hist_mm")
PER_MODALITY_KEYS = ("sim_img", "sim_txt", "sim_mask_img", "sim_mask_txt")


def similarity_histogram(sim: Tensor, mask: Tensor, n_tiers: int) -> Tensor:
    """Tier counts / T (B, n_tiers) of sim (B, T) in [0, 1] over mask; tier = min(floor(r * N), N - 1)."""
    tiers = (sim.clamp(0.0, 1.0) * n_tiers).long().clamp_max(n_tiers - 1)
    counts = (F.one_hot(tiers, n_tiers).to(sim.dtype) * mask.unsqueeze(-1).to(sim.dtype)).sum(dim=1)
    return counts / sim.shape[1]


def fused_similarity(
    target_mm: Tensor, hist_mm: Tensor, hist_mask: Tensor
) -> tuple[Tensor, Tensor]:
    """(r, valid), both (B, T): r = (cos(target_mm, hist_mm_t) + 1) / 2 and valid = hist_mask where both the
    target and the history item have a (non-zero) multimodal vector."""
    r = (cosine_to_history(target_mm, hist_mm) + 1.0) / 2.0
    has_hist = torch.linalg.vector_norm(hist_mm, dim=-1) > 0
    has_target = (torch.linalg.vector_norm(target_mm, dim=-1) > 0).unsqueeze(-1)
    return r, hist_mask & has_hist & has_target


def fused_histogram(target_mm: Tensor, hist_mm: Tensor, hist_mask: Tensor, n_tiers: int) -> Tensor:
    """SimTier's histogram (B, n_tiers) of the fused-vector similarities (module docstring)."""
    r, valid = fused_similarity(target_mm, hist_mm, hist_mask)
    return similarity_histogram(r, valid, n_tiers)


class SimTier(CTRModel):
    """Interest = concat(DIN interest, SimTier histogram): one fused histogram (default) or per modality."""

    name = "simtier"
    batch_keys = (
        ID_KEYS + FUSED_KEYS
    )  # the default source; `required_keys` follows cfg.simtier_source

    def __init__(self, cfg: ModelConfig, embeddings: FeatureEmbeddings | None = None):
        super().__init__(cfg, embeddings)
        self.per_modality = cfg.simtier_source == "per_modality"
        self.attention = TargetAttention(
            self.item_dim, cfg.att_dims, softmax=cfg.att_softmax, dropout=cfg.dropout
        )
        self.build_head(self.item_dim + (len(MODALITIES) if self.per_modality else 1) * cfg.n_tiers)

    def required_keys(self) -> tuple[str, ...]:
        return self.BASE_KEYS + ID_KEYS + (PER_MODALITY_KEYS if self.per_modality else FUSED_KEYS)

    def histogram(self, batch: Batch) -> Tensor:
        """(B, n_tiers) fused, or (B, 2 * n_tiers) per modality."""
        if self.per_modality:
            return torch.cat(
                [
                    similarity_histogram(
                        batch[f"sim_{m}"], batch[f"sim_mask_{m}"], self.cfg.n_tiers
                    )
                    for m in MODALITIES
                ],
                dim=-1,
            )
        return fused_histogram(
            batch["target_mm"], batch["hist_mm"], batch["hist_mask"], self.cfg.n_tiers
        )

    def interest(self, batch: Batch) -> Tensor:
        h_id = self.attention(self.target(batch), self.history(batch), batch["hist_mask"])
        return torch.cat([h_id, self.histogram(batch)], dim=-1)

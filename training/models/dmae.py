"""DMAE (Zhang et al., CIKM 2025, arXiv 2508.14485): Distribution-Guided Multimodal-Interest Auto-Encoder.

Per modality m in (img, txt), the similarity sequence r^m (B, T) is
- encoded by MIEU: r_hat * Bucket(b(r)) + SinCos(r) [use_mieu_se] + Pos(i) [use_mieu_t], with
  r_hat = w r + b learned per modality and b(r) = min(floor(r * n_buckets), n_buckets - 1); with
  use_mieu_se off a linear code of r replaces the first two terms;
- fused by MIFU [use_mifu]: sliding-window intra-modal attention (|i - j| <= window // 2) with a residual
  and LayerNorm, then cross-modal attention pooling: modality m's sequence is attended by one query, the
  masked mean of the other modality's sequence; with MIFU off, a masked mean per modality;
- decoded by IDDU [use_iddu, training only]: random positions dropped (mask_prob), masked mean, MLP to
  l * n logits, Q = softmax; loss lambda_dec * sum_m KL(P^m || Q^m), P^m = dist_m normalised over its
  cells (rows whose dist_m is all zero are left out).
The user representation concat(u_img, u_txt) is concatenated with a DIN ID interest.
"""
from __future__ import annotations

from typing import cast

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from training.models.base import Batch, CTRModel, FeatureEmbeddings, ModelConfig
from training.models.layers import MLP, MaskedAttention, SinCosEncoding, TargetAttention, masked_mean

MODALITIES = ("img", "txt")


class MIEU(nn.Module):
    """Multimodal Interest Encoding Unit for one modality: r (B, T) -> (B, T, dim)."""

    def __init__(self, dim: int, T: int, n_buckets: int, use_se: bool, use_t: bool):
        super().__init__()
        self.n_buckets, self.use_se = n_buckets, use_se
        if use_se:
            self.buckets = nn.Embedding(n_buckets, dim)
            self.scale = nn.Linear(1, 1)  # r_hat = w r + b
            nn.init.ones_(self.scale.weight)
            nn.init.zeros_(self.scale.bias)
            self.sincos = SinCosEncoding(dim)
        else:
            self.raw = nn.Linear(1, dim)
        self.position = nn.Embedding(T, dim) if use_t else None

    def forward(self, r: Tensor) -> Tensor:
        if self.use_se:
            bucket = (r.clamp(0.0, 1.0) * self.n_buckets).long().clamp_max(self.n_buckets - 1)
            x = self.scale(r.unsqueeze(-1)) * self.buckets(bucket) + self.sincos(r)
        else:
            x = self.raw(r.unsqueeze(-1))
        if self.position is not None:
            x = x + self.position.weight[: r.shape[1]]
        return x


class MIFU(nn.Module):
    """Multimodal Interest Fusion Unit: sliding-window intra-modal, then other-modality-guided attention."""

    def __init__(self, dim: int, n_heads: int, window: int):
        super().__init__()
        self.half_window = window // 2
        self.intra = nn.ModuleDict({m: MaskedAttention(dim, n_heads) for m in MODALITIES})
        self.norm = nn.ModuleDict({m: nn.LayerNorm(dim) for m in MODALITIES})
        self.cross = nn.ModuleDict({m: MaskedAttention(dim, n_heads) for m in MODALITIES})

    def intra_modal(self, m: str, x: Tensor, mask: Tensor) -> Tensor:
        """(B, T, dim): each position attends to the real positions within the window (banded, blocked
        attention); rows at padded positions are not computed, and every use below is masked."""
        return self.norm[m](x + cast(MaskedAttention, self.intra[m]).banded(x, mask, self.half_window))

    def cross_modal(self, m: str, x: Tensor, mask: Tensor, guide: Tensor) -> Tensor:
        """(B, dim): x's real positions pooled by attention with the query `guide` (B, dim)."""
        return cast(MaskedAttention, self.cross[m]).pool(guide, x, mask)


class IDDU(nn.Module):
    """Interest Distribution Decoding Unit for one modality: KL(P || Q) of the reconstructed l x n grid."""

    def __init__(self, dim: int, l: int, n: int, mask_prob: float):  # noqa: E741
        super().__init__()
        self.mask_prob = mask_prob
        self.decoder = MLP(dim, (2 * dim,), l * n)

    def forward(self, x: Tensor, mask: Tensor, dist: Tensor) -> Tensor:
        keep = mask & (torch.rand(mask.shape, device=mask.device) >= self.mask_prob)
        log_q = F.log_softmax(self.decoder(masked_mean(x, keep)), dim=-1)
        p = dist.flatten(1)
        total = p.sum(dim=-1, keepdim=True)
        has_p = (total.squeeze(-1) > 0).to(p.dtype)
        p = p / total.clamp_min(1e-12)
        kl = (torch.xlogy(p, p) - p * log_q).sum(dim=-1)
        return (kl * has_p).sum() / has_p.sum().clamp_min(1.0)


class DMAE(CTRModel):
    """Interest = concat(DIN ID interest, u_img, u_txt); aux_loss = IDDU loss in training mode, else 0."""

    name = "dmae"
    batch_keys = ("hist_item", "hist_cat", "hist_mask", "sim_img", "sim_txt", "sim_mask_img", "sim_mask_txt")
    decoder_keys = ("dist_img", "dist_txt")  # read in training mode only, and only with use_iddu

    def __init__(self, cfg: ModelConfig, embeddings: FeatureEmbeddings | None = None):
        super().__init__(cfg, embeddings)
        d = cfg.emb_dim
        if cfg.use_mieu_se and d % 2:
            raise ValueError(f"emb_dim must be even for the sine-cosine code, got {d}")
        if cfg.use_mifu and d % cfg.n_heads:
            raise ValueError(f"emb_dim = {d} is not divisible by n_heads = {cfg.n_heads}")
        self.id_attention = TargetAttention(self.item_dim, cfg.att_dims, softmax=cfg.att_softmax, dropout=cfg.dropout)
        self.mieu = nn.ModuleDict({m: MIEU(d, cfg.T, cfg.n_buckets, cfg.use_mieu_se, cfg.use_mieu_t)
                                   for m in MODALITIES})
        self.mifu = MIFU(d, cfg.n_heads, cfg.window) if cfg.use_mifu else None
        self.iddu = (nn.ModuleDict({m: IDDU(d, cfg.l, cfg.n, cfg.mask_prob) for m in MODALITIES})
                     if cfg.use_iddu else None)
        self.build_head(self.item_dim + len(MODALITIES) * d)

    def encode(self, batch: Batch) -> tuple[Tensor, Tensor]:
        h_id = self.id_attention(self.target(batch), self.history(batch), batch["hist_mask"])
        masks = {m: batch[f"sim_mask_{m}"] for m in MODALITIES}
        seqs = {m: self.mieu[m](batch[f"sim_{m}"]) for m in MODALITIES}
        if self.mifu is not None:
            seqs = {m: self.mifu.intra_modal(m, seqs[m], masks[m]) for m in MODALITIES}
            means = {m: masked_mean(seqs[m], masks[m]) for m in MODALITIES}
            users = [self.mifu.cross_modal(m, seqs[m], masks[m], means[other])
                     for m, other in zip(MODALITIES, reversed(MODALITIES))]
        else:
            users = [masked_mean(seqs[m], masks[m]) for m in MODALITIES]
        aux = h_id.new_zeros(())
        if self.iddu is not None and self.training:
            kl = sum(self.iddu[m](seqs[m], masks[m], batch[f"dist_{m}"]) for m in MODALITIES)
            aux = self.cfg.lambda_dec * kl
        return torch.cat([h_id, *users], dim=-1), aux

    def interest(self, batch: Batch) -> Tensor:
        return self.encode(batch)[0]

    def required_keys(self) -> tuple[str, ...]:
        decoding = self.iddu is not None and self.training
        return super().required_keys() + (self.decoder_keys if decoding else ())

"""DMAE (Zhang et al., CIKM 2025, arXiv 2508.14485): Distribution-Guided Multimodal-Interest Auto-Encoder.

Per modality m in (img, txt), the similarity sequence r^m (B, T) is
- encoded by MIEU (eq. 1-4, separate parameters per modality):
  r^d_j = r_hat_j * Bucket(floor(r_j (N_B - 1))), r_hat = w r + b learned;  r^sc_j = sin/cos of r_j at d/2
  frequencies;  code_j = ReLU(W2 [ReLU(W1 [r^d_j + r^sc_j] + b1) + PE_{T-j}] + b2)  (+ = concatenation,
  W1, W2 in R^{d x 2d}); PE is a learned position embedding indexed by recency (position 0 = the most recent
  item, CONTRACTS.md's order, = the paper's T - j for chronological j = 1..T);
- fused by MIFU: sliding-window intra-modal attention (|i - j| <= window // 2) with a residual and
  LayerNorm, then cross-modal attention pooling: modality m's sequence is attended by one query, the masked
  mean of the other modality's sequence;
- decoded by IDDU [training only]: random positions dropped (mask_prob), masked mean, MLP to l * n logits,
  Q = softmax; loss lambda_dec * sum_m KL(P^m || Q^m), P^m = dist_m normalised over its cells (rows whose
  dist_m is all zero are left out).
The user representation concat(u_img, u_txt) is concatenated with a DIN ID interest.

Ablations of DMAE's Table 3 (ModelConfig switches, all on by default):
- use_mieu_se=False, "w/o MIEU-se": plain bucketing, the bucket embedding Bucket(floor(r (N_B - 1))) replaces
  the similarity embedding ReLU(W1 [r^d + r^sc] + b1) (no scale, no sine-cosine, no W1); W2 and PE stay;
- use_mieu_t=False, "w/o MIEU-t": no time axis in the interest distribution (l = 1): IDDU reconstructs the
  n-bin distribution summed over the l time slices;
- use_mifu=False, "w/o MIFU": a masked mean of each modality's MIEU codes replaces MIFU;
- use_iddu=False, "w/o IDDU": no decoder and no reconstruction loss (= lambda_dec 0).
"""

from __future__ import annotations

from typing import cast

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from training.models.base import Batch, CTRModel, FeatureEmbeddings, ModelConfig
from training.models.layers import (
    MLP,
    MaskedAttention,
    SinCosEncoding,
    TargetAttention,
    masked_mean,
)

MODALITIES = ("img", "txt")


class MIEU(nn.Module):
    """Multimodal Interest Encoding Unit for one modality (DMAE eq. 1-4): r (B, T) -> codes (B, T, dim).

    `first` (W1, b1: 2d -> d) builds the similarity embedding from [r^d, r^sc]; `second` (W2, b2: 2d -> d)
    combines it with the position embedding. With `use_se` off ("w/o MIEU-se") the plain bucket embedding is
    the similarity embedding and `scale`, `sincos`, `first` do not exist.
    """

    def __init__(self, dim: int, T: int, n_buckets: int, use_se: bool = True):
        super().__init__()
        self.n_buckets, self.use_se = n_buckets, use_se
        self.buckets = nn.Embedding(n_buckets, dim)
        if use_se:
            self.scale = nn.Linear(1, 1)  # r_hat = w r + b
            nn.init.ones_(self.scale.weight)
            nn.init.zeros_(self.scale.bias)
            self.sincos = SinCosEncoding(dim)
            self.first = nn.Linear(2 * dim, dim)  # W1 in R^{d x 2d}, b1
        self.position = nn.Embedding(T, dim)  # PE, indexed by recency (0 = most recent)
        self.second = nn.Linear(2 * dim, dim)  # W2 in R^{d x 2d}, b2

    def bucket(self, r: Tensor) -> Tensor:
        """Bucket index floor(r (N_B - 1)) of r in [0, 1] (clamped), in 0..N_B - 1."""
        return (r.clamp(0.0, 1.0) * (self.n_buckets - 1)).floor().long()

    def similarity_embedding(self, r: Tensor) -> Tensor:
        """(B, T, dim): ReLU(W1 [r^d + r^sc] + b1), or the plain bucket embedding without `use_se`."""
        bucket = self.buckets(self.bucket(r))
        if not self.use_se:
            return bucket
        r_d = self.scale(r.unsqueeze(-1)) * bucket  # eq. 2: r_hat * Bucket(.)
        return F.relu(self.first(torch.cat([r_d, self.sincos(r)], dim=-1)))  # eq. 3-4, first layer

    def forward(self, r: Tensor) -> Tensor:
        h = self.similarity_embedding(r)
        pe = self.position.weight[: r.shape[1]].expand(r.shape[0], -1, -1)
        return F.relu(self.second(torch.cat([h, pe], dim=-1)))  # eq. 4, second layer


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
        return self.norm[m](
            x + cast(MaskedAttention, self.intra[m]).banded(x, mask, self.half_window)
        )

    def cross_modal(self, m: str, x: Tensor, mask: Tensor, guide: Tensor) -> Tensor:
        """(B, dim): x's real positions pooled by attention with the query `guide` (B, dim)."""
        return cast(MaskedAttention, self.cross[m]).pool(guide, x, mask)


class IDDU(nn.Module):
    """Interest Distribution Decoding Unit for one modality: KL(P || Q) of the reconstructed l x n grid.

    With `collapse_time` ("w/o MIEU-t") the target is the n-bin distribution summed over the l time slices
    and the decoder outputs n logits.
    """

    def __init__(self, dim: int, l: int, n: int, mask_prob: float, collapse_time: bool = False):  # noqa: E741
        super().__init__()
        self.l, self.n, self.collapse_time = l, n, collapse_time
        self.mask_prob = mask_prob
        self.decoder = MLP(dim, (2 * dim,), n if collapse_time else l * n)

    def target(self, dist: Tensor) -> Tensor:
        """P before normalising: dist (B, l, n) or (B, l * n) -> (B, l * n), or (B, n) with
        `collapse_time`."""
        grid = dist.reshape(dist.shape[0], self.l, self.n)
        return grid.sum(dim=1) if self.collapse_time else grid.flatten(1)

    def forward(self, x: Tensor, mask: Tensor, dist: Tensor) -> Tensor:
        keep = mask & (torch.rand(mask.shape, device=mask.device) >= self.mask_prob)
        log_q = F.log_softmax(self.decoder(masked_mean(x, keep)), dim=-1)
        p = self.target(dist)
        total = p.sum(dim=-1, keepdim=True)
        has_p = (total.squeeze(-1) > 0).to(p.dtype)
        p = p / total.clamp_min(1e-12)
        kl = (torch.xlogy(p, p) - p * log_q).sum(dim=-1)
        return (kl * has_p).sum() / has_p.sum().clamp_min(1.0)


class DMAE(CTRModel):
    """Interest = concat(DIN ID interest, u_img, u_txt); aux_loss = IDDU loss in training mode, else 0."""

    name = "dmae"
    batch_keys = (
        "hist_item",
        "hist_cat",
        "hist_mask",
        "sim_img",
        "sim_txt",
        "sim_mask_img",
        "sim_mask_txt",
    )
    decoder_keys = ("dist_img", "dist_txt")  # read in training mode only, and only with use_iddu

    def __init__(self, cfg: ModelConfig, embeddings: FeatureEmbeddings | None = None):
        super().__init__(cfg, embeddings)
        d = cfg.emb_dim
        if cfg.use_mieu_se and d % 2:
            raise ValueError(f"emb_dim must be even for the sine-cosine code, got {d}")
        if cfg.use_mifu and d % cfg.n_heads:
            raise ValueError(f"emb_dim = {d} is not divisible by n_heads = {cfg.n_heads}")
        self.id_attention = TargetAttention(
            self.item_dim, cfg.att_dims, softmax=cfg.att_softmax, dropout=cfg.dropout
        )
        self.mieu = nn.ModuleDict(
            {m: MIEU(d, cfg.seq_len, cfg.n_buckets, cfg.use_mieu_se) for m in MODALITIES}
        )
        self.mifu = MIFU(d, cfg.n_heads, cfg.window) if cfg.use_mifu else None
        self.iddu = (
            nn.ModuleDict(
                {
                    m: IDDU(
                        d,
                        cfg.time_slices,
                        cfg.sim_bins,
                        cfg.mask_prob,
                        collapse_time=not cfg.use_mieu_t,
                    )
                    for m in MODALITIES
                }
            )
            if cfg.use_iddu and cfg.lambda_dec > 0
            else None
        )
        self.build_head(self.item_dim + len(MODALITIES) * d)

    def encode(self, batch: Batch) -> tuple[Tensor, Tensor]:
        h_id = self.id_attention(self.target(batch), self.history(batch), batch["hist_mask"])
        masks = {m: batch[f"sim_mask_{m}"] for m in MODALITIES}
        seqs = {m: self.mieu[m](batch[f"sim_{m}"]) for m in MODALITIES}
        if self.mifu is not None:
            seqs = {m: self.mifu.intra_modal(m, seqs[m], masks[m]) for m in MODALITIES}
            means = {m: masked_mean(seqs[m], masks[m]) for m in MODALITIES}
            users = [
                self.mifu.cross_modal(m, seqs[m], masks[m], means[other])
                for m, other in zip(MODALITIES, reversed(MODALITIES))
            ]
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

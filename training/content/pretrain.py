"""MIM pre-training on the domain's own item content: DDA, then DMA.

DDA (domain data adaptation) continues training each tower on the catalogue, with objectives that
need no labels and run on CPU:
- text: unsupervised SimCSE. Each item text is encoded twice with dropout on; the two views of the
  same item are positives, the rest of the (all-worker) batch negatives. A masked-LM head would need
  the full vocabulary softmax and MiniLM ships without one; SimCSE trains exactly the pooled
  embedding we use, and only the top `text_trainable_layers` + projection.
- image: SimCLR-style augmentation contrast. Two random views of each poster (zoom/shift crop,
  horizontal flip, brightness/contrast/saturation jitter, random greyscale, all batched in torch)
  are positives. It needs no decoder (unlike masked-patch reconstruction) and trains the ViT that
  is built from scratch when no checkpoint is given.
DMA (domain modality alignment): symmetric image-text InfoNCE over items that have both.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from training.content.encoders import MultimodalEncoder
from training.content.images import to_unit_tensor
from training.content.items import ItemTable
from training.content.losses import symmetric_info_nce
from training.content.trainer import OptimConfig, Progress, make_optimizer, optimizer_step
from training.distributed import broadcast_module, global_count, rank, shard_order, world_size

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PretrainConfig:
    dda_epochs: int = 1
    dma_epochs: int = 1
    batch_size: int = 64  # items per worker and step
    text_temperature: float = 0.05
    image_temperature: float = 0.1
    dma_temperature: float = 0.07
    max_steps: int = 0  # per stage and epoch; 0 = the whole catalogue (smoke runs set it)
    seed: int = 7
    log_every: int = 10
    optim: OptimConfig = field(default_factory=OptimConfig)


def augment(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Random view of (M, 3, S, S) [0, 1] images: crop-zoom + shift + flip, colour jitter, greyscale."""
    m = x.shape[0]
    r = torch.rand(8, m, generator=gen)  # every random draw of the batch at once
    scale = 0.55 + 0.45 * r[0]
    theta = torch.zeros(m, 2, 3)
    theta[:, 0, 0] = scale * torch.where(r[1] < 0.5, -1.0, 1.0)  # horizontal flip
    theta[:, 1, 1] = scale
    theta[:, 0, 2] = (2 * r[2] - 1) * (1 - scale)
    theta[:, 1, 2] = (2 * r[3] - 1) * (1 - scale)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    out = F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)
    contrast, brightness = (0.6 + 0.8 * r[4]).view(m, 1, 1, 1), (0.6 + 0.8 * r[5]).view(m, 1, 1, 1)
    mean = out.mean(dim=(1, 2, 3), keepdim=True)
    out = ((out - mean) * contrast + mean) * brightness
    saturation = torch.where(r[6] < 0.2, 0.0, 0.4 + 1.2 * r[7]).view(m, 1, 1, 1)  # 20% greyscale
    grey = out.mean(dim=1, keepdim=True)
    return (grey + (out - grey) * saturation).clamp(0.0, 1.0)


def _row_batches(
    rows: np.ndarray, batch_size: int, seed: int, epoch: int, max_steps: int
) -> list[np.ndarray]:
    """This worker's shuffled share of `rows`, in batches (same number of steps on every rank)."""
    order = rows[shard_order(len(rows), seed, epoch, drop_last=world_size() > 1)]
    batches = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    return batches[:max_steps] if max_steps > 0 else batches


def _image_pair_loss(
    encoder: MultimodalEncoder, images: list, gen: torch.Generator, temperature: float
) -> torch.Tensor | None:
    arrays = [a for a in images if a is not None]
    if global_count(len(arrays)) < 2:
        return None
    if arrays:
        x = to_unit_tensor(arrays)
        v1, v2 = encoder.image_vectors(augment(x, gen)), encoder.image_vectors(augment(x, gen))
    else:  # this worker has no image in its batch; the others still gather an empty slice from it
        v1 = v2 = torch.zeros(0, encoder.cfg.dim)
    return symmetric_info_nce(v1, v2, temperature)


def dda_epoch(
    encoder: MultimodalEncoder,
    table: ItemTable,
    optimizer: torch.optim.Optimizer,
    cfg: PretrainConfig,
    epoch: int,
) -> float:
    """One pass of SimCSE (texts) + augmentation contrast (posters) over the catalogue; mean loss."""
    gen = torch.Generator().manual_seed(cfg.seed * 1000 + epoch * 10 + rank())
    batches = _row_batches(np.arange(len(table)), cfg.batch_size, cfg.seed, epoch, cfg.max_steps)
    progress = Progress(f"pretrain/dda epoch {epoch + 1}", len(batches), cfg.log_every)
    losses = []
    for rows in batches:
        texts, images = table.batch(rows)
        loss = symmetric_info_nce(
            encoder.text_vectors(texts), encoder.text_vectors(texts), cfg.text_temperature
        )
        image_loss = _image_pair_loss(encoder, images, gen, cfg.image_temperature)
        if image_loss is not None:
            loss = loss + image_loss
        optimizer_step(loss, optimizer, cfg.optim.grad_clip)
        losses.append(float(loss.detach()))
        progress.update(losses[-1])
    return float(np.mean(losses)) if losses else float("nan")


def dma_epoch(
    encoder: MultimodalEncoder,
    table: ItemTable,
    optimizer: torch.optim.Optimizer,
    cfg: PretrainConfig,
    epoch: int,
) -> float:
    """One pass of symmetric image-text InfoNCE over items with an image; mean loss."""
    batches = _row_batches(
        np.flatnonzero(table.has_image), cfg.batch_size, cfg.seed + 1, epoch, cfg.max_steps
    )
    progress = Progress(f"pretrain/dma epoch {epoch + 1}", len(batches), cfg.log_every)
    losses = []
    for rows in batches:
        texts, images = table.batch(rows)
        img = encoder.image_vectors(to_unit_tensor([a for a in images if a is not None]))
        loss = symmetric_info_nce(img, encoder.text_vectors(texts), cfg.dma_temperature)
        optimizer_step(loss, optimizer, cfg.optim.grad_clip)
        losses.append(float(loss.detach()))
        progress.update(losses[-1])
    return float(np.mean(losses)) if losses else float("nan")


def pretrain(encoder: MultimodalEncoder, items: pd.DataFrame, cfg: PretrainConfig) -> dict:
    """DDA for cfg.dda_epochs, then DMA for cfg.dma_epochs; returns a summary dict (also logged)."""
    start = time.time()
    torch.manual_seed(cfg.seed)
    table = ItemTable.from_frame(items, encoder.image_size)
    broadcast_module(encoder)
    optimizer = make_optimizer(encoder, cfg.optim)
    encoder.train()
    dda = [dda_epoch(encoder, table, optimizer, cfg, e) for e in range(cfg.dda_epochs)]
    dma = [dma_epoch(encoder, table, optimizer, cfg, e) for e in range(cfg.dma_epochs)]
    encoder.eval()
    summary = {
        "stage": "pretrain",
        "items": len(table),
        "items_with_image": int(table.has_image.sum()),
        "workers": world_size(),
        "dda_loss": dda,
        "dma_loss": dma,
        "seconds": round(time.time() - start, 1),
    }
    if rank() == 0:
        log.info(
            "pretrain done: %d items (%d with image), %d worker(s), DDA loss %s, DMA loss %s, %.1fs",
            summary["items"],
            summary["items_with_image"],
            summary["workers"],
            [round(v, 4) for v in dda],
            [round(v, 4) for v in dma],
            summary["seconds"],
        )
    return summary

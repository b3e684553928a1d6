"""Shared optimisation pieces: optimizer with per-part learning rates, one step, progress lines."""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import torch

from training.distributed import rank, sum_gradients
from training.content.encoders import MultimodalEncoder

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class OptimConfig:
    lr_heads: float = 1e-3  # projections + TFN MLP
    lr_text: float = 5e-5  # trainable top layers of the pre-trained text model
    lr_image: float = 1e-4  # trainable image layers (top block of the pretrained EfficientNet by default)
    weight_decay: float = 0.01
    grad_clip: float = 1.0


def make_optimizer(encoder: MultimodalEncoder, cfg: OptimConfig,
                   parts: tuple[str, ...] | None = None) -> torch.optim.Optimizer:
    """AdamW over the trainable parameters of `parts` (default all: text, image, heads)."""
    groups = encoder.param_groups()
    lrs = {"text": cfg.lr_text, "image": cfg.lr_image, "heads": cfg.lr_heads}
    params = [{"params": groups[name], "lr": lrs[name], "name": name} for name in lrs
              if groups[name] and (parts is None or name in parts)]
    return torch.optim.AdamW(params, weight_decay=cfg.weight_decay)


def trainable_params(optimizer: torch.optim.Optimizer) -> list[torch.nn.Parameter]:
    return [p for group in optimizer.param_groups for p in group["params"]]


def optimizer_step(loss: torch.Tensor, optimizer: torch.optim.Optimizer, grad_clip: float) -> None:
    """backward, sum gradients over workers (losses cover the gathered batch), clip, step."""
    optimizer.zero_grad(set_to_none=True)
    if loss.requires_grad:  # a rank may hold no differentiable term; it still joins the all-reduce
        loss.backward()
    params = trainable_params(optimizer)
    sum_gradients(params)
    if grad_clip > 0:
        torch.nn.utils.clip_grad_norm_(params, grad_clip)
    optimizer.step()


class Progress:
    """Rank-0 log line every `every` steps with a running mean loss and throughput."""

    def __init__(self, name: str, total: int, every: int):
        self.name, self.total, self.every = name, total, max(1, every)
        self.start = time.time()
        self.step = 0
        self._sum = 0.0
        self._n = 0

    def update(self, loss: float, extra: str = "") -> None:
        self.step += 1
        self._sum += loss
        self._n += 1
        if rank() == 0 and (self.step % self.every == 0 or self.step == self.total):
            secs = time.time() - self.start
            log.info("%s step %d/%d loss %.4f (%.2f s/step)%s", self.name, self.step, self.total,
                     self._sum / self._n, secs / self.step, (" " + extra) if extra else "")
            self._sum, self._n = 0.0, 0

    @property
    def seconds(self) -> float:
        return time.time() - self.start

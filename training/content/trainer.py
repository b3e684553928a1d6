"""Shared optimisation pieces: optimizer with per-part learning rates, one step, progress (tqdm)."""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch
from tqdm import tqdm

from training.content.encoders import MultimodalEncoder
from training.distributed import rank, sum_gradients


@dataclass(frozen=True)
class OptimConfig:
    lr_heads: float = 1e-3  # projections + TFN MLP
    lr_text: float = 5e-5  # trainable top layers of the pre-trained text model
    lr_image: float = (
        1e-4  # trainable image layers (top block of the pretrained EfficientNet by default)
    )
    weight_decay: float = 0.01
    grad_clip: float = 1.0


def make_optimizer(
    encoder: MultimodalEncoder, cfg: OptimConfig, parts: tuple[str, ...] | None = None
) -> torch.optim.Optimizer:
    """AdamW over the trainable parameters of `parts` (default all: text, image, heads)."""
    groups = encoder.param_groups()
    lrs = {"text": cfg.lr_text, "image": cfg.lr_image, "heads": cfg.lr_heads}
    params = [
        {"params": groups[name], "lr": lrs[name], "name": name}
        for name in lrs
        if groups[name] and (parts is None or name in parts)
    ]
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
    """Rank-0 tqdm bar over `total` steps; its postfix is the mean loss of the last `every` steps."""

    def __init__(self, name: str, total: int, every: int):
        self.total, self.every = total, max(1, every)
        self.start = time.time()
        self.step = 0
        self._sum = 0.0
        self._n = 0
        self.bar = tqdm(
            total=total, desc=name, unit="step", leave=False, disable=rank() != 0, mininterval=2.0
        )

    def update(self, loss: float, extra: str = "") -> None:
        self.step += 1
        self._sum += loss
        self._n += 1
        if self.step % self.every == 0 or self.step == self.total:
            self.bar.set_postfix_str(
                f"loss {self._sum / self._n:.4f}{' ' + extra if extra else ''}", refresh=False
            )
            self._sum, self._n = 0.0, 0
        self.bar.update(1)
        if self.step == self.total:
            self.bar.close()

    @property
    def seconds(self) -> float:
        return time.time() - self.start

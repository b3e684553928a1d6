"""torch.distributed helpers for CPU training (gloo under torchrun), shared by the content models and CTR
training; all are no-ops in one process.

Content models (C-SFT, DMA) sum gradients by hand; CTR training uses DDP. The content convention:
every rank computes the loss over the *gathered* global batch, differentiating only through its own
embeddings (see training/content/losses.gather_from_all_workers), so the true gradient of the global
loss is the SUM of the ranks' gradients (open_clip's gather-without-grad scheme).
"""

from __future__ import annotations

import os
from typing import cast

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import Dataset, DistributedSampler


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def init_from_env(backend: str = "gloo") -> bool:
    """Join the process group torchrun describes (WORLD_SIZE > 1); one thread share per process."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or (
        dist.is_available() and dist.is_initialized()
    ):
        return is_distributed()
    dist.init_process_group(backend=backend)
    cores = os.cpu_count() or 1
    torch.set_num_threads(max(1, cores // dist.get_world_size()))
    return True


def shard_order(n: int, seed: int, epoch: int, drop_last: bool) -> np.ndarray:
    """This worker's shuffled share of range(n) (DistributedSampler: equal counts on every rank)."""
    sampler: DistributedSampler = DistributedSampler(
        cast(Dataset, range(n)),
        num_replicas=world_size(),
        rank=rank(),
        shuffle=True,
        seed=seed,
        drop_last=drop_last,
    )
    sampler.set_epoch(epoch)
    return np.fromiter(iter(sampler), dtype=np.int64)


def shutdown() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


@torch.no_grad()
def broadcast_module(module: nn.Module) -> None:
    """Copy rank 0's parameters and buffers to every rank (random inits differ per process)."""
    if not is_distributed():
        return
    for tensor in module.state_dict().values():
        dist.broadcast(tensor, src=0)


@torch.no_grad()
def sum_gradients(params: list[nn.Parameter]) -> None:
    """All-reduce (sum) gradients in one flat buffer; a missing grad counts as zero."""
    if not is_distributed() or not params:
        return
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat)
    offset = 0
    for p in params:
        n = p.numel()
        p.grad = flat[offset : offset + n].view_as(p).clone()
        offset += n


def global_count(local: int) -> int:
    """Sum of a per-rank count over ranks (so every rank takes the same branch)."""
    if not is_distributed():
        return int(local)
    t = torch.tensor([int(local)], dtype=torch.long)
    dist.all_reduce(t)
    return int(t.item())


def barrier() -> None:
    if is_distributed():
        dist.barrier()

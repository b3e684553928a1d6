"""Contrastive losses for MIM: InfoNCE, a queue of past candidates, cross-worker gather, C-SFT.

C-SFT (MIM): L = L_q2item + alpha L_q2txt + beta L_q2img, each an InfoNCE where the query item's
fused vector must pick its positive among the candidates at that level (fused / txt / img vectors).
Candidates = positives + one same-category hard negative per pair, from all P workers' current
batches (N pairs each) plus the queue of the last k batches, so every query sees
2NP + 2NPk - 1 = 2NP(k+1) - 1 negatives once the queue is full.

Optional false-negative masking: when the query/positive/negative dicts carry "item_id", candidate
slots holding the query's own positive item (other than its positive slot) or the query item itself
are left out of that query's softmax (popular items recur across a batch and the queue). The slot
count, and so stats["n_negatives"] = 2NP(k+1)-1, is unchanged; stats["n_masked"] reports the mean
number of slots masked per query.

Queue drift: a queue of stored *embeddings* lets the loss fall by rotating every fresh embedding
away from the stale ones (q.p and fresh q.c are rotation-invariant, q.queue is not); on MovieLens
this drove the loss back to chance and halved recall. Given `heads`, the queue instead keeps the
candidates' backbone features and re-embeds them with the current projections + TFN each step
(gradients included), so only the slowly trained backbone layers are stale.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable

import torch
import torch.distributed as dist
import torch.nn.functional as F

from training.distributed import is_distributed

LEVELS = ("fused", "txt", "img", "img_mask")
FEATURES = ("txt_feat", "img_feat")
ITEM_ID = "item_id"
Heads = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], dict[str, torch.Tensor]]


def info_nce(
    query: torch.Tensor,
    candidates: torch.Tensor,
    positive: torch.Tensor,
    temperature: float,
    valid: torch.Tensor | None = None,
) -> torch.Tensor:
    """Mean cross-entropy of query i picking candidates[positive[i]]; `valid` (M,) or (B, M) masks
    candidates (the positive must stay valid)."""
    logits = query @ candidates.t() / temperature
    if valid is not None:
        logits = logits.masked_fill(
            ~(valid if valid.dim() == 2 else valid.unsqueeze(0)), float("-inf")
        )
    return F.cross_entropy(logits, positive)


def gather_from_all_workers(x: torch.Tensor) -> torch.Tensor:
    """Concatenate x from every rank in rank order (first dims may differ); the local slice keeps its
    autograd graph, the others are constants. Identity when torch.distributed is not initialised."""
    if not is_distributed():
        return x
    world, me = dist.get_world_size(), dist.get_rank()
    size = torch.tensor([x.shape[0]], dtype=torch.long)
    sizes = [torch.zeros_like(size) for _ in range(world)]
    dist.all_gather(sizes, size)
    counts = [int(s.item()) for s in sizes]
    wire = x.detach().to(torch.uint8) if x.dtype == torch.bool else x.detach()  # gloo has no bool
    padded = wire.new_zeros((max(counts),) + tuple(x.shape[1:]))
    padded[: x.shape[0]] = wire
    buffers = [torch.empty_like(padded) for _ in range(world)]
    dist.all_gather(buffers, padded.contiguous())
    parts = [buf[:n].to(x.dtype) for buf, n in zip(buffers, counts)]
    parts[me] = x
    return torch.cat(parts)


class NegativeQueue:
    """The last k batches of (detached) candidate embeddings, one dict of tensors per batch."""

    def __init__(self, k: int = 10):
        if k < 0:
            raise ValueError("k must be >= 0")
        self.k = k
        self._batches: deque[dict[str, torch.Tensor]] = deque(maxlen=k if k > 0 else None)

    def __len__(self) -> int:
        return len(self._batches)

    @property
    def size(self) -> int:
        """Number of queued candidate rows."""
        return sum(int(b["fused"].shape[0]) for b in self._batches)

    def push(self, batch: dict[str, torch.Tensor]) -> None:
        if self.k == 0:
            return
        self._batches.append({key: value.detach().clone() for key, value in batch.items()})

    def tensors(self) -> dict[str, torch.Tensor] | None:
        """All queued rows per key, oldest first; None when empty."""
        if not self._batches:
            return None
        return {key: torch.cat([b[key] for b in self._batches]) for key in self._batches[0]}


def _cat_keys(
    current: dict[str, torch.Tensor], past: dict[str, torch.Tensor] | None
) -> dict[str, torch.Tensor]:
    if past is None:
        return current
    if set(past) != set(current):
        raise ValueError(
            "queue and batch hold different keys: pass item_id / heads on every step or never"
        )
    return {key: torch.cat([current[key], past[key]]) for key in current}


def _not_false_negative(query_ids: torch.Tensor, cand_ids: torch.Tensor) -> torch.Tensor:
    """(n, M) True where slot j may stay in query i's softmax: not a copy of the query's positive
    item (except its own positive slot i), and not the query item itself."""
    n = query_ids.shape[0]
    pos_ids = cand_ids[:n]
    keep = (cand_ids.unsqueeze(0) != pos_ids.unsqueeze(1)) & (
        cand_ids.unsqueeze(0) != query_ids.unsqueeze(1)
    )
    keep[torch.arange(n), torch.arange(n)] = True
    return keep


def csft_loss(
    query: dict[str, torch.Tensor],
    positive: dict[str, torch.Tensor],
    negative: dict[str, torch.Tensor],
    queue: NegativeQueue | None,
    alpha: float = 0.5,
    beta: float = 0.5,
    temperature: float = 0.07,
    heads: Heads | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """C-SFT loss for N local (query, positive, hard negative) triples of encoder outputs.

    Gathers all workers' triples, so the loss covers the global batch (sum gradients across ranks),
    then pushes this step's candidates onto `queue`. `heads(txt_feat, img_feat, img_mask)` (e.g.
    MultimodalEncoder.heads) re-embeds queued backbone features; the positive / negative dicts then
    need txt_feat and img_feat. Returns (loss, stats); stats["n_negatives"] = candidate slots per
    query minus its positive.
    """
    q = gather_from_all_workers(query["fused"])
    keys = LEVELS + ((ITEM_ID,) if all(ITEM_ID in d for d in (query, positive, negative)) else ())
    keys += FEATURES if heads is not None else ()
    current = {
        key: gather_from_all_workers(torch.cat([positive[key], negative[key]])) for key in keys
    }
    n = q.shape[0]
    # gathered rows are [pos_r0, neg_r0, pos_r1, neg_r1, ...]: put all positives first
    order = _positives_first(_rank_sizes(query["fused"].shape[0]))
    current = {key: value[order] for key, value in current.items()}
    past = queue.tensors() if queue is not None else None
    if past is not None and heads is not None:
        past = {**past, **heads(past["txt_feat"], past["img_feat"], past["img_mask"])}
    cands = _cat_keys(current, past)
    target = torch.arange(n)
    keep = None
    if ITEM_ID in cands:
        keep = _not_false_negative(gather_from_all_workers(query[ITEM_ID]), cands[ITEM_ID])
    loss_item = info_nce(q, cands["fused"], target, temperature, valid=keep)
    loss_txt = info_nce(q, cands["txt"], target, temperature, valid=keep)
    with_img = cands["img_mask"][:n]  # queries whose positive has an image
    if bool(with_img.any()):
        img_keep = (
            cands["img_mask"].unsqueeze(0).expand(n, -1)
            if keep is None
            else keep & cands["img_mask"]
        )
        loss_img = info_nce(
            q[with_img], cands["img"], target[with_img], temperature, valid=img_keep[with_img]
        )
    else:
        loss_img = q.new_zeros(())
    loss = loss_item + alpha * loss_txt + beta * loss_img
    if queue is not None:
        queue.push(
            {
                key: current[key]
                for key in (FEATURES + ("img_mask",) if heads is not None else LEVELS)
            }
            | ({ITEM_ID: current[ITEM_ID]} if ITEM_ID in current else {})
        )
    n_slots = int(cands["fused"].shape[0])
    stats = {
        "loss": float(loss.detach()),
        "loss_q2item": float(loss_item.detach()),
        "loss_q2txt": float(loss_txt.detach()),
        "loss_q2img": float(loss_img.detach()),
        "n_queries": n,
        "n_negatives": n_slots - 1,
        "n_masked": 0.0 if keep is None else float(n_slots - keep.sum(1).float().mean()),
        "n_img_negatives": int(cands["img_mask"].sum()) - 1,
    }
    return loss, stats


def _rank_sizes(local: int) -> list[int]:
    if not is_distributed():
        return [local]
    size = torch.tensor([local], dtype=torch.long)
    sizes = [torch.zeros_like(size) for _ in range(dist.get_world_size())]
    dist.all_gather(sizes, size)
    return [int(s.item()) for s in sizes]


def _positives_first(sizes: list[int]) -> torch.Tensor:
    """Index that reorders [pos_r0, neg_r0, pos_r1, neg_r1, ...] into [all pos..., all neg...]."""
    pos, neg, start = [], [], 0
    for n in sizes:
        pos.append(torch.arange(start, start + n))
        neg.append(torch.arange(start + n, start + 2 * n))
        start += 2 * n
    return torch.cat(pos + neg)


def symmetric_info_nce(a: torch.Tensor, b: torch.Tensor, temperature: float) -> torch.Tensor:
    """CLIP-style loss over aligned rows of a and b (gathered across workers first)."""
    a_all, b_all = gather_from_all_workers(a), gather_from_all_workers(b)
    target = torch.arange(a_all.shape[0])
    return 0.5 * (
        info_nce(a_all, b_all, target, temperature) + info_nce(b_all, a_all, target, temperature)
    )

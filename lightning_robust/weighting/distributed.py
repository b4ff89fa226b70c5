"""Global-batch helpers: gather per-example losses from every rank (docs/DESIGN.md, "Scope").

With ``scope="global"`` the worst case is taken over the concatenation, in rank order, of
the losses of all ranks' current micro-batches (docs/ALGORITHMS.md §0, "Which n"). Every rank
computes the same weights on the same gathered vector and keeps its own slice.

Only ``torch.distributed`` is used (no Lightning), so the helpers work under any launcher
(Lightning DDP/FSDP/DeepSpeed, ``torchrun``, or a hand-made process group).
"""

from __future__ import annotations

import torch
import torch.distributed as dist

__all__ = ["world_info", "all_gather_concat"]


def world_info() -> tuple[int, int]:
    """Return ``(world_size, rank)``; ``(1, 0)`` when no process group is initialised."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size(), dist.get_rank()
    return 1, 0


def all_gather_concat(x: torch.Tensor) -> tuple[torch.Tensor, int, list[int]]:
    """All-gather ``x`` (shape ``[..., n_rank]``, sizes may differ per rank) along its last dim.

    Ranks first exchange their sizes, then pad to the largest size, gather, and strip the
    padding. The result is the concatenation in rank order. This rank's own block is ``x``
    itself (not a gathered copy), so a graph carried by ``x`` survives; the other blocks carry
    no gradient.

    Returns ``(concatenated, offset_of_this_rank, sizes)``. The size exchange needs one host
    synchronisation (the padded length must be known on the host).
    """
    world, rank = world_info()
    n = x.shape[-1]
    if world == 1:
        return x, 0, [n]
    size = torch.tensor([n], dtype=torch.long, device=x.device)
    sizes_t = [torch.zeros_like(size) for _ in range(world)]
    dist.all_gather(sizes_t, size)
    sizes = torch.cat(sizes_t).tolist()
    n_max = max(sizes)
    send = x.detach()
    if n < n_max:
        pad = send.new_zeros((*send.shape[:-1], n_max - n))
        send = torch.cat([send, pad], dim=-1)
    send = send.contiguous()
    parts = [torch.empty_like(send) for _ in range(world)]
    dist.all_gather(parts, send)
    blocks = [p[..., :s] for p, s in zip(parts, sizes, strict=True)]
    blocks[rank] = x
    offset = sum(sizes[:rank])
    return torch.cat(blocks, dim=-1), offset, sizes

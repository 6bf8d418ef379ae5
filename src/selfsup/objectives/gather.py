"""Features of the whole global batch for contrastive losses across processes (open_clip's two switches).

    gather(x, with_grad)   (B, E) on each of W ranks -> (W·B, E), rank r's rows at [r·B, (r+1)·B)

with_grad=False gathers without autograd and puts this rank's own tensor back in its slot, so gradients reach
the local rows only; with_grad=True uses torch.distributed.nn's all_gather, whose backward sums each slot's
gradient over the ranks, so every term of the global loss reaches the rows it depends on. One process, or no
process group: x itself, and every formula reduces to the single-process one.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor


def rank_and_world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def gather(x: Tensor, with_grad: bool) -> Tensor:
    rank, world = rank_and_world()
    if world == 1:
        return x
    if with_grad:
        import torch.distributed.nn.functional as dist_nn  # imported here: it registers autograd ops on import

        return torch.cat(dist_nn.all_gather(x), dim=0)
    parts = [torch.empty_like(x) for _ in range(world)]
    dist.all_gather(parts, x.detach().contiguous())
    parts[rank] = x
    return torch.cat(parts, dim=0)

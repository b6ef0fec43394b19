"""DistributedDataParallel under `torchrun`: the same entry point runs with 1 or N processes.

torchrun sets RANK / WORLD_SIZE / MASTER_ADDR / MASTER_PORT; without them this is one process and every
helper here is a no-op. On CPU the backend is gloo. Each rank trains on its own streams (see
`Streams.select`); DDP averages the gradients, so every rank keeps identical weights.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn


@dataclass(frozen=True)
class DistContext:
    rank: int = 0
    world_size: int = 1

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed() -> DistContext:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistContext()
    if not dist.is_initialized():
        dist.init_process_group(backend="gloo")
    return DistContext(rank=dist.get_rank(), world_size=dist.get_world_size())


def shutdown(ctx: DistContext) -> None:
    if ctx.enabled and dist.is_initialized():
        dist.destroy_process_group()


def wrap(model: nn.Module, ctx: DistContext) -> nn.Module:
    """DDP around the model when distributed (it broadcasts rank 0's weights at construction)."""
    if not ctx.enabled:
        return model
    return nn.parallel.DistributedDataParallel(model)


def unwrap(model: nn.Module) -> nn.Module:
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


def all_reduce_sum(values: torch.Tensor, ctx: DistContext) -> torch.Tensor:
    """Sum of `values` over ranks (a copy; the input is left alone)."""
    out = values.detach().clone()
    if ctx.enabled:
        dist.all_reduce(out, op=dist.ReduceOp.SUM)
    return out


def any_rank(flag: bool, ctx: DistContext) -> bool:
    """True on every rank if it is true on any (keeps stop decisions in lockstep)."""
    return bool(all_reduce_sum(torch.tensor([float(flag)]), ctx).item() > 0)


def weights_digest(model: nn.Module) -> str:
    """sha256 of the parameters' bytes in a fixed order: equal digests mean bit-identical weights."""
    digest = hashlib.sha256()
    for name, tensor in sorted(unwrap(model).state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def gather_digests(model: nn.Module, ctx: DistContext) -> list[str]:
    """Every rank's weights digest, in rank order (one element when not distributed)."""
    mine = weights_digest(model)
    if not ctx.enabled:
        return [mine]
    everyone: list[str | None] = [None] * ctx.world_size
    dist.all_gather_object(everyone, mine)
    return [d or "" for d in everyone]


def barrier(ctx: DistContext) -> None:
    if ctx.enabled:
        dist.barrier()

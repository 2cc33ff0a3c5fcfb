"""torchrun / DistributedDataParallel: gloo on CPU, nccl on GPU; rank 0 writes checkpoints and logs."""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import Tensor, nn

from ..devices import pick_device

__all__ = ["Dist", "setup", "teardown", "pick_device"]


@dataclass(frozen=True)
class Dist:
    """Where this process sits: rank among world processes, and its device."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world > 1

    def wrap(self, net: nn.Module) -> nn.Module:
        """DistributedDataParallel(net) under torchrun, else net itself."""
        if not self.active:
            return net
        ids = [self.device.index] if self.device.type == "cuda" else None
        return nn.parallel.DistributedDataParallel(net, device_ids=ids)

    def all_sum(self, x: Tensor) -> Tensor:
        """Sum of x over all processes (x itself on one process)."""
        if self.active:
            x = x.clone()
            dist.all_reduce(x)
        return x

    def barrier(self) -> None:
        if self.active:
            dist.barrier()


def setup(device: str = "auto") -> Dist:
    """Join the process group torchrun set up (WORLD_SIZE > 1), or run alone."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    dev = pick_device(device, local_rank)
    if world <= 1:
        return Dist(device=dev)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if dev.type == "cuda" else "gloo")
    return Dist(rank=dist.get_rank(), world=dist.get_world_size(), local_rank=local_rank, device=dev)


def teardown(d: Dist) -> None:
    if d.active and dist.is_initialized():
        dist.destroy_process_group()

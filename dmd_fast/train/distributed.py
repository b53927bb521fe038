"""Data-parallel training with torchrun: process group from the environment, samplers, reductions.

``torchrun --nproc_per_node N -m dmd_fast.cli train ...`` (or ``dmd-fast train`` under torchrun)
uses NCCL on CUDA and gloo on the CPU. Each rank sees 1/N of every epoch (DistributedSampler,
reshuffled per epoch from the seed); gradients are averaged across ranks at every backward, so the
accumulation window and value clipping act on identical gradients on every rank.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, DistributedSampler


@dataclass
class DistInfo:
    enabled: bool = False
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_from_env(device_type: str) -> DistInfo:
    """Join the process group torchrun describes (WORLD_SIZE > 1); a no-op otherwise."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo()
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device_type == "cuda" else "gloo")
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if device_type == "cuda":
        torch.cuda.set_device(local)
    return DistInfo(True, dist.get_rank(), dist.get_world_size(), local)


def current() -> DistInfo:
    if dist.is_available() and dist.is_initialized():
        return DistInfo(True, dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))
    return DistInfo()


def distributed_train_loader(dataset, batch_size: int, seed: int, info: DistInfo) -> DataLoader:
    """Train loader whose sampler gives this rank its share of a seeded per-epoch shuffle."""
    sampler = DistributedSampler(dataset, num_replicas=info.world_size, rank=info.rank, shuffle=True, seed=seed)
    return DataLoader(dataset, batch_size=batch_size, sampler=sampler)


def all_gather_cat(x: torch.Tensor) -> torch.Tensor:
    """Concatenate a 1-D tensor of equal length from every rank (identity when not distributed)."""
    info = current()
    if not info.enabled:
        return x
    parts = [torch.empty_like(x) for _ in range(info.world_size)]
    dist.all_gather(parts, x.contiguous())
    return torch.cat(parts)


def all_reduce_mean(x: torch.Tensor) -> torch.Tensor:
    info = current()
    if not info.enabled:
        return x
    y = x.clone()
    dist.all_reduce(y)
    return y / info.world_size

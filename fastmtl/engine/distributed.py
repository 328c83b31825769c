"""Process-group helpers for torchrun launches (``env://``): gloo on CPU, NCCL on CUDA.

A plain ``python`` launch (no ``WORLD_SIZE`` in the environment) runs as rank 0 of 1 and never touches
``torch.distributed``, so every helper here is safe to call unconditionally.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from fastmtl.runtime import resolve_device

__all__ = ["DistInfo", "all_gather_objects", "barrier", "broadcast_object", "cleanup", "init_distributed"]


@dataclass(frozen=True)
class DistInfo:
    """Where this process sits: ``rank`` of ``world_size``, ``local_rank`` on its node, and its device."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    initialized_here: bool = False

    @property
    def is_main(self) -> bool:
        """Rank 0: the only process that writes files and prints."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def init_distributed(device: str = "auto") -> DistInfo:
    """Joins the torchrun process group when ``WORLD_SIZE`` > 1, else returns a single-process :class:`DistInfo`.

    On CUDA each process takes GPU ``LOCAL_RANK``. A group that already exists (e.g. made by a test harness) is
    reused and left for its owner to destroy.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    base = resolve_device(device)
    if world <= 1 and not dist.is_initialized():
        return DistInfo(device=base)
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", str(rank)))
    if base.type == "cuda":
        torch.cuda.set_device(local_rank)
        base = torch.device("cuda", local_rank)
    created = False
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if base.type == "cuda" else "gloo", init_method="env://")
        created = True
    return DistInfo(dist.get_rank(), dist.get_world_size(), local_rank, base, created)


def cleanup(info: DistInfo) -> None:
    """Destroys the process group if :func:`init_distributed` created it."""
    if info.initialized_here and dist.is_initialized():
        dist.destroy_process_group()


def barrier(info: DistInfo) -> None:
    if info.distributed:
        dist.barrier()


def all_gather_objects(info: DistInfo, obj: Any) -> list[Any]:
    """Every rank's ``obj`` in rank order (just ``[obj]`` in a single process)."""
    if not info.distributed:
        return [obj]
    out: list[Any] = [None] * info.world_size
    dist.all_gather_object(out, obj)
    return out


def broadcast_object(info: DistInfo, obj: Any) -> Any:
    """Rank 0's ``obj`` on every rank."""
    if not info.distributed:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]

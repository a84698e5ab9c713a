"""Data-parallel training across processes started by ``torchrun`` (DistributedDataParallel).

Every process runs the whole pipeline on the same data and the same patient folds; within a fold each
takes its share of every global batch of the training part, and DDP averages the gradients, so the
weights stay equal on every process. Only rank 0 writes the run directory (the others write into a
temporary folder of their own that is removed at the end); rank 0 decides early stopping for all.
"""
from __future__ import annotations

from typing import Any

import os
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch.utils.data import Sampler

from lnzoo.errors import UsageError


@dataclass(frozen=True)
class World:
    """Who this process is among the ``size`` that train together (one process: rank 0 of 1)."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def active(self) -> bool:
        return self.size > 1

    @property
    def writer(self) -> bool:
        return self.rank == 0


def world() -> World:
    """This process's place, as torchrun's environment (RANK, WORLD_SIZE, LOCAL_RANK) gives it."""
    try:
        return World(int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)),
                     int(os.environ.get("LOCAL_RANK", 0)))
    except ValueError:
        raise UsageError("RANK, WORLD_SIZE and LOCAL_RANK must be whole numbers (torchrun sets them)") from None


def start(device: torch.device) -> World:
    """Join the process group when torchrun started several processes (NCCL on CUDA, gloo on the CPU)."""
    import torch.distributed as dist

    w = world()
    if w.active and not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return w


def stop() -> None:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def rank_device(device: torch.device, w: World) -> torch.device:
    """Each process its own GPU (LOCAL_RANK); the CPU is shared."""
    if w.active and device.type == "cuda":
        torch.cuda.set_device(w.local_rank)
        return torch.device("cuda", w.local_rank)
    return device


def decided_by_rank0(flag: bool, device: torch.device) -> bool:
    """Rank 0's value of ``flag`` on every process: they stop (or go on) together, or DDP would wait forever.
    The tensor lives on the training device: NCCL has no CPU tensors."""
    import torch.distributed as dist

    t = torch.tensor([int(flag)], device=device)
    dist.broadcast(t, 0)
    return bool(t.item())


def rank0_json(value: Any) -> Any:
    """Rank 0's JSON-able ``value`` on every process (e.g. the inputs fitted for a fold: a vocabulary's numbering
    may differ between processes, and every process must feed the same ids to the same embedding rows)."""
    import json

    import torch.distributed as dist

    box = [json.dumps(value, sort_keys=True)]
    dist.broadcast_object_list(box, src=0)
    return json.loads(box[0])


def on_any_rank(flag: bool, device: torch.device) -> bool:
    """Whether ``flag`` holds on any process (a NaN loss on one must stop them all at the same step)."""
    import torch.distributed as dist

    t = torch.tensor([int(flag)], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


def global_sum(value: torch.Tensor) -> torch.Tensor:
    """``value`` summed over the processes (without a gradient: it only scales a loss)."""
    import torch.distributed as dist

    total = value.detach().clone()
    dist.all_reduce(total)
    return total


class RankShard(Sampler[int]):
    """This process's share of another sampler's order: every process draws the same global order (the same
    seeded generator), cut to a multiple of the world size, and takes every ``size``-th index from its rank,
    so one step's per-process batches together form one global batch."""

    def __init__(self, base: Sampler[int], w: World):
        self.base, self.world = base, w

    def __len__(self) -> int:
        return len(self.base) // self.world.size

    def __iter__(self) -> Iterator[int]:
        order = list(self.base)
        order = order[:len(order) // self.world.size * self.world.size]
        return iter(order[self.world.rank::self.world.size])


def per_rank_batch(batch_size: int, w: World) -> int:
    """The recipe's batch size is the global one: each process takes an equal part of it."""
    if batch_size % w.size:
        raise UsageError(f"data.batch_size = {batch_size} does not split over {w.size} processes; give a multiple "
                         f"of {w.size} (the recipe's batch size is the global one)")
    return batch_size // w.size

"""torch.distributed helpers: initialise from ``torchrun``'s environment, reduce sums."""

from __future__ import annotations

import os

import torch
import torch.distributed as dist


def init_from_env(device: torch.device) -> bool:
    """Join the process group when launched by ``torchrun`` (``WORLD_SIZE`` > 1).

    NCCL on CUDA, gloo on CPU; on CUDA each rank takes the GPU ``LOCAL_RANK``.
    Returns whether training is distributed.
    """
    if dist.is_initialized():
        return dist.get_world_size() > 1
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return False
    backend = "nccl" if device.type == "cuda" else "gloo"
    if device.type == "cuda":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group(backend=backend)
    return True


def rank_and_world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def all_reduce_sum(value: torch.Tensor) -> torch.Tensor:
    """Sum of ``value`` over ranks (the value itself in one process); no autograd."""
    if rank_and_world()[1] == 1:
        return value
    total = value.detach().clone()
    dist.all_reduce(total, op=dist.ReduceOp.SUM)
    return total


def agree(values: list[float]) -> bool:
    """Whether every rank passed the same ``values`` (True in one process)."""
    if rank_and_world()[1] == 1:
        return True
    high = torch.tensor(values, dtype=torch.float64)
    low = -high.clone()
    dist.all_reduce(high, op=dist.ReduceOp.MAX)
    dist.all_reduce(low, op=dist.ReduceOp.MAX)
    return bool(torch.equal(high, -low))


def gather_objects(value: object) -> list[object]:
    """Every rank's ``value``, in rank order, on every rank ([value] in one process)."""
    world = rank_and_world()[1]
    if world == 1:
        return [value]
    gathered: list[object] = [None] * world
    dist.all_gather_object(gathered, value)
    return gathered


def barrier() -> None:
    if rank_and_world()[1] > 1:
        dist.barrier()


def all_gather_rows(value: torch.Tensor) -> torch.Tensor:
    """Every rank's ``value`` (n, ...) (the same shape on every rank) concatenated in rank order
    along dim 0 (the value itself in one process); no autograd."""
    world = rank_and_world()[1]
    if world == 1:
        return value
    parts = [torch.empty_like(value) for _ in range(world)]
    dist.all_gather(parts, value.detach().contiguous())
    return torch.cat(parts)

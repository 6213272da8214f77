"""Process-group set-up for ``torchrun``: gloo on the CPU, NCCL on CUDA.

``p3m train`` is the same command with or without torchrun; torchrun sets
``WORLD_SIZE``, ``RANK`` and ``LOCAL_RANK``, and each process then drives one
device (``cuda:LOCAL_RANK`` on GPUs). Only rank 0 logs and writes checkpoints.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistInfo:
    """Where this process stands in the run."""

    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    backend: str | None = None

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def launched_by_torchrun() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def resolve_device(name: str, local_rank: int = 0) -> torch.device:
    """The device of this process, by the project's one rule (:func:`p3m.inference.matter.resolve_device`:
    ``auto`` is CUDA when present, else the CPU; MPS only on request). Under torchrun a CUDA
    device without an index becomes ``cuda:LOCAL_RANK``.

    Raises:
        ValueError: the requested device is not available.
    """
    from p3m.inference.matter import resolve_device as resolve

    device = resolve(name)
    if device.type == "cuda" and device.index is None and launched_by_torchrun():
        device = torch.device("cuda", local_rank % torch.cuda.device_count())
    return device


def init(device_name: str) -> tuple[DistInfo, torch.device]:
    """Join the process group when launched by torchrun; pick this process's device."""
    if not launched_by_torchrun():
        return DistInfo(), resolve_device(device_name)
    rank = int(os.environ["RANK"])
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    world_size = int(os.environ["WORLD_SIZE"])
    device = resolve_device(device_name, local_rank)
    if device.type == "mps":
        raise ValueError("distributed training runs on CUDA (NCCL) or the CPU (gloo), not MPS")
    backend = "nccl" if device.type == "cuda" else "gloo"
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group(backend=backend, rank=rank, world_size=world_size)
    return DistInfo(rank, local_rank, world_size, backend), device


def shutdown() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def barrier(info: DistInfo) -> None:
    if info.enabled:
        dist.barrier()


def mean_across(info: DistInfo, values: dict[str, float], device: torch.device) -> dict[str, float]:
    """Average scalar values over all processes (every process must call it)."""
    if not info.enabled or not values:
        return values
    keys = list(values)  # the same order on every process
    tensor = torch.tensor([values[key] for key in keys], dtype=torch.float64, device=device)
    dist.all_reduce(tensor)
    tensor /= info.world_size
    return dict(zip(keys, tensor.tolist()))


def any_across(info: DistInfo, flag: bool, device: torch.device) -> bool:
    """True on every process if ``flag`` is true on any."""
    if not info.enabled:
        return flag
    tensor = torch.tensor([1 if flag else 0], dtype=torch.int32, device=device)
    dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
    return bool(tensor.item())


def gather_objects(info: DistInfo, obj: Any) -> list[Any]:
    """Every process's ``obj``, in rank order (every process must call it)."""
    if not info.enabled:
        return [obj]
    out: list[Any] = [None] * info.world_size
    dist.all_gather_object(out, obj)
    return out


def broadcast_object(info: DistInfo, obj: Any) -> Any:
    """Rank 0's ``obj`` on every process."""
    if not info.enabled:
        return obj
    holder = [obj]
    dist.broadcast_object_list(holder, src=0)
    return holder[0]

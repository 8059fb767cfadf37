"""DistributedDataParallel plumbing: works unchanged with or without ``torchrun``.

Under ``torchrun --nproc_per_node N`` the environment carries ``RANK``,
``WORLD_SIZE`` and ``LOCAL_RANK``; :func:`setup` then joins the process group
(NCCL on CUDA, gloo on CPU) and pins each rank to its GPU. Without them every
helper degrades to the single-process answer.
"""
from __future__ import annotations

import os
from dataclasses import dataclass


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    initialised_here: bool = False

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def launched_by_torchrun() -> bool:
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ and int(os.environ["WORLD_SIZE"]) > 1


def setup(device_preference: str = "auto"):
    """Join the process group when launched by torchrun; returns (DistInfo, torch.device)."""
    import torch
    import torch.distributed as dist

    from napari_lgms._device import select_device

    if not launched_by_torchrun():
        return DistInfo(), select_device(device_preference)
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    device = select_device(device_preference)
    if device.type == "cuda":
        device = torch.device("cuda", local_rank % torch.cuda.device_count())
        torch.cuda.set_device(device)
    created = False
    if not dist.is_initialized():
        # Imported after the group exists (DistributedDataParallel imports it), torch._dynamo keeps
        # a reference to it: destroy_process_group() then leaves gloo's threads running, and one
        # that frees a finished collective's tensor while Python shuts down aborts the process.
        import torch._dynamo  # noqa: F401

        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
        created = True
    return DistInfo(rank, world, local_rank, created), device


def teardown(info: DistInfo) -> None:
    import torch.distributed as dist

    if info.initialised_here and dist.is_initialized():
        dist.destroy_process_group()


def barrier(info: DistInfo) -> None:
    import torch.distributed as dist

    if info.enabled and dist.is_initialized():
        dist.barrier()


def all_reduce_sums(values: list[float], info: DistInfo, device) -> list[float]:
    """Sum a list of floats over ranks (float64)."""
    if not info.enabled:
        return list(values)
    import torch
    import torch.distributed as dist

    tensor = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor.tolist()


def broadcast_flag(flag: bool, info: DistInfo, device) -> bool:
    """Rank 0's decision, for everyone (e.g. a stop request seen only by rank 0)."""
    if not info.enabled:
        return flag
    import torch
    import torch.distributed as dist

    tensor = torch.tensor([1 if flag else 0], dtype=torch.int64, device=device)
    dist.broadcast(tensor, src=0)
    return bool(tensor.item())

"""Data-parallel runs on an existing launcher (``torchrun``, ``accelerate launch``).

The launcher starts one process per rank and describes the group in the environment
(``RANK``, ``WORLD_SIZE``, ``MASTER_ADDR`` …); :func:`distributed_from_env` joins it with
torch.distributed (NCCL when every rank on a node has a GPU of its own, gloo otherwise: ranks
only meet at barriers, so sharing one GPU is fine), which does all the rank bookkeeping. Work is
split by :func:`rank_and_world`: library code asks it, so a user's own torchrun script with
an initialised process group shards the same way.
"""

from __future__ import annotations

import contextlib
import datetime
import os
from collections.abc import Iterator

import torch
import torch.distributed as dist

#: how long a rank waits at a barrier: ``bench steer`` ranks wait while rank 0 alone builds the
#: behaviour data every method shares (torch's default, 10–30 min, is too short on a CPU)
BARRIER_TIMEOUT = datetime.timedelta(hours=6)


def rank_and_world() -> tuple[int, int]:
    """(rank, world size) of the initialised process group, ``(0, 1)`` outside one."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def barrier() -> None:
    """Wait for every rank (a no-op outside a process group)."""
    if rank_and_world()[1] > 1:
        dist.barrier()


def _local_rank_and_size() -> tuple[int, int]:
    size = os.environ.get("LOCAL_WORLD_SIZE", os.environ.get("WORLD_SIZE", 1))
    return int(os.environ.get("LOCAL_RANK", 0)), int(size)


def _gpu_per_rank() -> bool:
    """NCCL needs a GPU per rank; more ranks than GPUs on a node share them over gloo."""
    return torch.cuda.is_available() and torch.cuda.device_count() >= _local_rank_and_size()[1]


def local_device(device: str | None) -> str | None:
    """Under a launcher on a GPU machine, each rank takes its own GPU (``cuda:LOCAL_RANK``), or
    shares them round-robin when ranks outnumber GPUs."""
    if device is None and rank_and_world()[1] > 1 and torch.cuda.is_available():
        return f"cuda:{_local_rank_and_size()[0] % torch.cuda.device_count()}"
    return device


@contextlib.contextmanager
def distributed_from_env() -> Iterator[tuple[int, int]]:
    """Join the launcher's process group for the duration of a command; yields (rank, world size)."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or dist.is_initialized():
        yield rank_and_world()
        return
    if _gpu_per_rank():
        torch.cuda.set_device(_local_rank_and_size()[0])  # NCCL's barrier runs on the current device
        dist.init_process_group("nccl", timeout=BARRIER_TIMEOUT)
    else:
        dist.init_process_group("gloo", timeout=BARRIER_TIMEOUT)
    try:
        yield rank_and_world()
    finally:
        dist.destroy_process_group()

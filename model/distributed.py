"""torch.distributed set-up for torchrun: env:// rendezvous, nccl on CUDA, gloo on CPU.

torchrun sets RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and MASTER_PORT; a plain ``python -m`` run has
none of them and trains as a single process.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Only this process writes checkpoints, logs and plots."""
        return self.rank == 0


def init_distributed(device: str) -> tuple[DistInfo, torch.device]:
    """Join the process group if launched by torchrun; returns who we are and the device to use.

    On CUDA each process takes GPU ``LOCAL_RANK``, so ``--device cuda`` means "my GPU" under torchrun;
    a process without one (more processes per host than GPUs) is refused with ``SystemExit("error: ...")``.
    """
    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
        return DistInfo(), torch.device(device)
    info = DistInfo(int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), int(os.environ.get("LOCAL_RANK", "0")))
    dev = torch.device(device)
    if dev.type == "cuda":
        gpus = torch.cuda.device_count()
        if info.local_rank >= gpus:
            raise SystemExit(
                f"error: --device {device} under torchrun: LOCAL_RANK {info.local_rank}, but this host sees {gpus} "
                f"GPU(s); start one process per GPU (--nproc-per-node {gpus})"
            )
        dev = torch.device("cuda", info.local_rank)
        torch.cuda.set_device(dev)
    if info.distributed and not dist.is_initialized():
        backend = "nccl" if dev.type == "cuda" else "gloo"
        dist.init_process_group(backend=backend, init_method="env://", device_id=dev if dev.type == "cuda" else None)
    return info, dev


def all_reduce_sum(values: torch.Tensor) -> torch.Tensor:
    """Sum ``values`` over ranks (identity for one process)."""
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(values, op=dist.ReduceOp.SUM)
    return values


def barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def cleanup() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()

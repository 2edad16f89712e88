"""torchrun / DistributedDataParallel plumbing (NCCL on GPU, Gloo on CPU); no-ops in one process."""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from .runtime import resolve_device


@dataclass(frozen=True)
class DistEnv:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


# Collectives wait this long before failing (NCCL's default is 10 minutes; a checkpoint write or a
# slow validation on one rank must not kill the job).
TIMEOUT = datetime.timedelta(minutes=30)


def init_distributed(device: str | torch.device | None = None) -> DistEnv:
    """Join the process group when launched by torchrun (WORLD_SIZE > 1); otherwise one process.

    ``device`` as for :func:`hubert_ecg.runtime.resolve_device`: ``"auto"``/None/``"cuda"`` use
    ``cuda:{LOCAL_RANK}`` when CUDA is available -- then the backend is NCCL, the process's current
    device is set to its GPU (so that nothing lands on GPU 0 by default) and ``device_id`` binds the
    group to it; otherwise Gloo. An explicit ``cuda:N`` is refused (every rank would use GPU N).
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistEnv()
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = resolve_device(device, local_rank=local_rank).type == "cuda"  # refuses cuda:N
    if not dist.is_initialized():
        if use_cuda:
            torch.cuda.set_device(local_rank)
            dist.init_process_group(backend="nccl", timeout=TIMEOUT, device_id=torch.device("cuda", local_rank))
        else:
            dist.init_process_group(backend="gloo", timeout=TIMEOUT)
    return DistEnv(rank, world, local_rank)


def barrier(env: DistEnv) -> None:
    if env.enabled and dist.is_initialized():
        dist.barrier()


def all_reduce_mean(value: torch.Tensor, env: DistEnv) -> torch.Tensor:
    if env.enabled:
        value = value.clone()
        dist.all_reduce(value, op=dist.ReduceOp.SUM)
        value /= env.world_size
    return value


def all_reduce_sum(value: torch.Tensor, env: DistEnv) -> torch.Tensor:
    """Sum of ``value`` over ranks (``value`` itself in one process)."""
    if env.enabled:
        value = value.clone()
        dist.all_reduce(value, op=dist.ReduceOp.SUM)
    return value


def broadcast_flag(flag: bool, env: DistEnv, device: torch.device) -> bool:
    """Rank 0's decision (e.g. early stop) for every rank."""
    if not env.enabled:
        return flag
    t = torch.tensor([1.0 if flag else 0.0], device=device)
    dist.broadcast(t, src=0)
    return bool(t.item())


def cleanup(env: DistEnv) -> None:
    if env.enabled and dist.is_initialized():
        dist.destroy_process_group()

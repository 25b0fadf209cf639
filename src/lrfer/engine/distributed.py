"""Thin helpers over ``torch.distributed`` for runs started by ``torchrun``.

Every helper is a no-op in a single-process run. Under torchrun (``WORLD_SIZE`` > 1) the process group is
initialised from the environment: NCCL with one GPU per process when CUDA is used, gloo on the CPU. The
global batch (``trainer.batch_size``) is split evenly across ranks, gradients are averaged by
DistributedDataParallel, evaluation shards the split and sums the confusion matrices, and only rank 0 writes
files.
"""

from __future__ import annotations

import os
from datetime import timedelta

import torch
import torch.distributed as tdist
from torch import nn

from lrfer.errors import ProcessError


def env_world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def env_rank() -> int:
    return int(os.environ.get("RANK", "0"))


def is_distributed() -> bool:
    return tdist.is_available() and tdist.is_initialized()


def rank() -> int:
    return tdist.get_rank() if is_distributed() else 0


def world_size() -> int:
    return tdist.get_world_size() if is_distributed() else 1


def is_main() -> bool:
    return rank() == 0


def init_from_env(device: torch.device) -> torch.device:
    """Join the torchrun process group if there is one; returns the device this rank trains on."""
    if env_world_size() <= 1:
        return device
    if not is_distributed():
        backend = "nccl" if device.type == "cuda" else "gloo"
        tdist.init_process_group(backend=backend, timeout=timedelta(minutes=30))
    if device.type == "cuda":
        local = int(os.environ.get("LOCAL_RANK", "0"))
        if local >= torch.cuda.device_count():
            raise ProcessError(  # one rank's problem: printed by that rank (lrfer.cli.guard)
                f"LOCAL_RANK {local} but only {torch.cuda.device_count()} CUDA devices are visible"
            )
        torch.cuda.set_device(local)
        return torch.device("cuda", local)
    return device


def barrier() -> None:
    if is_distributed():
        tdist.barrier()


def broadcast_object(obj):
    """Rank 0's ``obj`` on every rank."""
    if not is_distributed():
        return obj
    box = [obj]
    tdist.broadcast_object_list(box, src=0)
    return box[0]


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    if not is_distributed():
        return t
    t = t.clone()
    tdist.all_reduce(t, op=tdist.ReduceOp.SUM)
    return t


def all_reduce_mean(t: torch.Tensor) -> torch.Tensor:
    if not is_distributed():
        return t
    return all_reduce_sum(t) / world_size()


def wrap_ddp(module: nn.Module, device: torch.device) -> nn.Module:
    """Wrap in DistributedDataParallel when running under torchrun, else return the module itself.

    ``find_unused_parameters`` is on because multi-stage methods train one part at a time (one expert, the
    student while the teacher is frozen, the critic then the generator).
    """
    if not is_distributed():
        return module
    ids = [device.index] if device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(module, device_ids=ids, find_unused_parameters=True)


def cleanup() -> None:
    if is_distributed():
        tdist.destroy_process_group()

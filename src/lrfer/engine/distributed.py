"""Thin helpers over ``torch.distributed`` for runs started by ``torchrun``.

Every helper is a no-op in a single-process run. Under torchrun (``WORLD_SIZE`` > 1) the process group is
initialised from the environment: NCCL with one GPU per process when CUDA is used, gloo on the CPU. Every
global batch (``trainer.batch_size``) is split into disjoint equal shares, one per rank; gradients are
averaged by DistributedDataParallel, which wraps only the modules the current stage trains; evaluation
shards the split and sums the confusion matrices; only rank 0 writes files.

A SLURM (submitit) task sets no torchrun variables: :func:`init_from_env` takes rank, world size and
master address from ``submitit.helpers.TorchDistributedEnvironment`` when the job has several tasks.
"""

from __future__ import annotations

import inspect
import os
from datetime import timedelta

import torch
import torch.distributed as tdist
from torch import nn

from lrfer.core.errors import ProcessError
from lrfer.data.shared_views import MachineSharing
from lrfer.engine.syncbn import SumSyncBatchNorm


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


def local_rank() -> int:
    """This process's rank on its machine (torchrun's ``LOCAL_RANK``; 0 outside torchrun)."""
    return int(os.environ.get("LOCAL_RANK", "0"))


def local_world_size() -> int:
    """How many processes of the run share this machine (torchrun's ``LOCAL_WORLD_SIZE``)."""
    return int(os.environ.get("LOCAL_WORLD_SIZE", "1"))


def machine_sharing() -> MachineSharing | None:
    """The dataset's cache entry and its host-resident views made once per machine (by local rank 0) and
    memory-mapped by its other processes (:mod:`lrfer.data.shared_views`); None with one process per
    machine."""
    if not is_distributed() or local_world_size() <= 1:
        return None
    return MachineSharing(local_rank(), barrier)


def export_submitit_env() -> None:
    """In a SLURM / submitit task of a job with several tasks, set torchrun's variables (``RANK``,
    ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``, ``MASTER_PORT``) from submitit's own helpers, so that
    every task of the job is one DDP process. A no-op under torchrun or outside submitit."""
    if "WORLD_SIZE" in os.environ or not os.environ.get("SUBMITIT_EXECUTOR"):
        return
    import submitit

    if submitit.JobEnvironment().num_tasks > 1:
        submitit.helpers.TorchDistributedEnvironment().export(set_cuda_visible_devices=False)


def init_from_env(device: torch.device) -> torch.device:
    """Join the torchrun (or multi-task SLURM) process group if there is one; returns this rank's device."""
    export_submitit_env()
    if env_world_size() <= 1:
        return device
    if not is_distributed():
        backend = "nccl" if device.type == "cuda" else "gloo"
        tdist.init_process_group(backend=backend, timeout=timedelta(minutes=30))
    if device.type == "cuda":
        local = int(os.environ.get("LOCAL_RANK", "0"))
        if torch.cuda.device_count() == 1:
            local = 0  # the scheduler bound one GPU to this task (CUDA_VISIBLE_DEVICES)
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


class StageModules(nn.Module):
    """The modules one stage trains, as one module whose forward is the method's training step.

    DistributedDataParallel wraps this rather than the whole method, so it registers, broadcasts and
    all-reduces only what the stage trains (not a frozen teacher, not the experts of other stages).
    """

    def __init__(self, method: nn.Module, modules: list[nn.Module]) -> None:
        super().__init__()
        self.trained = nn.ModuleList(modules)
        self.__dict__["method"] = method  # not a submodule: DDP must not see the rest of the method

    def forward(self, batch, stage, step):
        return self.method.training_step(batch, stage, step)


def trained_modules(root: nn.Module, params) -> list[nn.Module] | None:
    """The largest submodules of ``root`` all of whose parameters are in ``params`` and that together hold
    every one of them; None when a parameter of ``params`` sits directly on a module that also holds
    parameters outside it (then only the whole ``root`` can be wrapped)."""
    wanted = {id(p) for p in params}
    found: dict[int, nn.Module] = {}

    def visit(module: nn.Module) -> bool:
        if any(id(p) in wanted for p in module.parameters(recurse=False)):
            return False
        for child in module.children():
            ids = [id(p) for p in child.parameters()]
            if not ids or not any(i in wanted for i in ids):
                continue
            if all(i in wanted for i in ids):
                found.setdefault(id(child), child)
            elif not visit(child):
                return False
        return True

    if not visit(root):
        return None
    return list(found.values())


def convert_sync_batchnorm(modules: list[nn.Module]) -> int:
    """Replace (in place) every BatchNorm inside ``modules`` by a synchronised one holding the same parameters
    and running statistics (so checkpoints and optimisers are unaffected); returns how many.

    The replacement is :class:`~lrfer.engine.syncbn.SumSyncBatchNorm` (one all-reduce per layer and pass,
    no host wait), not torch's ``nn.SyncBatchNorm`` (an all-gather and a boolean mask per layer: a host
    wait each, and a graph break under ``torch.compile``)."""
    count = 0
    for module in modules:
        for name, child in list(module.named_children()):
            if isinstance(child, (nn.SyncBatchNorm, SumSyncBatchNorm)):
                continue
            if isinstance(child, nn.modules.batchnorm._BatchNorm):
                setattr(module, name, SumSyncBatchNorm.convert(child))
                count += 1
            else:
                count += convert_sync_batchnorm([child])
    return count


def wrap_stage(
    method: nn.Module,
    params,
    device: torch.device,
    *,
    find_unused_parameters: bool,
    sync_bn: bool,
) -> nn.Module:
    """What the trainer calls for a training step of a stage that trains ``params``.

    One process: the method itself. Under torchrun: DistributedDataParallel over the stage's trained
    modules (:class:`StageModules`; their BatchNorms made synchronous when ``sync_bn``). When the trained
    parameters cannot be separated into whole modules, the whole method is wrapped, with
    ``find_unused_parameters`` (its untrained parameters get no gradient).
    """
    params = [p for p in params if p.requires_grad]
    if not is_distributed() or not params:
        return method
    ids = [device.index] if device.type == "cuda" else None
    modules = trained_modules(method, params)
    if modules is None:
        return nn.parallel.DistributedDataParallel(method, device_ids=ids, find_unused_parameters=True)
    if sync_bn:
        convert_sync_batchnorm(modules)
    return nn.parallel.DistributedDataParallel(
        StageModules(method, modules),
        device_ids=ids,
        find_unused_parameters=find_unused_parameters,
        **_buffer_sync(needs_buffer_broadcast(modules)),
    )


def _buffer_sync(on: bool) -> dict[str, bool]:
    """DDP's keyword for copying rank 0's buffers before every forward (``forward_sync_buffers`` in newer
    torch, ``broadcast_buffers`` before; both keep the copy made when DDP is built)."""
    params = inspect.signature(nn.parallel.DistributedDataParallel).parameters
    return {"forward_sync_buffers" if "forward_sync_buffers" in params else "broadcast_buffers": on}


def needs_buffer_broadcast(modules: list[nn.Module]) -> bool:
    """Whether DDP must copy rank 0's buffers to the others before every forward: only when a trained module
    updates buffers per process (BatchNorm running statistics of a per-process BatchNorm). Synchronised
    BatchNorms update theirs from the same all-reduced statistics on every rank, and other buffers (fixed
    normalisation constants) never change, so their broadcasts (one per forward) would be wasted."""
    return any(
        isinstance(m, nn.modules.batchnorm._BatchNorm)
        and not isinstance(m, (nn.SyncBatchNorm, SumSyncBatchNorm))
        and m.track_running_stats
        for module in modules
        for m in module.modules()
    )


def cleanup() -> None:
    """Destroy the process group at the end of a run.

    Known risk (torch 2.13, gloo): destroying the group joins gloo's worker threads while holding the GIL; a
    thread still dropping the Work of the last collective needs the GIL for it, and the two then wait for
    each other for ever. Seen in a test worker that destroyed its group right after a barrier on a loaded
    machine (tests/conftest.py ``end_torchrun_worker``); a run reaches this point long after its last
    collective (metrics written, table printed), and no run has been seen to hang here.
    """
    if is_distributed():
        tdist.destroy_process_group()

"""SumSyncBatchNorm (lrfer.engine.syncbn): BatchNorm over every process's share with no host wait.

Two gloo processes, each with half of a batch, must give the outputs, input gradients, averaged parameter
gradients and running statistics that one BatchNorm gives on the whole batch.
"""

from __future__ import annotations

import pytest
import torch
import torch.distributed as tdist
from conftest import end_torchrun_worker, spawn_ranks
from torch import nn

from lrfer.engine.syncbn import SumSyncBatchNorm
from lrfer.engine.syncs import SyncCounter

#: Seconds the two ranks may take (a few on an idle machine; a hang fails the test instead of the run).
TIMEOUT = 300


def _batch():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(8, 3, 5, 5, generator=g) * 4 + 10  # far from zero: the shifted sums keep precision
    dy = torch.randn(8, 3, 5, 5, generator=g)
    return x, dy


def _reference():
    x, dy = _batch()
    bn = nn.BatchNorm2d(3)
    with torch.no_grad():
        bn.weight.copy_(torch.tensor([1.0, 2.0, 0.5]))
        bn.bias.copy_(torch.tensor([0.0, -1.0, 3.0]))
    x.requires_grad_(True)
    for _ in range(2):  # the second step normalises with a shift (the running mean) that is not zero
        x.grad = None
        bn.zero_grad()
        y = bn(x)
        y.backward(dy)
    return bn, x, y


def _worker(rank: int, world: int, store: str, out: str) -> None:
    torch.set_num_threads(1)
    tdist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world)
    x, dy = _batch()
    share = slice(rank * 4, rank * 4 + 4)
    bn = SumSyncBatchNorm.convert(nn.BatchNorm2d(3))
    with torch.no_grad():
        bn.weight.copy_(torch.tensor([1.0, 2.0, 0.5]))
        bn.bias.copy_(torch.tensor([0.0, -1.0, 3.0]))
    xs = x[share].clone().requires_grad_(True)
    with SyncCounter() as counter:
        counter.phase = "steps"
        for _ in range(2):
            xs.grad = None
            bn.zero_grad()
            y = bn(xs)
            y.backward(dy[share])
    grads = torch.stack([bn.weight.grad, bn.bias.grad])
    tdist.all_reduce(grads)  # what DDP does with parameter gradients (summed here; DDP averages)
    torch.save(
        {
            "y": y.detach(),
            "dx": xs.grad,
            "grads": grads,
            "running": (bn.running_mean, bn.running_var, bn.num_batches_tracked),
            "syncs": counter.total("steps"),
        },
        f"{out}{rank}.pt",
    )
    # a barrier and an exit without teardown: destroying the group while the other rank's gloo thread still
    # runs aborted a rank once ("terminate called without an active exception", SIGABRT; CI of 496c38e)
    end_torchrun_worker()


def test_two_processes_with_half_batches_match_one_batchnorm_on_the_whole_batch(tmp_path):
    args = (2, str(tmp_path / "store"), str(tmp_path / "r"))
    spawn_ranks(
        _worker,
        args,
        nprocs=2,
        timeout=TIMEOUT,
        hang="the two ranks did not finish: one waits on a collective",
    )
    ref, x, y = _reference()
    ranks = [torch.load(tmp_path / f"r{r}.pt", weights_only=True) for r in range(2)]
    torch.testing.assert_close(torch.cat([r["y"] for r in ranks]), y.detach(), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(torch.cat([r["dx"] for r in ranks]), x.grad, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(
        ranks[0]["grads"], torch.stack([ref.weight.grad, ref.bias.grad]), atol=1e-4, rtol=1e-5
    )
    for r in ranks:
        mean, var, n = r["running"]
        torch.testing.assert_close(mean, ref.running_mean)
        torch.testing.assert_close(var, ref.running_var)
        assert int(n) == 2
        assert r["syncs"] == 0


def test_without_a_process_group_it_is_batchnorm_and_keeps_its_tensors():
    bn = nn.BatchNorm2d(3)
    sync = SumSyncBatchNorm.convert(bn)
    assert sync.weight is bn.weight and sync.running_var is bn.running_var
    assert list(sync.state_dict()) == list(nn.BatchNorm2d(3).state_dict())
    x = torch.randn(4, 3, 2, 2) + 3
    torch.testing.assert_close(sync(x), nn.BatchNorm2d(3)(x), atol=1e-5, rtol=1e-5)
    sync.eval()
    torch.testing.assert_close(
        sync(x), nn.functional.batch_norm(x, bn.running_mean, bn.running_var, bn.weight, bn.bias)
    )
    with pytest.raises(ValueError):
        sync(torch.ones(3))

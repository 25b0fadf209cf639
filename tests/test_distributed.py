"""torchrun: two CPU processes (gloo) divide every global batch and train like one process.

Each rank receives its own disjoint share of every global batch (``trainer.batch_size``), and the shares
together are exactly the one-process batch. Tolerance of the equality test: with no random augmentation
and a network without BatchNorm, averaging the two half-batch gradients equals the full-batch gradient up
to float rounding, so test accuracies must agree exactly and training losses within 1e-4 (relative).
Networks with BatchNorm normalise per process (no SyncBatchNorm on the CPU), so they are only required to
run and write one metrics.json.
"""

from __future__ import annotations

import json
import os
import sys
from collections import Counter

import pytest
import shard_worker
import torch
import torch.distributed as tdist
from conftest import REPO, TORCHRUN, run_process, tiny
from torch import nn
from toy_methods import TwoStageToy

from lrfer.data.degrade import parse_degradations
from lrfer.engine import distributed as dist
from lrfer.engine.syncbn import SumSyncBatchNorm
from lrfer.methods.base import MethodContext


def _run(cmd, check=True, **extra_env):
    env = {
        **os.environ,
        "PYTHONPATH": f"{REPO / 'tests'}:{os.environ.get('PYTHONPATH', '')}",
        "OMP_NUM_THREADS": "1",
        **extra_env,
    }
    proc = run_process(cmd, REPO, env, timeout=600)
    if check:
        assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def assert_disjoint_shares(one: list, ranks: list[list], unique: bool) -> None:
    """``one``: the one-process batches, ``ranks[r]``: rank r's; each a list of [indices, degradations].

    Every batch: each rank holds its own part (equal sizes), and the parts together are exactly the
    one-process global batch. ``unique``: the global batch has no repeated (index, degradation) pair, so the
    ranks' pairs must also be disjoint as sets (balanced sampling draws with replacement, so it may repeat).
    """
    assert len(one) > 1 and all(len(r) == len(one) for r in ranks)
    for b, (index, which) in enumerate(one):
        parts = [list(zip(*r[b])) for r in ranks]
        assert all(len(p) == len(index) // len(ranks) for p in parts), f"batch {b}: shares are not split"
        assert Counter(pair for p in parts for pair in p) == Counter(zip(index, which)), f"batch {b}"
        if unique:
            assert not set(parts[0]) & set(parts[1]), f"batch {b}: the ranks share samples"


def test_each_rank_gets_a_disjoint_share_of_every_batch(tmp_path):
    """Random and balanced sampling, degrade.train_mode random and all, two epochs."""
    _run([*TORCHRUN, str(REPO / "tests" / "shard_worker.py"), str(tmp_path)])
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    for key, one in shard_worker.shares(0, 1).items():
        assert_disjoint_shares(one, [r[key] for r in ranks], unique=key.startswith("random/"))


@pytest.fixture(scope="module")
def toy_runs(tmp_path_factory):
    """The two-stage toy trained by one process and by two (torchrun), each recording its batches."""
    tmp = tmp_path_factory.mktemp("toy")
    common = tiny(
        tmp,
        "augment=none",
        "method._target_=toy_methods.TwoStageToy",
        "method.epochs=2",
        "trainer.batch_size=28",
        "degrade.test=[x1,x2]",
        "trainer.num_threads=1",
        "trainer.scheduler.name=cosine",  # the lr changes every epoch: a resume must continue its schedule
    )
    _run(
        [sys.executable, "train.py", *common, f"+method.record={tmp / 'one'}", f"hydra.run.dir={tmp / 'one'}"]
    )
    _run([*TORCHRUN, "train.py", *common, f"+method.record={tmp / 'two'}", f"hydra.run.dir={tmp / 'two'}"])
    return tmp, common


def test_two_processes_match_one_process_for_a_multi_stage_method(toy_runs):
    tmp, _ = toy_runs
    one = json.loads((tmp / "one" / "metrics.json").read_text())
    two = json.loads((tmp / "two" / "metrics.json").read_text())
    for stage in ("teacher", "student"):  # each rank trained on its own half of every batch
        seen = json.loads((tmp / "one" / f"rank0-{stage}.json").read_text())
        ranks = [json.loads((tmp / "two" / f"rank{r}-{stage}.json").read_text()) for r in range(2)]
        assert_disjoint_shares(seen, ranks, unique=True)
    assert two["environment"]["world_size"] == 2 and one["environment"]["world_size"] == 1
    for label in ("x1", "x2"):
        assert two["test"][label]["n"] == one["test"][label]["n"] == 70
        assert two["test"][label]["acc"] == one["test"][label]["acc"]
    for stage in ("teacher", "student"):
        a, b = one["train"]["stages"][stage], two["train"]["stages"][stage]
        for key in ("loss", "loss_critic", "loss_student"):
            if key in a:
                assert b[key] == pytest.approx(a[key], rel=1e-4)


@pytest.mark.slow  # launcher/process integration, ~25-45 s on 2 cores: `pytest -m slow`
def test_an_interrupted_torchrun_run_resumes_exactly(toy_runs):
    """Killed in the second stage's second epoch, then resumed under torchrun: the same weights, optimiser
    state (Adam's moments), cosine learning rate and metrics as ``two``, the uninterrupted torchrun run."""
    tmp, common = toy_runs
    run = [*TORCHRUN, "train.py", *common, f"hydra.run.dir={tmp / 'cut'}"]
    assert _run(run, check=False, LRFER_TOY_CRASH_AFTER="15").returncode != 0
    last = torch.load(tmp / "cut" / "checkpoints" / "last.pt", weights_only=True)
    assert (last["stage_index"], last["epoch"]) == (1, 1)
    _run([*run, "trainer.resume=true"])
    cut = json.loads((tmp / "cut" / "metrics.json").read_text())
    two = json.loads((tmp / "two" / "metrics.json").read_text())
    assert cut["test"] == two["test"] and cut["train"] == two["train"] and cut["val"] == two["val"]
    a = torch.load(tmp / "two" / "checkpoints" / "last.pt", weights_only=True)
    b = torch.load(tmp / "cut" / "checkpoints" / "last.pt", weights_only=True)
    assert all(torch.equal(a["method"][k], b["method"][k]) for k in a["method"])
    assert set(a["optimizers"]) == set(b["optimizers"]) == {"critic", "student"}
    for step, opt in a["optimizers"].items():
        other = b["optimizers"][step]
        assert [g["lr"] for g in opt["param_groups"]] == [g["lr"] for g in other["param_groups"]], step
        for i, moments in opt["state"].items():
            assert all(torch.equal(v, other["state"][i][k]) for k, v in moments.items()), step


@pytest.mark.slow  # launcher/process integration, ~25-45 s on 2 cores: `pytest -m slow`
def test_a_submitit_job_with_two_tasks_is_one_two_process_ddp_run(toy_runs):
    """launcher=submitit_local with tasks_per_node=2 (the SLURM launcher's path): one DDP training."""
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    tmp, common = toy_runs
    overrides = [*common, f"+method.record={tmp / 'slurm'}", f"hydra.sweep.dir={tmp / 'sweep'}"]
    _run(
        [
            sys.executable,
            "train.py",
            "-m",
            "launcher=submitit_local",
            "hydra.launcher.tasks_per_node=2",
            *overrides,
        ]
    )
    found = list((tmp / "sweep").rglob("metrics.json"))
    assert len(found) == 1
    metrics = json.loads(found[0].read_text())
    assert metrics["environment"]["world_size"] == 2
    for stage in ("teacher", "student"):
        seen = json.loads((tmp / "one" / f"rank0-{stage}.json").read_text())
        ranks = [json.loads((tmp / "slurm" / f"rank{r}-{stage}.json").read_text()) for r in range(2)]
        assert_disjoint_shares(seen, ranks, unique=True)
    two = json.loads((tmp / "two" / "metrics.json").read_text())
    assert metrics["test"] == two["test"]  # the same training as torchrun's two processes


def test_torchrun_baseline_writes_one_metrics_file(tmp_path):
    run_dir = tmp_path / "run"
    proc = _run([*TORCHRUN, "train.py", *tiny(tmp_path, "trainer.max_epochs=1"), f"hydra.run.dir={run_dir}"])
    assert json.loads((run_dir / "metrics.json").read_text())["environment"]["world_size"] == 2
    assert proc.stdout.count("degradation  acc %") == 1  # only rank 0 prints the table
    assert len(list(tmp_path.rglob("metrics.json"))) == 1


@pytest.fixture
def gloo_world_of_one(tmp_path):
    tdist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    yield
    tdist.destroy_process_group()


def test_ddp_wraps_only_the_modules_the_stage_trains(gloo_world_of_one):
    context = MethodContext(3, 16, 16, 3, parse_degradations(["x1"]))
    toy = TwoStageToy(context)
    teacher, student = toy.stages()
    for stage, owned in ((teacher, [toy.teacher]), (student, [toy.student, toy.critic])):
        params = [p for step in stage.steps for p in toy.stage_parameters(stage, step)]
        assert [id(m) for m in dist.trained_modules(toy, params)] == [id(m) for m in owned]
        ddp = dist.wrap_stage(toy, params, torch.device("cpu"), find_unused_parameters=True, sync_bn=False)
        assert isinstance(ddp, nn.parallel.DistributedDataParallel)
        assert isinstance(ddp.module, dist.StageModules)
        assert {id(p) for p in ddp.parameters()} == {id(p) for p in params}  # not the other stage's
        assert ddp.module.method is toy and id(toy) not in {id(m) for m in ddp.modules()}


def test_a_parameter_beside_untrained_ones_makes_the_whole_method_the_ddp_module(gloo_world_of_one):
    root = nn.Module()
    root.scale = nn.Parameter(torch.ones(()))
    root.net, root.frozen = nn.Linear(2, 2), nn.Linear(2, 2)
    assert dist.trained_modules(root, [root.scale, *root.net.parameters()]) is None
    assert [id(m) for m in dist.trained_modules(root, root.net.parameters())] == [id(root.net)]
    ddp = dist.wrap_stage(
        root, [root.scale], torch.device("cpu"), find_unused_parameters=False, sync_bn=False
    )
    assert ddp.module is root and ddp.find_unused_parameters


def test_sync_batchnorm_keeps_the_parameters_and_checkpoint_keys():
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Sequential(nn.Flatten(), nn.BatchNorm1d(4)))
    params, keys = [id(p) for p in net.parameters()], list(net.state_dict())
    assert dist.convert_sync_batchnorm([net]) == 2
    assert isinstance(net[1], SumSyncBatchNorm) and isinstance(net[2][1], SumSyncBatchNorm)
    assert [id(p) for p in net.parameters()] == params and list(net.state_dict()) == keys
    assert dist.convert_sync_batchnorm([net]) == 0

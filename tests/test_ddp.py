"""Two gloo processes (torchrun on the CPU): evaluation, host syncs and checkpoints under DDP.

Each test runs one scenario of ``tests/ddp_worker.py`` under ``torchrun --nproc_per_node=2`` and reads back
what every rank saw.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import REPO, TINY_RESNET, run_two_ranks, tiny

TOY = "method._target_=toy_methods.TwoStageToy"
#: Seconds a scenario may take (each takes 10-40 s on a loaded 2-core machine).
TIMEOUT = 180


def run_scenario(tmp: Path, scenario: str, *overrides: str) -> list[dict]:
    """Each rank's result of ``scenario`` (``tests/ddp_worker.py``) with the ``tiny`` run's overrides."""
    args = [str(REPO / "tests" / "ddp_worker.py"), scenario, str(tmp), *tiny(tmp, *overrides)]
    proc = run_two_ranks(args, TIMEOUT, f"{scenario} did not finish: a rank waits on a collective")
    assert proc.returncode == 0, proc.stderr[-3000:]
    return [json.loads((tmp / f"{scenario}-rank{r}.json").read_text()) for r in range(2)]


def test_evaluation_with_an_empty_shard_on_one_rank_agrees_on_every_rank(tmp_path):
    """One validation face for two ranks: rank 1's shard is empty, yet it takes part in the same
    all-reduces (the method's declared values, here ``is_x1``) and returns the same rows as rank 0."""
    ranks = run_scenario(
        tmp_path, "evaluate", TOY, "dataset.num_val=1", "degrade.val=[x1,x2]", "degrade.test=[x1,x2]"
    )
    assert ranks[0]["world_size"] == 2
    assert ranks[0] == ranks[1]
    assert ranks[0]["teacher"]["x1"]["n"] == 1 and ranks[0]["teacher"]["x1"]["is_x1"] == 1.0
    student = ranks[0]["student"]
    assert [(student[d]["n"], student[d]["is_x1"]) for d in ("x1", "x2")] == [(1, 1.0), (1, 0.0)]
    assert ranks[0]["test"]["x2"]["n"] == 70


def test_only_rank_0_does_checkpoint_work(tmp_path):
    """Two-stage toy, 2 x 2 epochs under torchrun: rank 0 takes, copies and writes every checkpoint
    (stage start, best, last); rank 1 does none of it, not even a state dict."""
    ranks = run_scenario(tmp_path, "checkpoints", TOY, "method.epochs=2", "trainer.max_epochs=2")
    assert ranks[1] == {"state_dicts": 0, "host_copies": 0, "files": 0, "world_size": 2}
    work = ranks[0]
    assert work["state_dicts"] == work["files"] >= 5 and work["host_copies"] > 0
    assert sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir()) == ["best.pt", "last.pt"]


@pytest.mark.parametrize(
    "case",
    [
        pytest.param(["degrade.train=[x1,x2,x4]", "trainer.sync_bn=true"], id="baseline-syncbn"),
        pytest.param(["method=drgfer", "method.factors=[x1,x2]", "trainer.sync_bn=true"], id="drgfer-syncbn"),
    ],
)
def test_no_host_sync_in_steady_state_ddp_steps_on_any_rank(tmp_path, case):
    """tests/test_syncs.py under torchrun: DDP over the stage's modules, synchronised BatchNorm
    (SumSyncBatchNorm), every stage; steps after the first have no synchronising operation on either rank."""
    ranks = run_scenario(tmp_path, "syncs", TINY_RESNET, "trainer.batch_size=16", *case)
    for rank, counts in enumerate(ranks):
        print(f"rank {rank}: {counts}")
        stages = [k for k in counts if k != "world_size" and not k.startswith("wrapped ")]
        assert stages and all(counts[f"wrapped {s}"] == "DistributedDataParallel" for s in stages)
        for stage in stages:
            for i, step in enumerate(counts[stage][1:], start=1):
                assert not step, f"rank {rank} stage {stage} step {i}: synchronising operations {step}"

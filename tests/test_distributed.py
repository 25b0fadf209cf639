"""torchrun: two CPU processes (gloo) train like one process with the same global batch.

Tolerance: with no random augmentation and a network without BatchNorm, averaging the two half-batch
gradients equals the full-batch gradient up to float rounding, so test accuracies must agree exactly
and training losses within 1e-4 (relative). Networks with BatchNorm normalise per process (no SyncBatchNorm
on the CPU), so they are only required to run and write one metrics.json.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest
from conftest import REPO, tiny

TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]


def _run(cmd, tmp):
    env = {
        **os.environ,
        "PYTHONPATH": f"{REPO / 'tests'}:{os.environ.get('PYTHONPATH', '')}",
        "OMP_NUM_THREADS": "1",
    }
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


@pytest.mark.skipif(shutil.which("torchrun") is None and sys.platform == "win32", reason="needs torchrun")
def test_two_processes_match_one_process_for_a_multi_stage_method(tmp_path):
    common = [
        *tiny(
            tmp_path,
            "augment=none",
            "method._target_=toy_methods.TwoStageToy",
            "method.epochs=2",
            "trainer.batch_size=28",
            "degrade.test=[x1,x2]",
            "trainer.num_threads=1",
        )
    ]
    _run([sys.executable, "train.py", *common, f"hydra.run.dir={tmp_path / 'one'}"], tmp_path)
    _run([*TORCHRUN, "train.py", *common, f"hydra.run.dir={tmp_path / 'two'}"], tmp_path)
    one = json.loads((tmp_path / "one" / "metrics.json").read_text())
    two = json.loads((tmp_path / "two" / "metrics.json").read_text())
    assert two["environment"]["world_size"] == 2 and one["environment"]["world_size"] == 1
    for label in ("x1", "x2"):
        assert two["test"][label]["n"] == one["test"][label]["n"] == 70
        assert two["test"][label]["acc"] == one["test"][label]["acc"]
    for stage in ("teacher", "student"):
        a, b = one["train"]["stages"][stage], two["train"]["stages"][stage]
        for key in ("loss", "loss_critic", "loss_student"):
            if key in a:
                assert b[key] == pytest.approx(a[key], rel=1e-4)


def test_torchrun_baseline_writes_one_metrics_file(tmp_path):
    run_dir = tmp_path / "run"
    proc = _run(
        [*TORCHRUN, "train.py", *tiny(tmp_path, "trainer.max_epochs=1"), f"hydra.run.dir={run_dir}"], tmp_path
    )
    assert json.loads((run_dir / "metrics.json").read_text())["environment"]["world_size"] == 2
    assert proc.stdout.count("degradation  acc %") == 1  # only rank 0 prints the table
    assert len(list(tmp_path.rglob("metrics.json"))) == 1

"""scripts/bench_train.py runs end to end on a tiny setting (trainer, host path, model-only loops)."""

from __future__ import annotations

import json

import pytest
from conftest import run_cli


@pytest.mark.slow
def test_bench_train_times_the_trainer_loop_and_the_host_path():
    proc = run_cli(
        [
            "scripts/bench_train.py",
            "--device=cpu",
            "--sizes=32",
            "--methods=baseline",
            "--batch-size=8",
            "--n-train=24",
            "--steps=2",
            "--repeats=1",
            "--no-conventional",
            "--threads=1",
        ]
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    row = summary["results"][0]
    assert row["trainer_imgs_per_s"] > 0 and row["host_imgs_per_s"] > 0 and row["model_only_imgs_per_s"] > 0
    assert row["host_prefetch"] is True  # dataset.on_device=false runs the prefetching host path

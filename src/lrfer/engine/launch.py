"""Train one run in a fresh Python process (what scripts that train many runs in a row use).

A fresh process per run keeps runs independent (no state, threads or memory carried over) and lets an
interrupted series resume: a run folder with ``checkpoints/last.pt`` continues with ``trainer.resume=true``.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path


def train_in_subprocess(overrides: list[str], run_dir: Path) -> tuple[bool, float]:
    """``python -m lrfer.cli.train OVERRIDES hydra.run.dir=RUN_DIR``, its output appended to
    ``<run_dir>.log``; returns (succeeded, wall seconds)."""
    resume = ["trainer.resume=true"] if (run_dir / "checkpoints" / "last.pt").is_file() else []
    command = [sys.executable, "-m", "lrfer.cli.train", *overrides, *resume, f"hydra.run.dir={run_dir}"]
    run_dir.parent.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    with open(run_dir.with_suffix(".log"), "a") as log:
        log.write("$ " + " ".join(command) + "\n")
        log.flush()
        proc = subprocess.run(command, stdout=log, stderr=subprocess.STDOUT, env={**os.environ})
    return proc.returncode == 0, time.perf_counter() - start

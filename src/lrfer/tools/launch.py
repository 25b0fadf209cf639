"""Train one run in a fresh Python process (what scripts that train many runs in a row use).

A fresh process per run keeps runs independent (no state, threads or memory carried over) and lets an
interrupted series resume: a run folder with ``checkpoints/last.pt`` continues with ``trainer.resume=true``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from omegaconf import OmegaConf

from lrfer.config.compose import merge_overrides
from lrfer.core.errors import UserError


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


def train_side_by_side(
    runs: Sequence[tuple[list[str], Path]],
    jobs: int,
    done: Callable[[int, bool, float], None],
    threads: int | None = None,
) -> int:
    """Train ``runs`` ((overrides, run folder) pairs, in order) with :func:`train_in_subprocess`, ``jobs`` at
    a time: independent runs scale better across a CPU's cores than one run's threads. Each run gets
    ``threads`` intra-op threads; by default cores/jobs when several train at once, and otherwise torch's
    own default (every core, or ``OMP_NUM_THREADS``). Give ``threads`` when other jobs share the machine: a
    run alone in its series would take every core beside them. A run's own ``trainer.num_threads`` wins.
    ``done(index, succeeded, seconds)`` is called as each run ends; an exception it raises stops the
    series. Returns the number of runs trained at once."""
    jobs = max(1, min(jobs, len(runs)))
    if threads is not None and threads < 1:
        raise UserError(f"threads per run must be at least 1, got {threads}")
    if threads is None and jobs > 1:
        threads = max(1, (os.cpu_count() or 1) // jobs)
    thread_override = [f"trainer.num_threads={threads}"] if threads is not None else []

    def train(index: int) -> None:
        overrides, run_dir = runs[index]
        done(index, *train_in_subprocess(merge_overrides(thread_override, overrides), run_dir))

    with ThreadPoolExecutor(max_workers=jobs) as pool:
        list(pool.map(train, range(len(runs))))
    return jobs


def _threads_per_run(text: str) -> int:
    """``--threads``' value: an integer of at least 1, refused when the command line is read."""
    try:
        threads = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"threads per run must be an integer, got {text!r}") from None
    if threads < 1:
        raise argparse.ArgumentTypeError(f"threads per run must be at least 1, got {threads}")
    return threads


def add_threads_argument(parser: argparse.ArgumentParser) -> None:
    """``--threads N``: the intra-op threads of every run :func:`train_side_by_side` trains."""
    parser.add_argument(
        "--threads",
        type=_threads_per_run,
        default=None,
        help="threads per run (default: cores/jobs when several train at once, else torch's default); "
        "give 1 when other jobs share the machine",
    )


#: Overrides that say how a run was executed, not what it trained: not compared by :func:`finished_run`.
HOW_NOT_WHAT = ("trainer.resume=", "trainer.num_threads=")


def finished_run(run_dir: Path, overrides: list[str], dataset_info: dict | None = None) -> bool:
    """Whether ``run_dir`` holds a finished run of ``overrides`` (one to reuse, not to train again).

    A finished run (``metrics.json``) made with other overrides (``.hydra/overrides.yaml``: another protocol,
    budget or seed) is never silently reused: :class:`~lrfer.core.errors.UserError` says which overrides
    differ.
    ``dataset_info`` (e.g. ``{"generator_version": 3}``) must also match the run's ``metrics.json``
    ``dataset_info`` key by key: the same overrides drawn by another synthetic-face generator are other faces.
    """
    if not (run_dir / "metrics.json").is_file():
        return False
    recorded_file = run_dir / ".hydra" / "overrides.yaml"
    if not recorded_file.is_file():
        raise UserError(
            f"{run_dir} has a metrics.json but no .hydra/overrides.yaml: give a new output folder"
        )
    recorded = {str(o) for o in OmegaConf.load(recorded_file) if not str(o).startswith(HOW_NOT_WHAT)}
    wanted = {o for o in overrides if not o.startswith(HOW_NOT_WHAT)}
    if recorded != wanted:
        differ = sorted(recorded ^ wanted)
        raise UserError(
            f"{run_dir} was trained with other overrides ({', '.join(differ[:4])}"
            f"{' ...' if len(differ) > 4 else ''}): give a new output folder or remove that run"
        )
    recorded_info = json.loads((run_dir / "metrics.json").read_text()).get("dataset_info", {})
    for key, value in (dataset_info or {}).items():
        if recorded_info.get(key) != value:
            raise UserError(
                f"{run_dir} was made with dataset {key}={recorded_info.get(key)}, this is {value}: "
                "give a new output folder or remove that run"
            )
    return True

#!/usr/bin/env python
"""How the synthetic faces lose accuracy with resolution, beside RAF-DB's published curve.

    python scripts/calibrate_synthetic.py [key=value ...] [--out DIR] [--reference CSV]

Trains the baseline ResNet-18 with its quick recipe (``method=baseline``: its epochs, Adam, step schedule)
twice on synthetic faces drawn at RAF-DB's source size (``dataset.image_size=100``): once on native faces
(``degrade.train=[x1]``) and once on faces bicubic-downsampled x8 and resized back
(``degrade.train=[x8]``); tests both at x1, x2, x4, x6, x8 and prints them beside the same experiment on
RAF-DB from DRGFER's Table 3 (``experiments/drgfer/table3_rafdb_factors.csv``, the paper's numbers). A
calibrated generator stays within 10 points of RAF-DB in every judged cell (the x1 model at every
factor, the x8 model at x1, x4, x8). ``key=value`` arguments are Hydra overrides for both runs.

Runs go to ``<out>/train_x1`` and ``<out>/train_x8`` (ordinary run folders; a finished one is reused, an
interrupted one resumes), trained side by side (``--jobs 2``: one process per model, each on half the cores);
the table to ``<out>/calibration.md``. The last line printed is JSON with every
judged cell, the largest gap last, the generator version and the wall and CPU time.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import time
from pathlib import Path

import torch

from lrfer.config.compose import compose_config, merge_overrides
from lrfer.core.checkpoint import write_json
from lrfer.core.errors import UserError, exit_on_user_error
from lrfer.data.datasets import build_adapter
from lrfer.data.synthetic import GENERATOR_VERSION
from lrfer.report.calibration import (
    CALIBRATION_CELLS,
    TOLERANCE_POINTS,
    compare,
    largest_gap,
    markdown,
    read_reference,
)
from lrfer.report.provenance import provenance as result_provenance
from lrfer.tools.latency import cpu_model
from lrfer.tools.launch import add_threads_argument, finished_run, train_side_by_side

DEFAULT_REFERENCE = (
    Path(__file__).resolve().parents[1] / "experiments" / "drgfer" / "table3_rafdb_factors.csv"
)
TESTS = ["x1", "x2", "x4", "x6", "x8"]
TRAINS = ["x1", "x8"]
BASE_OVERRIDES = [
    "method=baseline",
    "dataset=synthetic",
    "dataset.image_size=100",
    # the calibrated amount of data, pinned so that a change of the quick start's dataset size (64 px) does
    # not move the calibration
    "dataset.num_train=3000",
    "dataset.num_val=500",
    "dataset.num_test=1000",
    "logger=none",
    f"degrade.test=[{','.join(TESTS)}]",
]


@exit_on_user_error
def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("overrides", nargs="*", help="Hydra overrides for both runs")
    parser.add_argument("--out", type=Path, default=Path("outputs/calibration"), help="output folder")
    parser.add_argument("--reference", type=Path, default=DEFAULT_REFERENCE, help="the real dataset's table")
    parser.add_argument(
        "--jobs",
        type=int,
        default=min(len(TRAINS), os.cpu_count() or 1),
        help="models trained at once, each on cores/jobs threads (default: 2 on 2 cores or more)",
    )
    add_threads_argument(parser)
    args = parser.parse_args(argv)
    reference = read_reference(args.reference)
    base = merge_overrides(BASE_OVERRIDES, args.overrides)
    cfg = compose_config(base)  # checks the overrides before anything trains
    if cfg.dataset.name != "synthetic":
        raise UserError(f"calibration is of the synthetic faces, got dataset={cfg.dataset.name}")

    start = time.perf_counter()
    run_dirs = {train: (args.out / f"train_{train}").resolve() for train in TRAINS}
    wanted = {train: merge_overrides(base, [f"degrade.train=[{train}]"], args.overrides) for train in TRAINS}
    provenance = build_adapter(cfg.dataset).provenance()  # the generator version: other faces, other runs
    todo = [train for train in TRAINS if not finished_run(run_dirs[train], wanted[train], provenance)]
    for train in set(TRAINS) - set(todo):
        print(f"trained at {train} earlier ({run_dirs[train]})", flush=True)

    def trained(index: int, ok: bool, seconds: float) -> None:
        train = todo[index]
        if not ok:
            raise UserError(f"the {train}-trained run failed: see {run_dirs[train].with_suffix('.log')}")
        print(f"trained at {train} in {seconds / 60:.1f} min ({run_dirs[train]})", flush=True)

    train_side_by_side([(wanted[t], run_dirs[t]) for t in todo], args.jobs, trained, args.threads)
    wall = time.perf_counter() - start
    synthetic: dict[str, dict[str, float]] = {}
    for train, run_dir in run_dirs.items():
        metrics = json.loads((run_dir / "metrics.json").read_text())
        synthetic[train] = {label: 100.0 * row["acc"] for label, row in metrics["test"].items()}
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)

    cells = compare(synthetic, reference)
    worst = largest_gap(cells)
    label = f"synthetic {cfg.dataset.image_size} px (generator v{GENERATOR_VERSION})"
    table = markdown(synthetic, reference, TESTS, label)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "calibration.md").write_text(table + "\n")
    summary = {
        "generator_version": GENERATOR_VERSION,
        "overrides": base,
        "cells": [
            {
                "train": c.train,
                "test": c.test,
                "synthetic": round(c.synthetic, 2),
                "rafdb": round(c.reference, 2),
                "gap": round(c.gap, 2),
            }
            for c in cells
        ],
        "tolerance_points": TOLERANCE_POINTS,
        "within_tolerance": abs(worst.gap) <= TOLERANCE_POINTS,
        "judged": [f"{t}->{s}" for t, s in CALIBRATION_CELLS],
        "wall_s_this_call": round(wall, 1),
        "cpu_s_this_call": round(usage.ru_utime + usage.ru_stime, 1),
        "machine": {"cpu": cpu_model(), "cores": os.cpu_count()},
        "torch": torch.__version__,
        "provenance": result_provenance(synthetic=True),
        "largest_gap": {"train": worst.train, "test": worst.test, "gap": round(worst.gap, 2)},
    }
    write_json(summary, args.out / "calibration.json")
    print(table)
    print(json.dumps(summary))
    return summary


if __name__ == "__main__":
    main()

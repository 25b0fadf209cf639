#!/usr/bin/env python
"""Measure the CPU seconds per epoch of a one-stage findings run (for experiments/findings/epoch_costs.yaml).

    python scripts/epoch_cost.py voting_soft [--steps 10 30] [--val 32 352] [--out outputs/epoch_cost]
                                             [--protocol experiments/findings/protocol.yaml] [key=value ...]

The run's own config (the findings protocol's overrides, seed 0) trains for one epoch three times, on one
thread, on few faces: A (``--steps[0]`` training steps, ``--val[0]`` validation faces), B (``--steps[1]``
steps, the same validation faces) and C (A's steps, ``--val[1]`` validation faces). Their ``metrics.json``
``cpu_s`` differ only by the extra steps or faces, so the start, the faces' generation and the test pass
cancel out:

    per step            = (cpu_B - cpu_A) / (steps_B - steps_A)
    per validation face = (cpu_C - cpu_A) / (val_C - val_A)
    per epoch           = ceil(num_train / batch_size) * per step + num_val * per validation face

with the protocol's ``num_train``, ``batch_size`` and ``num_val``. It is CPU time, not wall time: other jobs
on the machine slow a run's wall clock more than its CPU seconds, but a shared core's caches still make it
an upper bound. The three runs are ordinary run folders under ``<out>/<run>/``; a finished one with the same
overrides is reused. The last line printed is JSON.
"""

from __future__ import annotations

import argparse
import json
import math
import os
from pathlib import Path

import torch

from lrfer.config.compose import compose_config, merge_overrides
from lrfer.core.errors import UserError, exit_on_user_error, make_output_folder
from lrfer.data.datasets import build_adapter
from lrfer.report.findings import load_findings_protocol, plan_runs
from lrfer.report.provenance import provenance as result_provenance
from lrfer.report.provenance import script_command
from lrfer.tools.latency import cpu_model
from lrfer.tools.launch import finished_run, train_in_subprocess

REPO = Path(__file__).resolve().parents[1]
DEFAULT_PROTOCOL = REPO / "experiments" / "findings" / "protocol.yaml"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run", help="a one-stage run of the findings protocol (e.g. voting_soft)")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides for the three runs")
    parser.add_argument("--steps", type=int, nargs=2, default=[10, 30], help="training steps of A and B")
    parser.add_argument("--val", type=int, nargs=2, default=[32, 352], help="validation faces of A and C")
    parser.add_argument("--out", type=Path, default=Path("outputs/epoch_cost"))
    parser.add_argument("--protocol", type=Path, default=DEFAULT_PROTOCOL)
    args = parser.parse_args(argv)
    if not 0 < args.steps[0] < args.steps[1] or not 0 < args.val[0] < args.val[1]:
        raise UserError("--steps and --val each need two increasing positive numbers, e.g. --steps 10 30")
    return args


def epoch_key(protocol: dict, run: str) -> str:
    """The one scaled key of a one-stage run (``method.epochs``); other runs stop with one line."""
    if run not in protocol["runs"]:
        raise UserError(f"unknown run {run}: the protocol has {', '.join(protocol['runs'])}")
    spec = protocol["runs"][run]
    keys = list(spec["paper_epochs"]) + list(spec.get("paper_scale", {}))
    if len(keys) != 1:
        raise UserError(
            f"run {run} has {len(keys)} priced stages ({', '.join(keys)}): this measures one-stage runs"
        )
    return keys[0]


def epoch_cost(
    cpu: dict[str, float], steps: list[int], val: list[int], steps_per_epoch: int, num_val: int
) -> dict:
    """CPU seconds per epoch from the three runs' ``cpu`` (``A``, ``B``, ``C``; the module's formula)."""
    per_step = (cpu["B"] - cpu["A"]) / (steps[1] - steps[0])
    per_val_face = (cpu["C"] - cpu["A"]) / (val[1] - val[0])
    if per_step <= 0 or per_val_face < 0:
        raise UserError(
            f"the runs' CPU times do not grow with their size ({cpu}): measure again, with more steps"
        )
    return {
        "cpu_s_per_epoch": round(steps_per_epoch * per_step + num_val * per_val_face, 1),
        "cpu_s_per_step": round(per_step, 3),
        "cpu_s_per_val_face": round(per_val_face, 4),
        "steps_per_epoch": steps_per_epoch,
        "num_val": num_val,
    }


def measure(args: argparse.Namespace, argv: list[str] | None) -> dict:
    protocol = load_findings_protocol(args.protocol)
    key = epoch_key(protocol, args.run)
    overrides = plan_runs(protocol, [args.run], 1, args.overrides)[(args.run, 0)]
    cfg = compose_config(overrides)
    batch = int(cfg.trainer.batch_size)
    steps_per_epoch = math.ceil(int(cfg.dataset.num_train) / batch)
    provenance = build_adapter(cfg.dataset).provenance()
    shapes = {
        "A": (args.steps[0], args.val[0]),
        "B": (args.steps[1], args.val[0]),
        "C": (args.steps[0], args.val[1]),
    }
    cpu = {}
    folder = make_output_folder(args.out / args.run)
    for name, (steps, val) in shapes.items():
        small = [f"dataset.num_train={steps * batch}", f"dataset.num_val={val}", "dataset.num_test=32"]
        run_overrides = merge_overrides(overrides, small, [f"{key}=1", "trainer.num_threads=1"])
        run_dir = (folder / name).resolve()
        if finished_run(run_dir, run_overrides, provenance):
            print(f"{name}: measured earlier ({run_dir})", flush=True)
        else:
            print(f"{name}: {steps} step(s) of {batch}, {val} validation face(s) ...", flush=True)
            ok, _ = train_in_subprocess(run_overrides, run_dir)
            if not ok:
                raise UserError(f"run {name} failed: see {run_dir.with_suffix('.log')}")
        cpu[name] = float(json.loads((run_dir / "metrics.json").read_text())["cpu_s"])
    cost = epoch_cost(cpu, args.steps, args.val, steps_per_epoch, int(cfg.dataset.num_val))
    return {
        "run": args.run,
        "key": key,
        **cost,
        "runs_cpu_s": cpu,
        "command": script_command("scripts/epoch_cost.py", argv),
        "machine": f"{cpu_model()} ({os.cpu_count()} cores)",
        "torch": torch.__version__,
        "provenance": result_provenance(synthetic=True),
    }


@exit_on_user_error
def main(argv: list[str] | None = None) -> dict:
    result = measure(parse_args(argv), argv)
    print(
        f"{result['run']}: {result['cpu_s_per_epoch']} CPU s per epoch ({result['steps_per_epoch']} steps x "
        f"{result['cpu_s_per_step']} s + {result['num_val']} validation faces x "
        f"{result['cpu_s_per_val_face']} s)"
    )
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()

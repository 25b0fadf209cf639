#!/usr/bin/env python
"""Measure the CPU seconds per epoch of a findings run's stages (for experiments/findings/epoch_costs.yaml).

    python scripts/epoch_cost.py voting_soft [--steps 10 30] [--val 32 352] [--out outputs/epoch_cost]
                                             [--protocol experiments/findings/protocol.yaml] [key=value ...]
    python scripts/epoch_cost.py fsrfer [--epochs 2] [--out outputs/epoch_cost]

A run with one priced key (``method.epochs``): its own config (the findings protocol's overrides, seed 0)
trains for one epoch three times, on one thread, on few faces: A (``--steps[0]`` training steps,
``--val[0]`` validation faces), B (``--steps[1]`` steps, the same validation faces) and C (A's steps,
``--val[1]`` validation faces). Their ``metrics.json`` ``cpu_s`` differ only by the extra steps or faces, so
the start, the faces' generation and the test pass cancel out:

    per step            = (cpu_B - cpu_A) / (steps_B - steps_A)
    per validation face = (cpu_C - cpu_A) / (val_C - val_A)
    per epoch           = ceil(num_train / batch_size) * per step + num_val * per validation face

with the protocol's ``num_train``, ``batch_size`` and ``num_val``. It is CPU time, not wall time: other jobs
on the machine slow a run's wall clock more than its CPU seconds, but a shared core's caches still make it
an upper bound.

A run with several priced keys (GME-Net's teacher and student epochs, FSR-FER's extractor epochs and
``schedule_scale``) is measured by one run instead: its own config, every stage capped at ``--epochs`` (2)
epochs (``trainer.max_epochs``), on all its faces. The trainer records each validated epoch's CPU seconds
(``val_history`` ``cpu_s``); a stage costs what its last epoch cost (the first also pays one-time work). A
key's cost per unit is then the sum over stages of that cost times the epochs one unit of the key gives the
stage, which the method itself says: its ``stages()`` at the key's planned value and at twice it (FSR-FER:
one unit of ``schedule_scale`` is 116 pre-training and 435 GAN epochs).

The runs are ordinary run folders under ``<out>/<run>/``; a finished one with the same overrides is reused.
The last line printed is JSON.
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
from lrfer.engine.run import build_method, method_context
from lrfer.report.findings import load_findings_protocol, plan_runs, validation_history
from lrfer.report.provenance import provenance as result_provenance
from lrfer.report.provenance import script_command
from lrfer.tools.latency import cpu_model
from lrfer.tools.launch import finished_run, train_in_subprocess

REPO = Path(__file__).resolve().parents[1]
DEFAULT_PROTOCOL = REPO / "experiments" / "findings" / "protocol.yaml"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run", help="a run of the findings protocol (e.g. voting_soft, fsrfer)")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides for the three runs")
    parser.add_argument("--steps", type=int, nargs=2, default=[10, 30], help="training steps of A and B")
    parser.add_argument("--val", type=int, nargs=2, default=[32, 352], help="validation faces of A and C")
    parser.add_argument("--epochs", type=int, default=2, help="epochs per stage (runs of several stages)")
    parser.add_argument("--out", type=Path, default=Path("outputs/epoch_cost"))
    parser.add_argument("--protocol", type=Path, default=DEFAULT_PROTOCOL)
    args = parser.parse_intermixed_args(argv)  # key=value after the options too
    if not 0 < args.steps[0] < args.steps[1] or not 0 < args.val[0] < args.val[1]:
        raise UserError("--steps and --val each need two increasing positive numbers, e.g. --steps 10 30")
    if args.epochs < 1:
        raise UserError(f"--epochs must be at least 1, got {args.epochs}")
    return args


def priced_keys(protocol: dict, run: str) -> list[str]:
    """The scaled keys of a protocol run (``method.epochs``; ``method.teacher_epochs``, ...)."""
    if run not in protocol["runs"]:
        raise UserError(f"unknown run {run}: the protocol has {', '.join(protocol['runs'])}")
    spec = protocol["runs"][run]
    return list(spec["paper_epochs"]) + list(spec.get("paper_scale", {}))


def stage_epochs(overrides: list[str]) -> dict[str, int]:
    """Each stage's epochs, as the method of ``overrides`` plans them (built from the config alone)."""
    cfg = compose_config(overrides)
    return {stage.name: int(stage.epochs) for stage in build_method(cfg, method_context(cfg)).stages()}


def epochs_per_unit(overrides: list[str], keys: list[str]) -> dict[str, dict[str, float]]:
    """Per key: the epochs of each stage that one unit of it gives, from the method's stages at the key's
    value in ``overrides`` and at twice that value (the stages it leaves alone are not listed)."""
    values = dict(o.split("=", 1) for o in overrides if "=" in o)
    base = stage_epochs(overrides)
    out = {}
    for key in keys:
        value = float(values[key])
        doubled = int(2 * value) if value.is_integer() else 2 * value
        twice = stage_epochs(merge_overrides(overrides, [f"{key}={doubled}"]))
        out[key] = {s: (twice[s] - base[s]) / value for s in base if twice[s] != base[s]}
    return out


def stage_costs(history: list[dict]) -> dict[str, float]:
    """CPU seconds of each stage's last validated epoch (``cpu_s`` of a run's ``val_history``)."""
    costs = {e["stage"]: float(e["cpu_s"]) for e in history if "cpu_s" in e}
    if not costs:
        raise UserError("the run's history records no epoch's CPU seconds: train it with this code again")
    return costs


def unit_costs(per_unit: dict[str, dict[str, float]], per_epoch: dict[str, float]) -> dict[str, float]:
    """Each key's CPU seconds per unit: the sum over the stages it scales of epochs per unit x their cost."""
    missing = sorted({s for stages in per_unit.values() for s in stages} - set(per_epoch))
    if missing:
        raise UserError(f"stage(s) {missing} recorded no validated epoch: their cost is not measured")
    return {
        key: round(sum(n * per_epoch[s] for s, n in stages.items()), 1) for key, stages in per_unit.items()
    }


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


def train_once(run_overrides: list[str], run_dir: Path, provenance: dict, name: str, what: str) -> None:
    """Train the measuring run ``name`` (``what`` it trains) in ``run_dir``, unless it finished there with the
    same overrides; a failed run stops with one line naming its log."""
    if finished_run(run_dir, run_overrides, provenance):
        print(f"{name}: measured earlier ({run_dir})", flush=True)
        return
    print(f"{name}: {what} ...", flush=True)
    ok, _ = train_in_subprocess(run_overrides, run_dir)
    if not ok:
        raise UserError(f"run {name} failed: see {run_dir.with_suffix('.log')}")


def measure_stages(args: argparse.Namespace, overrides: list[str], keys: list[str]) -> dict:
    """A run of several priced keys: one run of ``args.epochs`` per stage (the module's second formula)."""
    cfg = compose_config(overrides)
    provenance = build_adapter(cfg.dataset).provenance()
    run_overrides = merge_overrides(overrides, [f"trainer.max_epochs={args.epochs}", "trainer.num_threads=1"])
    run_dir = (make_output_folder(args.out / args.run) / f"stages{args.epochs}").resolve()
    train_once(run_overrides, run_dir, provenance, "stages", f"every stage for {args.epochs} epoch(s)")
    per_epoch = stage_costs(validation_history(run_dir))
    per_unit = epochs_per_unit(overrides, keys)
    return {
        "cpu_s_per_unit": unit_costs(per_unit, per_epoch),
        "stage_cpu_s_per_epoch": per_epoch,
        "stage_epochs_per_unit": per_unit,
        "run_cpu_s": float(json.loads((run_dir / "metrics.json").read_text())["cpu_s"]),
    }


def measure(args: argparse.Namespace, argv: list[str] | None) -> dict:
    protocol = load_findings_protocol(args.protocol)
    keys = priced_keys(protocol, args.run)
    overrides = plan_runs(protocol, [args.run], 1, args.overrides)[(args.run, 0)]
    common = {
        "command": script_command("scripts/epoch_cost.py", argv),
        "machine": f"{cpu_model()} ({os.cpu_count()} cores)",
        "torch": torch.__version__,
        "provenance": result_provenance(synthetic=True),
    }
    if len(keys) > 1:
        return {"run": args.run, "keys": keys, **measure_stages(args, overrides, keys), **common}
    key = keys[0]
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
        train_once(
            run_overrides, run_dir, provenance, name, f"{steps} step(s) of {batch}, {val} validation face(s)"
        )
        cpu[name] = float(json.loads((run_dir / "metrics.json").read_text())["cpu_s"])
    cost = epoch_cost(cpu, args.steps, args.val, steps_per_epoch, int(cfg.dataset.num_val))
    return {"run": args.run, "key": key, **cost, "runs_cpu_s": cpu, **common}


@exit_on_user_error
def main(argv: list[str] | None = None) -> dict:
    result = measure(parse_args(argv), argv)
    if "cpu_s_per_unit" in result:
        stages = ", ".join(f"{s} {c} s" for s, c in result["stage_cpu_s_per_epoch"].items())
        units = ", ".join(f"{k} {c} s" for k, c in result["cpu_s_per_unit"].items())
        print(f"{result['run']}: CPU s per epoch of each stage: {stages}; per unit of each key: {units}")
    else:
        print(
            f"{result['run']}: {result['cpu_s_per_epoch']} CPU s per epoch ({result['steps_per_epoch']} "
            f"steps x {result['cpu_s_per_step']} s + {result['num_val']} validation faces x "
            f"{result['cpu_s_per_val_face']} s)"
        )
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()

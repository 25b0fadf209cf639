#!/usr/bin/env python
"""Are two training runs the same, number for number? (A refactor's check that training did not change.)

    python scripts/compare_runs.py RUN_A RUN_B [--partial]

Compares every scalar the runs wrote to TensorBoard (``tb/events.*`` and the files under ``tb/``, read with
TensorBoard's ``EventAccumulator``: each tag's steps and values, exactly) and the ``val`` and ``test``
numbers of their ``metrics.json``. Wall times (tags and keys naming ``time``, ``_s``, ``per_s``) are
machine-dependent and skipped. Prints one line per difference and exits 1 if there is any, else prints
what was compared and exits 0. ``--partial`` compares a run still training (RUN_B) with a finished one: only
the TensorBoard steps both have written so far (at least one per tag), and no metrics.json.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
from pathlib import Path
from typing import Any

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

#: Scalar tags and metrics.json keys that measure time, not training: different on every run.
TIMING = re.compile(r"(time|_s$|_s/|per_s|throughput|images_per|samples_per|seconds)", re.IGNORECASE)


def tb_scalars(run: Path) -> dict[str, list[tuple[int, float]]]:
    """``{<events file folder>/<tag>: [(step, value), ...]}`` for every TensorBoard file under ``run/tb``."""
    scalars: dict[str, list[tuple[int, float]]] = {}
    for folder in sorted({p.parent for p in (run / "tb").rglob("events.out.tfevents.*")}):
        acc = EventAccumulator(str(folder), size_guidance={"scalars": 0})
        acc.Reload()
        where = folder.relative_to(run / "tb").as_posix()
        for tag in acc.Tags()["scalars"]:
            key = tag if where == "." else f"{where}/{tag}"
            scalars[key] = [(e.step, e.value) for e in acc.Scalars(tag)]
    return scalars


def flatten(node: Any, prefix: str) -> dict[str, Any]:
    """A nested JSON value as ``{dotted.key: leaf}``."""
    if isinstance(node, dict):
        out: dict[str, Any] = {}
        for key, value in node.items():
            out.update(flatten(value, f"{prefix}.{key}" if prefix else str(key)))
        return out
    if isinstance(node, list):
        out = {}
        for i, value in enumerate(node):
            out.update(flatten(value, f"{prefix}[{i}]"))
        return out
    return {prefix: node}


def metrics(run: Path) -> dict[str, Any]:
    """The ``val`` and ``test`` results of ``run/metrics.json``, flattened."""
    data = json.loads((run / "metrics.json").read_text())
    return {**flatten(data.get("val", {}), "val"), **flatten(data.get("test", {}), "test")}


def same(a: Any, b: Any) -> bool:
    """Exactly equal (NaN equals NaN)."""
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    return a == b


def differences(a: dict[str, Any], b: dict[str, Any], what: str) -> list[str]:
    """One line per key whose values differ or that only one side has (timing keys skipped)."""
    lines = []
    for key in sorted(set(a) | set(b)):
        if TIMING.search(key):
            continue
        if key not in a or key not in b:
            lines.append(f"{what} {key}: only in run {'b' if key not in a else 'a'}")
        elif not same(a[key], b[key]) and not (
            isinstance(a[key], list) and len(a[key]) == len(b[key]) and all(map(same, a[key], b[key]))
        ):
            lines.append(f"{what} {key}: {a[key]!r} != {b[key]!r}")
    return lines


def common_steps(a: dict[str, list], b: dict[str, list]) -> tuple[dict[str, list], dict[str, list]]:
    """Both runs' scalars cut to the steps the shorter one has logged (tags only one run has are dropped)."""
    cut_a, cut_b = {}, {}
    for tag in set(a) & set(b):
        n = min(len(a[tag]), len(b[tag]))
        cut_a[tag], cut_b[tag] = a[tag][:n], b[tag][:n]
    return cut_a, cut_b


def compare(run_a: Path, run_b: Path, partial: bool = False) -> tuple[list[str], int, int]:
    """The differences between two run folders, and how many scalar tags and metric values were compared."""
    tb_a, tb_b = tb_scalars(run_a), tb_scalars(run_b)
    if partial:
        tb_a, tb_b = common_steps(tb_a, tb_b)
        lines = differences(tb_a, tb_b, "tensorboard")
        return lines, sum(len(v) for v in tb_a.values()), 0
    m_a, m_b = metrics(run_a), metrics(run_b)
    lines = differences(tb_a, tb_b, "tensorboard") + differences(m_a, m_b, "metrics.json")
    return lines, len(set(tb_a) | set(tb_b)), len(set(m_a) | set(m_b))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_a", type=Path)
    parser.add_argument("run_b", type=Path)
    parser.add_argument("--partial", action="store_true", help="RUN_B still trains: the steps both have")
    args = parser.parse_args(argv)
    for run in (args.run_a,) if args.partial else (args.run_a, args.run_b):
        if not (run / "metrics.json").is_file() or not (run / "tb").is_dir():
            print(f"error: {run} is not a finished run folder (no metrics.json or tb/)", file=sys.stderr)
            return 2
    lines, tags, values = compare(args.run_a, args.run_b, args.partial)
    for line in lines:
        print(line)
    if lines:
        print(f"{len(lines)} difference(s)")
        return 1
    if args.partial:
        print(f"identical so far: {tags} TensorBoard scalar values (the steps both runs have logged)")
    else:
        print(f"identical: {tags} TensorBoard scalar tags (every step), {values} metrics.json values")
    return 0


if __name__ == "__main__":
    sys.exit(main())

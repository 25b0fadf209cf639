#!/usr/bin/env python
"""Mean +- standard deviation over cross-validation folds of every metrics.json below the given folders.

    python scripts/aggregate_folds.py multirun/2026-11-23_10-00-00 [--out experiments/efc/kdef_synthetic]
        [--split test] [--metric acc] [--fold-key dataset.fold] [--paper experiments/efc/table1_kdef.csv]

Runs are grouped by their name (method + command-line overrides, as ``scripts/report.py`` names them)
with the ``--fold-key`` override removed, so a sweep ``-m dataset.fold='range(10)' 'degrade.train=[32px],
[20px]' method=efc,zoo`` gives one row per (method, resolution). Each cell is ``mean +- std`` in % over the
group's folds (sample standard deviation, ddof=1; 0 for one fold), and ``folds`` counts the runs.
``--merge degrade.train`` also drops that override, so one method's per-resolution runs share a row. Writes
``<out>.md`` and ``<out>.csv`` (default ``<first dir>/folds``); the last line printed is JSON.
"""

from __future__ import annotations

import argparse
import csv
import json
import re
import statistics
from pathlib import Path

from lrfer.errors import UserError, exit_on_user_error
from lrfer.report.tables import collect_runs, columns_of, degradation_sort_key, read_paper_csv


def group_runs(
    dirs: list[str], split: str, metric: str, fold_key: str, merge: tuple[str, ...] = ()
) -> dict[str, dict]:
    """``{group name: {"folds": n, "values": {label: [acc, ...]}}}`` over every run below ``dirs``.

    The name of a group is the run name without the ``fold_key`` override and the ``merge`` overrides
    (``degrade.train`` merges the one-model-per-resolution runs of a method into one row).
    """
    keys = [fold_key, *merge]
    pattern = re.compile(r"\s*(?:" + "|".join(re.escape(k) for k in keys) + r")=\S+")
    groups: dict[str, dict] = {}
    for row in collect_runs(dirs, split=split, metric=metric):
        name = pattern.sub("", row.name).strip()
        group = groups.setdefault(name, {"folds": 0, "values": {}})
        for label, value in row.values.items():
            group["values"].setdefault(label, []).append(value)
        group["folds"] = max(len(v) for v in group["values"].values())
    return groups


def mean_std(values: list[float]) -> tuple[float, float]:
    mean = statistics.fmean(values)
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return 100 * mean, 100 * std


@exit_on_user_error
def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("dirs", nargs="+", help="run or multirun folders (searched recursively)")
    parser.add_argument("--out", default=None, help="output prefix for .md/.csv (default: <first dir>/folds)")
    parser.add_argument("--split", default="test", choices=["test", "val"])
    parser.add_argument("--metric", default="acc", choices=["acc", "balanced_acc"])
    parser.add_argument("--fold-key", default="dataset.fold", help="the override that names the fold")
    parser.add_argument(
        "--merge", action="append", default=[], help="also drop this override from run names (repeatable)"
    )
    parser.add_argument("--tag", default="", help='appended to measured rows, e.g. " (synthetic)"')
    parser.add_argument("--paper", action="append", default=[], help="a paper's table as CSV (repeatable)")
    args = parser.parse_args(argv)

    groups = group_runs(args.dirs, args.split, args.metric, args.fold_key, tuple(args.merge))
    groups = {name + args.tag: group for name, group in groups.items()}
    if not groups:
        raise UserError(f"no metrics.json found under {', '.join(args.dirs)}")
    paper = [r for p in args.paper for r in read_paper_csv(p)]
    measured = {lbl for g in groups.values() for lbl in g["values"]}
    labels = sorted(measured | set(columns_of(paper)), key=degradation_sort_key)
    summary = {}
    lines = ["| run | folds | " + " | ".join(labels) + " |", "|---|---|" + "---|" * len(labels)]
    for r in paper:
        cells = [f"{100 * r.values[c]:.2f}" if c in r.values else "" for c in labels]
        lines.append(f"| {r.name} | | " + " | ".join(cells) + " |")
    for name, group in groups.items():
        stats = {lbl: mean_std(v) for lbl, v in group["values"].items()}
        summary[name] = {"folds": group["folds"], **{k: {"mean": m, "std": s} for k, (m, s) in stats.items()}}
        cells = [f"{stats[c][0]:.2f} ± {stats[c][1]:.2f}" if c in stats else "" for c in labels]
        lines.append(f"| {name} | {group['folds']} | " + " | ".join(cells) + " |")
    table = "\n".join(lines)
    print(table)
    base = Path(args.out) if args.out else Path(args.dirs[0]) / "folds"
    base.parent.mkdir(parents=True, exist_ok=True)
    base.with_suffix(".md").write_text(table + "\n")
    with base.with_suffix(".csv").open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["run", "folds", *[f"{lbl}_{k}" for lbl in labels for k in ("mean", "std")]])
        for name, entry in summary.items():
            cells = []
            for lbl in labels:
                cell = entry.get(lbl)
                cells += [f"{cell['mean']:.2f}", f"{cell['std']:.2f}"] if cell else ["", ""]
            writer.writerow([name, entry["folds"], *cells])
    print(f"\nwrote {base}.md, {base}.csv")
    print(json.dumps(summary))


if __name__ == "__main__":
    main()

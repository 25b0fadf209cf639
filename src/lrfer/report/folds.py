"""Mean +- standard deviation over cross-validation folds of the runs below some folders.

``scripts/aggregate_folds.py`` is the command-line layer; the grouping rules are described there.
"""

from __future__ import annotations

import csv
import re
import statistics
from pathlib import Path

from lrfer.core.errors import UserError
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


def aggregate_folds(
    dirs: list[str],
    out: str | Path | None = None,
    split: str = "test",
    metric: str = "acc",
    fold_key: str = "dataset.fold",
    merge: tuple[str, ...] = (),
    tag: str = "",
    paper: tuple[str, ...] = (),
) -> tuple[str, dict, Path]:
    """Group, write ``<out>.md`` and ``<out>.csv``; returns (markdown table, summary, out prefix).

    The summary is ``{name: {"folds": n, label: {"mean": %, "std": %}, ...}}``.
    """
    groups = group_runs(dirs, split, metric, fold_key, tuple(merge))
    groups = {name + tag: group for name, group in groups.items()}
    if not groups:
        raise UserError(f"no metrics.json found under {', '.join(dirs)}")
    paper_rows = [r for p in paper for r in read_paper_csv(p)]
    measured = {lbl for g in groups.values() for lbl in g["values"]}
    labels = sorted(measured | set(columns_of(paper_rows)), key=degradation_sort_key)
    summary = {}
    lines = ["| run | folds | " + " | ".join(labels) + " |", "|---|---|" + "---|" * len(labels)]
    for r in paper_rows:
        cells = [f"{100 * r.values[c]:.2f}" if c in r.values else "" for c in labels]
        lines.append(f"| {r.name} | | " + " | ".join(cells) + " |")
    for name, group in groups.items():
        stats = {lbl: mean_std(v) for lbl, v in group["values"].items()}
        summary[name] = {"folds": group["folds"], **{k: {"mean": m, "std": s} for k, (m, s) in stats.items()}}
        cells = [f"{stats[c][0]:.2f} ± {stats[c][1]:.2f}" if c in stats else "" for c in labels]
        lines.append(f"| {name} | {group['folds']} | " + " | ".join(cells) + " |")
    table = "\n".join(lines)
    base = Path(out) if out else Path(dirs[0]) / "folds"
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
    return table, summary, base

"""One table for every method under one protocol (``scripts/leaderboard.py``): accuracy per degradation,
mean +- std over seeds, beside what each method costs (parameters, GMACs, CPU latency, training time).

The runs live in ``<out>/runs/<method>/seed<k>/`` (ordinary run folders: ``scripts/report.py`` reads them
too) and each method's cost in ``<out>/runs/<method>/cost.json``.
"""

from __future__ import annotations

import csv
import json
import math
import re
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from omegaconf import OmegaConf

from lrfer.config import compose_config
from lrfer.core.errors import UserError
from lrfer.report.extra_test import EXTRA_TEST_FILE, extra_test_rows
from lrfer.report.tables import degradation_sort_key

if TYPE_CHECKING:
    from matplotlib.axes import Axes

PROTOCOL_KEYS = {"test", "budget", "common", "latency", "methods"}
# datasets: dataset name -> overrides for that dataset only (after common); converged_budget: the budget at
# which every method's validation curve was shown flat (null: none yet); findings: the findings protocol
# (a path relative to this protocol's folder) whose runs the methods with a ``findings_run`` are
OPTIONAL_PROTOCOL_KEYS = {"datasets", "converged_budget", "findings"}


def budget_label(budget: float, converged_budget: float | None) -> str:
    """The budget as a table title states it: tables at any budget other than the protocol's
    ``converged_budget`` are labelled "not converged" (a quick look, not a ranking)."""
    label = f"budget {budget:g}"
    if converged_budget is None or float(budget) != float(converged_budget):
        label += ", NOT CONVERGED (a quick look: the models are under-trained)"
    return label


def load_protocol(path: str | Path) -> dict:
    """The protocol file as a dict, with its keys checked (see ``experiments/leaderboard/protocol.yaml``)."""
    path = Path(path)
    if not path.is_file():
        raise UserError(
            f"protocol file {path} not found: pass --protocol experiments/leaderboard/protocol.yaml"
        )
    try:
        protocol = OmegaConf.to_container(OmegaConf.load(path))
    except Exception as err:
        reason = " ".join(str(err).split())[:200] or type(err).__name__
        raise UserError(f"cannot read the protocol file {path}: {reason}") from None
    if not isinstance(protocol, dict):
        raise UserError(f"{path} is not a leaderboard protocol (a mapping with keys {sorted(PROTOCOL_KEYS)})")
    unknown = set(protocol) - PROTOCOL_KEYS - OPTIONAL_PROTOCOL_KEYS
    missing = PROTOCOL_KEYS - set(protocol)
    if unknown or missing:
        raise UserError(f"{path}: unknown keys {sorted(unknown)}, missing keys {sorted(missing)}")
    protocol.setdefault("datasets", {})
    protocol.setdefault("converged_budget", None)
    if not isinstance(protocol["methods"], dict):
        raise UserError(f"{path}: methods must map each method's name to its overrides")
    for name, spec in protocol["methods"].items():
        if not isinstance(spec, dict) or not (spec.get("overrides") or spec.get("findings_run")):
            raise UserError(f"{path}: method {name} has no overrides (e.g. [method={name}])")
        if spec.get("findings_run") and not protocol.get("findings"):
            raise UserError(f"{path}: method {name} has a findings_run but the protocol names no findings")
    if protocol.get("findings"):
        protocol["findings"] = str((path.parent / protocol["findings"]).resolve())
    return protocol


def budget_overrides(spec: dict, budget: float, base: list[str]) -> list[str]:
    """``key=value`` overrides that scale a method's epoch keys (and ``scale`` keys) by ``budget``.

    Epoch counts are rounded up and kept >= 1; a key that is null in the composed config stays null (it
    follows another key, e.g. ``rrn_epochs: null`` = ``epochs``).
    """
    if budget <= 0:
        raise UserError(f"the budget must be positive, got {budget}")
    if budget == 1.0:
        return []
    cfg = compose_config([*base, *spec["overrides"]])
    out = []
    for key in spec.get("epochs", []):
        value = OmegaConf.select(cfg, key)
        if value is not None:
            out.append(f"{key}={max(1, math.ceil(float(value) * budget))}")
    for key in spec.get("scale", []):
        value = OmegaConf.select(cfg, key)
        if value is not None:
            out.append(f"{key}={float(value) * budget:g}")
    return out


@dataclass
class MethodResult:
    """One row of the leaderboard: a method's accuracies over its seeds and its cost."""

    name: str
    accuracies: dict[str, list[float]] = field(default_factory=dict)
    durations: list[float] = field(default_factory=list)
    cpu_s: list[float] = field(default_factory=list)  # each run's CPU seconds (metrics.json), where recorded
    runs: int = 0  # finished runs read
    cost: dict = field(default_factory=dict)

    def mean_std(self, label: str) -> tuple[float, float] | None:
        values = self.accuracies.get(label)
        if not values:
            return None
        mean = 100 * statistics.fmean(values)
        return mean, (100 * statistics.stdev(values) if len(values) > 1 else 0.0)


def collect(
    out: Path, methods: list[str], folders: dict[str, list[Path]] | None = None
) -> list[MethodResult]:
    """Read every finished run and cost file of ``methods``: the runs in ``folders[method]`` (the run folders
    of a method reused from the findings), else those below ``<out>/runs/<method>/``; a run's test rows are
    its ``metrics.json``'s and, for labels that file lacks, its :data:`EXTRA_TEST_FILE`'s."""
    results = []
    for name in methods:
        result = MethodResult(name)
        runs = (folders or {}).get(name) or sorted((out / "runs" / name).glob("seed*"))
        for run in runs:
            if not (run / "metrics.json").is_file():
                continue
            metrics = json.loads((run / "metrics.json").read_text())
            result.runs += 1
            rows = dict(metrics.get("test", {}))
            if (run / EXTRA_TEST_FILE).is_file():
                extra = extra_test_rows(run / EXTRA_TEST_FILE)
                rows.update({label: row for label, row in extra.items() if label not in rows})
            for label, row in rows.items():
                result.accuracies.setdefault(label, []).append(float(row["acc"]))
            if "duration_s" in metrics:
                result.durations.append(float(metrics["duration_s"]))
            if "cpu_s" in metrics:
                result.cpu_s.append(float(metrics["cpu_s"]))
        cost_file = out / "runs" / name / "cost.json"
        if cost_file.is_file():
            result.cost = json.loads(cost_file.read_text())
        results.append(result)
    return results


def _cell(stats: tuple[float, float] | None) -> str:
    return "" if stats is None else f"{stats[0]:.1f} ± {stats[1]:.1f}"


def _cost_cells(r: MethodResult) -> list[str]:
    params = r.cost.get("params")
    gmacs = r.cost.get("gmacs")
    ms = r.cost.get("latency", {}).get("ms")
    minutes = statistics.fmean(r.durations) / 60 if r.durations else None
    return [
        "" if params is None else f"{params / 1e6:.2f}",
        "" if gmacs is None else f"{gmacs:.3f}",
        "" if ms is None else f"{ms:.2f}",
        "" if minutes is None else f"{minutes:.1f}",
        "x".join(map(str, r.cost["input"][1:])) if r.cost.get("input") else "",
    ]


COST_COLUMNS = ["params (M)", "GMACs", "CPU ms", "train min", "input"]


def provenance_notes(calls: list[dict], machine: dict) -> list[str]:
    """Lines under the table: where, with what and how long it was made (every call that trained runs)."""
    wall = sum(c["wall_s"] for c in calls) / 60
    commands = sorted({c["command"] for c in calls if c.get("command")})

    def one(call: dict) -> str:
        parts = [f"{call['wall_s'] / 60:.1f} min"]
        if call.get("runs_trained") is not None:
            parts.append(f"{call['runs_trained']} run(s) trained")
        if call.get("jobs"):
            parts.append(f"{call['jobs']} at a time")
        if call.get("date"):
            parts.append(call["date"])
        return ", ".join(parts)

    generator = machine.get("generator_version")
    faces = f", synthetic-face generator v{generator}" if generator is not None else ""
    lines = [
        f"Machine: {machine['cpu']} ({machine['cores']} cores), torch {machine['torch']}{faces}.",
        f"Wall time: {wall:.1f} min in {len(calls)} call(s) of the script ("
        + "; ".join(one(c) for c in calls)
        + "), the cost columns included.",
    ]
    if commands:
        lines.append("Command(s): " + "; ".join(f"`{c}`" for c in commands) + ".")
    return lines


def cpu_time_note(results: list[MethodResult]) -> str:
    """The line under the table that sums the training CPU time of its runs (``metrics.json`` ``cpu_s``:
    every process of the run, all its cores), and says how many runs do not record it."""
    runs = sum(r.runs for r in results)
    cpu = sum(sum(r.cpu_s) for r in results)
    counted = sum(len(r.cpu_s) for r in results)
    missing = f"; {runs - counted} run(s) do not record it" if runs > counted else ""
    return (
        f"Total CPU time of the runs: {cpu / 3600:.2f} h over {counted} run(s) (metrics.json cpu_s){missing}."
    )


def write_leaderboard(
    results: list[MethodResult], labels: list[str], out: Path, title: str, notes: list[str] | None = None
) -> Path:
    """Write ``leaderboard.md``, ``.csv`` and ``.png`` under ``out``; returns the markdown path. ``notes``:
    lines under the table (machine, wall time, command)."""
    labels = sorted(labels, key=degradation_sort_key)
    seeds = max((len(v) for r in results for v in r.accuracies.values()), default=0)
    head = ["method", "seeds", *COST_COLUMNS, *labels]
    lines = [f"# {title}", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in results:
        n = max((len(v) for v in r.accuracies.values()), default=0)
        cells = [r.name, str(n), *_cost_cells(r), *[_cell(r.mean_std(lbl)) for lbl in labels]]
        lines.append("| " + " | ".join(cells) + " |")
    lines += [
        "",
        f"Accuracy in % on the test split, mean ± std over up to {seeds} seeds. Cost: parameters, "
        "multiply-accumulates per image at the method's input, CPU batch-1 latency, training wall time "
        "per run.",
    ]
    if notes:
        lines += ["", *notes]
    md = out / "leaderboard.md"
    md.write_text("\n".join(lines) + "\n")
    with (out / "leaderboard.csv").open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(
            ["method", "seeds", "params", "gmacs", "cpu_ms", "train_s"]
            + [f"{lbl}_{k}" for lbl in labels for k in ("mean", "std")]
        )
        for r in results:
            row = [
                r.name,
                max((len(v) for v in r.accuracies.values()), default=0),
                r.cost.get("params", ""),
                r.cost.get("gmacs", ""),
                r.cost.get("latency", {}).get("ms", ""),
                round(statistics.fmean(r.durations), 1) if r.durations else "",
            ]
            for lbl in labels:
                stats = r.mean_std(lbl)
                row += [f"{stats[0]:.2f}", f"{stats[1]:.2f}"] if stats else ["", ""]
            writer.writerow(row)
    plot_leaderboard(results, labels, out / "leaderboard.png", title)
    return md


def face_side(label: str, native: int) -> float | None:
    """The side in pixels of the low-resolution face of a plain label (x4 of 100 px: 25; 14px: 14)."""
    if m := re.fullmatch(r"x(\d+(?:\.\d+)?)", label):
        return native / float(m.group(1))
    if m := re.fullmatch(r"(\d+)px", label):
        return float(m.group(1))
    return None


def plain_log_axis(ax: Axes, ticks: list[float] | None = None) -> None:
    """A log-scale x axis labelled in plain numbers ("20", not matplotlib's "2x10^1" on minor ticks): labels
    at ``ticks`` (the face sides), else at 1, 2 and 5 times each power of ten; unlabelled minor ticks."""
    import matplotlib.ticker

    ax.set_xscale("log")
    if ticks:
        ax.xaxis.set_major_locator(matplotlib.ticker.FixedLocator(ticks))
    else:
        ax.xaxis.set_major_locator(matplotlib.ticker.LogLocator(subs=(1.0, 2.0, 5.0)))
    ax.xaxis.set_major_formatter(matplotlib.ticker.FormatStrFormatter("%.3g"))
    ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())


def plot_leaderboard(results: list[MethodResult], labels: list[str], path: Path, title: str) -> None:
    """Left: accuracy against face size (plain degradations); right: accuracy at the hardest degradation
    (lowest mean over methods) against CPU latency."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    native = max((r.cost.get("native_size", 0) for r in results), default=0) or 100
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.8))
    for r in results:
        pts = sorted(
            (face_side(lbl, native), r.mean_std(lbl)[0])
            for lbl in labels
            if face_side(lbl, native) is not None and r.mean_std(lbl) is not None
        )
        if pts:
            left.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=r.name)
    sides = sorted({x for line in left.get_lines() for x in line.get_xdata()})
    plain_log_axis(left, sides)
    left.set_xlabel(f"face side in pixels (of {native} px)")
    left.set_ylabel("test accuracy (%)")
    left.grid(alpha=0.3, which="both")
    left.legend(fontsize=7)
    means = {lbl: [r.mean_std(lbl)[0] for r in results if r.mean_std(lbl)] for lbl in labels}
    hardest = min(
        (lbl for lbl in labels if means[lbl]), key=lambda lbl: statistics.fmean(means[lbl]), default=None
    )
    if hardest is not None:
        for r in results:
            stats, ms = r.mean_std(hardest), r.cost.get("latency", {}).get("ms")
            if stats and ms:
                right.errorbar(ms, stats[0], yerr=stats[1], marker="o", capsize=3)
                right.annotate(r.name, (ms, stats[0]), textcoords="offset points", xytext=(4, 4), fontsize=8)
        plain_log_axis(right)
        right.set_xlabel("CPU batch-1 latency (ms, log scale)")
        right.set_ylabel(f"accuracy at {hardest} (%)")
        right.grid(alpha=0.3, which="both")
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)

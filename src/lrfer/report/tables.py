"""Gather ``metrics.json`` files into tables (markdown / CSV): rows = runs, columns = degradations."""

from __future__ import annotations

import csv
import json
import math
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from omegaconf import OmegaConf

from lrfer.core.errors import UserError


@dataclass
class RunRow:
    name: str
    path: str
    values: dict[str, float] = field(default_factory=dict)
    extras: dict[str, dict[str, float]] = field(default_factory=dict)
    source: str = "measured"


def degradation_sort_key(label: str) -> tuple[int, float, str]:
    """x-factors ascending, then absolute sizes descending (left = sharpest, right = smallest); a realistic
    variant (``x4+jpeg30``) right after its plain size."""
    base, _, operations = label.partition("+")
    if m := re.fullmatch(r"x(\d+(?:\.\d+)?)", base):
        return (0, float(m.group(1)), operations)
    if m := re.fullmatch(r"(\d+)px", base):
        return (1, -float(m.group(1)), operations)
    return (2, 0.0, label)


def run_name(run_dir: Path, metrics: dict) -> str:
    """``method`` plus the run's command-line overrides (from Hydra's ``.hydra/overrides.yaml``)."""
    name = str(metrics.get("method", run_dir.name))
    overrides_file = run_dir / ".hydra" / "overrides.yaml"
    if overrides_file.exists():
        overrides = [
            o
            for o in OmegaConf.to_container(OmegaConf.load(overrides_file))
            if not o.startswith(("method=", "hydra.", "trainer.device", "paths.", "logger"))
        ]
        if overrides:
            name += " " + " ".join(overrides)
    return name


def _number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def read_run_row(f: Path, split: str = "test", metric: str = "acc") -> RunRow | None:
    """One run's row from its ``metrics.json``; None when it holds no ``split`` results (``{}``).

    A file that is not such a metrics.json (not JSON, not an object, a non-numeric ``metric``) is a
    :class:`UserError` naming it.
    """
    try:
        metrics = json.loads(f.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise UserError(f"{f} is not a readable metrics.json ({' '.join(str(err).split())[:120]})") from None
    if not isinstance(metrics, dict):
        raise UserError(f"{f} is not a metrics.json (it holds a {type(metrics).__name__}, not an object)")
    table = metrics.get(split) or {}
    if not isinstance(table, dict):
        raise UserError(f"{f}: {split} is a {type(table).__name__}, not a table of degradations")
    if not table:
        return None
    row = RunRow(run_name(f.parent, metrics), str(f.parent))
    for label, entry in table.items():
        if not isinstance(entry, dict) or metric not in entry:
            raise UserError(f"{f}: {split}.{label} has no {metric!r}")
        if not _number(entry[metric]):
            raise UserError(f"{f}: {split}.{label}.{metric}={entry[metric]!r} is not a number")
        row.values[label] = float(entry[metric])
        for key, value in entry.items():
            if key not in (metric, "n", "confusion") and _number(value):
                row.extras.setdefault(key, {})[label] = float(value)
    return row


def collect_runs(
    dirs: list[str | Path],
    split: str = "test",
    metric: str = "acc",
    warn: Callable[[str], None] | None = None,
) -> list[RunRow]:
    """Every ``metrics.json`` below the given folders (runs and multiruns), sorted by path.

    ``warn``: a file that is not a usable metrics.json is skipped and ``warn`` receives one line naming it
    (without ``warn`` it is a :class:`UserError`); one without ``split`` results (``{}``) adds no row.
    """
    rows = []
    for d in dirs:
        d = Path(d)
        if not d.exists():
            raise UserError(f"{d} does not exist: give run or multirun folders that hold metrics.json files")
        files = [d] if d.is_file() else sorted(d.rglob("metrics.json"))
        for f in files:
            try:
                row = read_run_row(f, split, metric)
            except UserError as err:
                if warn is None:
                    raise
                warn(f"{err}: skipped")
                continue
            if row is None:
                if warn is not None:
                    warn(f"{f} holds no {split} results: skipped")
                continue
            rows.append(row)
    return rows


def read_paper_csv(path: str | Path) -> list[RunRow]:
    """A paper's table as CSV: first column ``method``, then one column per degradation, values in %."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"paper table {path} does not exist")
    rows = []
    with path.open(newline="") as f:
        try:
            records = list(csv.DictReader(f))
        except (csv.Error, UnicodeDecodeError) as err:
            raise UserError(f"paper table {path} is not a readable CSV ({err})") from None
    for rec in records:
        name = rec.pop("method", None) or rec.pop("row", "?")
        values = {}
        for k, v in rec.items():
            if not (isinstance(k, str) and v not in (None, "", "-") and re.fullmatch(r"x[\d.]+|\d+px", k)):
                continue
            try:
                values[k] = float(v) / 100.0
            except (TypeError, ValueError):
                raise UserError(f"paper table {path}: {name} at {k} is {v!r}, not a number (in %)") from None
        rows.append(RunRow(f"{name} (paper)", str(path), values, source="paper"))
    return rows


def columns_of(rows: list[RunRow]) -> list[str]:
    return sorted({c for r in rows for c in r.values}, key=degradation_sort_key)


def _fmt(v: float | None) -> str:
    return "" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{100 * v:.2f}"


def markdown_table(rows: list[RunRow], columns: list[str] | None = None, extra: str | None = None) -> str:
    """Accuracy (%) per degradation; ``extra`` adds a second line per run for a method metric (rrn_acc)."""
    columns = columns or columns_of(rows)
    lines = ["| run | " + " | ".join(columns) + " |", "|---|" + "---|" * len(columns)]
    for r in rows:
        lines.append(f"| {r.name} | " + " | ".join(_fmt(r.values.get(c)) for c in columns) + " |")
        if extra and extra in r.extras:
            lines.append(f"| ↳ {extra} | " + " | ".join(_fmt(r.extras[extra].get(c)) for c in columns) + " |")
    return "\n".join(lines)


def write_csv(rows: list[RunRow], path: str | Path, columns: list[str] | None = None) -> None:
    columns = columns or columns_of(rows)
    with Path(path).open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["run", "source", "path", *columns])
        for r in rows:
            w.writerow([r.name, r.source, r.path, *[_fmt(r.values.get(c)) for c in columns]])

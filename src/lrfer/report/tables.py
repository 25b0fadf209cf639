"""Gather ``metrics.json`` files into tables (markdown / CSV): rows = runs, columns = degradations."""

from __future__ import annotations

import csv
import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path

from omegaconf import OmegaConf

from lrfer.errors import UserError


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


def collect_runs(dirs: list[str | Path], split: str = "test", metric: str = "acc") -> list[RunRow]:
    """Every ``metrics.json`` below the given folders (runs and multiruns), sorted by path."""
    rows = []
    for d in dirs:
        d = Path(d)
        if not d.exists():
            raise UserError(f"{d} does not exist: give run or multirun folders that hold metrics.json files")
        files = [d] if d.is_file() else sorted(d.rglob("metrics.json"))
        for f in files:
            try:
                metrics = json.loads(f.read_text())
            except (OSError, json.JSONDecodeError) as err:
                raise UserError(f"{f} is not a readable metrics.json ({err})") from None
            table = metrics.get(split, {})
            row = RunRow(run_name(f.parent, metrics), str(f.parent))
            for label, entry in table.items():
                if metric not in entry:
                    raise UserError(f"{f}: {split}.{label} has no {metric!r}")
                row.values[label] = float(entry[metric])
                for key, value in entry.items():
                    if key not in (metric, "n", "confusion") and isinstance(value, (int, float)):
                        row.extras.setdefault(key, {})[label] = float(value)
            rows.append(row)
    return rows


def read_paper_csv(path: str | Path) -> list[RunRow]:
    """A paper's table as CSV: first column ``method``, then one column per degradation, values in %."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"paper table {path} does not exist")
    rows = []
    with path.open(newline="") as f:
        for rec in csv.DictReader(f):
            name = rec.pop("method", None) or rec.pop("row", "?")
            values = {
                k: float(v) / 100.0
                for k, v in rec.items()
                if k and v not in (None, "", "-") and re.fullmatch(r"x[\d.]+|\d+px", k)
            }
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

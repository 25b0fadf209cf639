"""Compare how synthetic faces lose accuracy with resolution against a real dataset's published curve.

The reference is DRGFER's Table 3 on RAF-DB (a ResNet-18 trained at one downsampling factor and tested at
x1..x16; ``experiments/drgfer/table3_rafdb_factors.csv``, the paper's numbers): Wang et al., "Dynamic
resolution guidance for facial expression recognition", arXiv:2404.06365 (2024). The synthetic side is the
same experiment on :mod:`lrfer.data.synthetic` faces at RAF-DB's 100 px source size, run by
``scripts/calibrate_synthetic.py``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from lrfer.core.errors import UserError
from lrfer.report.tables import read_paper_csv

#: The cells the calibration is judged on: (training factor, test factor). Those of the issue that asked for
#: it: the x1-trained model at every factor up to x8, the x8-trained model at x1, x4 and x8.
CALIBRATION_CELLS: tuple[tuple[str, str], ...] = (
    ("x1", "x1"),
    ("x1", "x2"),
    ("x1", "x4"),
    ("x1", "x6"),
    ("x1", "x8"),
    ("x8", "x1"),
    ("x8", "x4"),
    ("x8", "x8"),
)
#: Largest |synthetic - reference| (accuracy points) a calibrated generator may show in any cell.
TOLERANCE_POINTS = 10.0


@dataclass(frozen=True)
class CalibrationCell:
    train: str
    test: str
    synthetic: float  # accuracy in %
    reference: float  # accuracy in %

    @property
    def gap(self) -> float:
        """synthetic - reference, in accuracy points."""
        return self.synthetic - self.reference


def read_reference(path: str | Path) -> dict[str, dict[str, float]]:
    """Rows of a paper's factor table (CSV, first column ``method`` = the training factor) in %:
    ``{"x1": {"x1": 89.24, ...}, "x8": {...}}``."""
    rows = {}
    for row in read_paper_csv(path):
        rows[row.name.removesuffix(" (paper)")] = {k: 100.0 * v for k, v in row.values.items()}
    return rows


def compare(
    synthetic: dict[str, dict[str, float]],
    reference: dict[str, dict[str, float]],
    cells: tuple[tuple[str, str], ...] = CALIBRATION_CELLS,
) -> list[CalibrationCell]:
    """Pair the synthetic accuracies (``{train: {test: %}}``) with the reference ones, cell by cell."""
    out = []
    for train, test in cells:
        if test not in reference.get(train, {}):
            raise UserError(f"the reference table has no cell trained at {train}, tested at {test}")
        if test not in synthetic.get(train, {}):
            raise UserError(
                f"no synthetic result trained at {train}, tested at {test}: was it in degrade.test?"
            )
        out.append(CalibrationCell(train, test, synthetic[train][test], reference[train][test]))
    return out


def largest_gap(cells: list[CalibrationCell]) -> CalibrationCell:
    return max(cells, key=lambda c: abs(c.gap))


def markdown(
    synthetic: dict[str, dict[str, float]],
    reference: dict[str, dict[str, float]],
    tests: list[str],
    label: str,
) -> str:
    """One table: per training factor, the synthetic row, the reference row and their difference."""
    lines = ["| model → tested at | " + " | ".join(tests) + " |", "|---|" + "---|" * len(tests)]
    for train in synthetic:
        syn, ref = synthetic[train], reference.get(train, {})
        lines.append(f"| {label}, trained {train} | " + " | ".join(_cell(syn.get(t)) for t in tests) + " |")
        lines.append(
            f"| RAF-DB (paper), trained {train} | " + " | ".join(_cell(ref.get(t)) for t in tests) + " |"
        )
        gaps = [None if t not in syn or t not in ref else syn[t] - ref[t] for t in tests]
        lines.append(
            f"| difference, trained {train} | " + " | ".join(_cell(g, signed=True) for g in gaps) + " |"
        )
    return "\n".join(lines)


def _cell(value: float | None, signed: bool = False) -> str:
    if value is None:
        return ""
    return f"{value:+.1f}" if signed else f"{value:.1f}"

#!/usr/bin/env python
"""Turn one DRGFER run evaluated with ``method.eval_all_routings=true`` into one table row per routing.

    python experiments/drgfer/split_routings.py RUN_DIR OUT_DIR

The run's ``metrics.json`` holds, per test degradation, ``acc_rrn`` (DRGFER), ``acc_oracle``,
``acc_mean`` (the paper's Mean), ``acc_max`` (Max) and ``acc_<factor>`` (one expert alone: a
single-resolution row of Table 3). This writes ``OUT_DIR/<routing>/metrics.json`` for each, with that
accuracy as ``acc``, so ``scripts/report.py OUT_DIR ...`` lists them as rows beside the other methods.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

NAMES = {"rrn": "DRGFER", "oracle": "DRGFER oracle routing", "mean": "Mean", "max": "Max"}


def split(run_dir: Path, out_dir: Path) -> list[Path]:
    metrics = json.loads((run_dir / "metrics.json").read_text())
    test = metrics["test"]
    names = sorted({k[4:] for row in test.values() for k in row if k.startswith("acc_")})
    if not names:
        raise SystemExit(
            f"{run_dir}/metrics.json has no acc_<routing> entries: train or evaluate the run "
            "with method.eval_all_routings=true"
        )
    written = []
    for name in names:
        rows = {
            label: {"acc": row[f"acc_{name}"], "n": row["n"], "rrn_acc": row.get("rrn_acc")}
            for label, row in test.items()
            if f"acc_{name}" in row
        }
        if name not in NAMES:
            for row in rows.values():
                row.pop("rrn_acc")  # one expert alone: no routing
        out = {
            "method": NAMES.get(name, f"expert {name} alone"),
            "dataset": metrics.get("dataset"),
            "source_run": str(run_dir),
            "test": rows,
        }
        path = out_dir / name / "metrics.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(out, indent=2) + "\n")
        written.append(path)
    return written


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("out_dir", type=Path)
    args = parser.parse_args(argv)
    for path in split(args.run_dir, args.out_dir):
        print(path)


if __name__ == "__main__":
    main()

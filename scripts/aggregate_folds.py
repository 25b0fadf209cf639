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
import json

from lrfer.core.errors import exit_on_user_error
from lrfer.report.folds import aggregate_folds


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

    table, summary, base = aggregate_folds(
        args.dirs, args.out, args.split, args.metric, args.fold_key, tuple(args.merge), args.tag, args.paper
    )
    print(table)
    print(f"\nwrote {base}.md, {base}.csv")
    print(json.dumps(summary))


if __name__ == "__main__":
    main()

#!/usr/bin/env python
"""Gather every metrics.json under the given run / multirun folders into one table.

    python scripts/report.py outputs/ multirun/2026-11-23_10-00-00 [--out report/drgfer]
        [--paper experiments/drgfer/table1_rafdb.csv] [--split test] [--metric acc] [--extra rrn_acc]

Prints a markdown table (rows = runs, columns = degradations, accuracy in %) and writes
<out>.md, <out>.csv and <out>.png (accuracy against degradation). With --paper, the paper's rows
(labelled "(paper)") stand beside the measured ones. A metrics.json or paper table that cannot be read (not
JSON, not numbers) is skipped with a warning naming it; one without results (``{}``) adds no row.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from lrfer.core.errors import UserError, check_folder_can_be_written, exit_on_user_error, writing
from lrfer.report.plots import accuracy_plot
from lrfer.report.tables import collect_runs, columns_of, markdown_table, read_paper_csv, write_csv


def warn(line: str) -> None:
    print(f"warning: {line}", file=sys.stderr, flush=True)


@exit_on_user_error
def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "dirs", nargs="+", help="run or multirun folders (searched recursively; missing ones are skipped)"
    )
    parser.add_argument(
        "--out", default=None, help="output prefix for .md/.csv/.png (default: <first dir>/report)"
    )
    parser.add_argument("--paper", action="append", default=[], help="a paper's table as CSV (repeatable)")
    parser.add_argument("--split", default="test", choices=["test", "val"])
    parser.add_argument("--metric", default="acc", choices=["acc", "balanced_acc"])
    parser.add_argument(
        "--extra", default=None, help="also show a per-degradation method metric, e.g. rrn_acc"
    )
    parser.add_argument("--title", default="")
    args = parser.parse_args(argv)

    dirs = [d for d in args.dirs if Path(d).exists()]
    for missing in sorted(set(args.dirs) - set(dirs)):  # e.g. multirun/ before any sweep has run
        warn(f"{missing} does not exist: skipped")
    base = Path(args.out) if args.out else Path(args.dirs[0]) / "report"
    if base.is_dir():
        raise UserError(f"--out {base} is a folder: give a prefix for the files (e.g. {base / 'report'})")
    check_folder_can_be_written(base.parent, "write the report into")
    rows = collect_runs(dirs, split=args.split, metric=args.metric, warn=warn)
    if not rows:
        raise UserError(f"no metrics.json with results found under {', '.join(args.dirs)}")
    paper_rows = []
    for paper in args.paper:
        try:
            paper_rows += read_paper_csv(paper)
        except UserError as err:  # one bad paper table must not lose the measured report
            warn(f"{err}: skipped")
    columns = columns_of(rows + paper_rows)
    table = markdown_table(paper_rows + rows, columns, extra=args.extra)
    print(table)
    with writing(base.parent, "write the report into"):
        base.parent.mkdir(parents=True, exist_ok=True)
        base.with_suffix(".md").write_text(table + "\n")
        write_csv(paper_rows + rows, base.with_suffix(".csv"), columns)
        accuracy_plot(
            columns, {r.name: r.values for r in paper_rows + rows}, base.with_suffix(".png"), args.title
        )
    print(f"\nwrote {base}.md, {base}.csv, {base}.png")


if __name__ == "__main__":
    main()

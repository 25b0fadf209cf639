"""Re-evaluate a finished run's checkpoint at any list of degradations.

    lrfer-evaluate RUN_DIR [--degrade x1 x3 14px] [--split test] [--checkpoint best] [--out FILE]
                   [-o dataset.root=/data/rafdb ...]

Writes ``RUN_DIR/eval_<split>.json`` (or ``--out``) with the same per-degradation rows as metrics.json
and prints the table on stdout. metrics.json itself is never modified. ``-o`` overrides are parsed as on
Hydra's command line (``-o trainer.eval_batch_size=64`` is an int). Exit status: 0 success, 2 a user error.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from lrfer.core.checkpoint import write_json
from lrfer.core.errors import console_script, exit_on_user_error
from lrfer.engine.run import format_table
from lrfer.tools.retest import evaluate_run


@exit_on_user_error
def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description="Re-evaluate a finished lrfer run at any degradations.")
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--degrade", nargs="+", default=None, help="labels (default: the run's degrade.test)")
    parser.add_argument("--split", default="test", choices=["test", "val"])
    parser.add_argument("--checkpoint", default="best", choices=["best", "last"])
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("-o", "--override", action="append", default=[], help="config override key=value")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    result = evaluate_run(args.run_dir, args.degrade, args.split, args.checkpoint, args.override)
    out = args.out or args.run_dir / f"eval_{args.split}.json"
    write_json(result, out)
    print(format_table(result, args.split))
    print(f"wrote {out}")
    return result


#: The ``lrfer-evaluate`` console script: exit status 0 on success (``main`` returns the result).
cli = console_script(main)

if __name__ == "__main__":
    main()

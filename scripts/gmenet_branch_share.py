#!/usr/bin/env python
"""How much each GME-Net branch contributes to the fused features the classifier sees, per trained run.

    python scripts/gmenet_branch_share.py RUN_DIR [RUN_DIR ...] [--degrade 14px] [--split val]

GME-Net adds its local branch (Mixed-Attention Blocks, where DBAM and the attention distillation act) and its
global branch (Mixed-Channel Blocks) point-wise before the average pool and the classifier (Shi et al., 2023,
Sec. 3.1). Nothing in the paper scales the two, and a Mixed-Channel Block's output is a sum of two
concatenated chains and its input (eq. 4-8): the global branch can come to dominate. For every run (a
method=gmenet run with ``global_branch=true``), the student's best checkpoint is evaluated on ``--split`` at
``--degrade`` and, through forward hooks, the pooled (N, C) features of each branch are kept:

* ``pooled_std``: the standard deviation of the pooled features of the local branch, the global branch and
  their sum, over faces and channels (what varies from face to face is what the classifier can use);
* ``local_share``: the local branch's variance over the sum of both branches' variances;
* ``acc``: the run's accuracy there (the same number ``lrfer-evaluate`` gives).

Validation faces by default: this is a diagnosis, not a result. Prints one JSON line per run; ``--out
FILE`` also writes them to a JSON file with the command, date, machine and versions.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from lrfer.core.checkpoint import write_json
from lrfer.core.errors import UserError, exit_on_user_error
from lrfer.methods.gmenet import GMENetMethod
from lrfer.report.provenance import provenance
from lrfer.tools.retest import evaluate_run


def pooled(t: torch.Tensor) -> torch.Tensor:
    return t.float().mean(dim=(2, 3))


def branch_share(run_dir: Path, labels: list[str], split: str) -> dict:
    """The values the module docstring lists for the run in ``run_dir``."""
    local: list[torch.Tensor] = []
    glob: list[torch.Tensor] = []
    hooks: list = []

    def hook_the_student(method) -> None:
        if not isinstance(method, GMENetMethod):
            raise UserError(f"{run_dir} is not a GME-Net run (method=gmenet)")
        student = method.student
        if student.global_branch is None:
            raise UserError(f"{run_dir} has no global branch (method.network.global_branch=false)")
        hooks.append(
            student.local_blocks[-1].register_forward_hook(lambda m, i, o: local.append(pooled(o[0])))
        )
        hooks.append(student.global_branch.register_forward_hook(lambda m, i, o: glob.append(pooled(o))))

    try:
        result = evaluate_run(run_dir, labels, split, prepare=hook_the_student)
    finally:
        for hook in hooks:
            hook.remove()
    pl, pg = torch.cat(local), torch.cat(glob)
    var_l, var_g = pl.var().item(), pg.var().item()
    return {
        "run": f"{run_dir.parent.name}/{run_dir.name}",
        "split": split,
        "degrade": labels,
        "faces": int(pl.shape[0]),
        "acc": {label: row["acc"] for label, row in result[split].items()},
        "pooled_std": {"local": var_l**0.5, "global": var_g**0.5, "fused": (pl + pg).std().item()},
        "local_share": var_l / (var_l + var_g),
    }


@exit_on_user_error
def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", type=Path)
    parser.add_argument("--degrade", nargs="+", default=["14px"])
    parser.add_argument("--split", default="val", choices=["val", "test"])
    parser.add_argument("--out", type=Path, default=None, help="also write the rows here (JSON)")
    args = parser.parse_args(argv)
    rows = []
    with torch.no_grad():  # not torch.set_grad_enabled(False): main() is also called in-process (the tests)
        for run in args.runs:
            rows.append(branch_share(run, args.degrade, args.split))
            print(json.dumps(rows[-1]), flush=True)
    if args.out is not None:
        write_json({"rows": rows, "provenance": provenance(synthetic=True)}, args.out)
    return rows


if __name__ == "__main__":
    main()

#!/usr/bin/env python
"""Parameters, multiply-accumulates and forward-pass memory of any method, from its config alone.

    python scripts/model_stats.py method=voting method.stem=conv3 method.split_after=1 input_size=48
    python scripts/model_stats.py method=efc input_size=32 [--csv table.csv --row EFC]

``key=value`` arguments are Hydra overrides of the ``train`` config (as for ``train.py``); ``input_size=<px>``
sets ``dataset.image_size`` and ``degrade.input_size``. No dataset is read. The last line printed is JSON:

* ``params``: parameters of the method (every network it holds, trainable or not);
  ``params_with_bn_stats`` adds the BatchNorm running means/variances (what Keras' "Total params" counts);
* ``macs``: multiply-accumulates per image, ``method.predict`` at batch 1 in eval mode, counted with
  ``torch.utils.flop_counter.FlopCounterMode`` (MACs = FLOPs / 2; convolutions and matrix products only);
* ``saved_mb``: memory autograd keeps for backward per image in training mode, in MiB (2**20 bytes): the
  unique tensor storages saved by ``method.predict`` in train mode under
  ``torch.autograd.graph.saved_tensors_hooks``, excluding the parameters/buffers and the input batch, divided
  by the batch size (``--batch``, default 2 so that BatchNorm in train mode accepts 1x1 maps). This is the
  voting paper's "forward pass size" (the growth of ``torch.cuda.memory_allocated()`` when a batch goes
  through the network, per image): it reproduces its Table 2 within 0.2 %;
* ``input``: the per-image input shape ``[C, H, W]``.

``--device meta`` counts from tensor shapes alone (instant; the same numbers for methods whose ``predict``
has no data-dependent control flow); the default ``cpu`` runs the arithmetic.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from lrfer.config import compose_config
from lrfer.core.errors import exit_on_user_error
from lrfer.tools.model_stats import append_csv, model_stats


@exit_on_user_error
def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("overrides", nargs="*", help="Hydra overrides (method=..., input_size=<px>, ...)")
    parser.add_argument("--batch", type=int, default=2, help="batch for the saved-memory measure (per image)")
    parser.add_argument("--device", default="cpu", choices=["cpu", "meta"], help="meta: shapes only, instant")
    parser.add_argument("--csv", type=Path, default=None, help="append the result as a row of this CSV")
    parser.add_argument("--row", default=None, help="row name for --csv (default: the overrides)")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    cfg = compose_config(args.overrides)
    stats = model_stats(cfg, args.batch, args.device)
    print(
        f"{stats['method']} {stats['input']}: {stats['params']:,} parameters "
        f"({stats['params_with_bn_stats']:,} with BN statistics), {stats['gmacs']} GMACs, "
        f"{stats['saved_mb']} MiB saved for backward per image"
    )
    if args.csv is not None:
        append_csv(args.csv, args.row or " ".join(args.overrides), stats)
    print(json.dumps(stats))


if __name__ == "__main__":
    main()

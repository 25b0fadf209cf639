#!/usr/bin/env python
"""Export a trained run's ``method.predict`` to TorchScript (or ONNX) and check it against the original.

    python scripts/export.py RUN_DIR [--format torchscript|onnx] [--checkpoint best|last] [--out FILE]
                             [--atol 1e-4] [-o key=value ...]

The method is rebuilt from ``RUN_DIR/.hydra/config.yaml`` (``-o`` overrides it), its checkpoint is loaded,
and ``predict(images)`` (eval mode, the run's network input size) is traced; TorchScript is frozen. The
exported file (default ``RUN_DIR/export/model.pt`` or ``model.onnx``) is loaded back and run on a fresh
random batch; the maximum absolute difference from ``method.predict`` is printed and the command fails
(exit 1) above ``--atol`` (>= 0); the file is written beside its target and renamed onto it only when it
passes, so a failed export never replaces a good one. ``-o`` keys must exist in the run's config
(``+key=value`` adds one). ONNX needs the ``onnx`` package (and ``onnxruntime`` for the check):
``pip install -e .[export]``. The last line printed is JSON.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import warnings
from pathlib import Path

import torch

from lrfer.core.errors import exit_on_user_error
from lrfer.tools.export import export_run

#: tracing turns the input size into constants on purpose: the exported model has a fixed input size
warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)


@exit_on_user_error
def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--format", default="torchscript", choices=["torchscript", "onnx"])
    parser.add_argument("--checkpoint", default="best", choices=["best", "last"])
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--atol", type=float, default=1e-4, help="largest allowed max |difference|")
    parser.add_argument("-o", "--override", action="append", default=[], help="config override key=value")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    result = export_run(args.run_dir, args.format, args.checkpoint, args.out, args.atol, args.override)
    diff = result["max_abs_diff"]
    done = "wrote" if result["ok"] else "did not write"
    checked = "" if diff is None else f"; max abs diff {diff:.3g} (atol {args.atol})"
    print(f"{done} {result['path']}{checked}")
    print(json.dumps(result))
    if not result["ok"]:
        print(
            f"error: the exported model differs from the original by {diff:.3g} > {args.atol}: "
            f"not written ({result['path']} is unchanged)",
            file=sys.stderr,
        )
        sys.exit(1)


if __name__ == "__main__":
    main()

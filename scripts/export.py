#!/usr/bin/env python
"""Export a trained run's ``method.predict`` to TorchScript (or ONNX) and check it against the original.

    python scripts/export.py RUN_DIR [--format torchscript|onnx] [--checkpoint best|last] [--out FILE]
                             [--atol 1e-4] [-o key=value ...]

The method is rebuilt from ``RUN_DIR/.hydra/config.yaml`` (``-o`` overrides it), its checkpoint is loaded,
and ``predict(images)`` (eval mode, the run's network input size) is traced; TorchScript is frozen. The
exported file (default ``RUN_DIR/export/model.pt`` or ``model.onnx``) is loaded back and run on a fresh
random batch; the maximum absolute difference from ``method.predict`` is printed and the command fails
(exit 1) above ``--atol``. ONNX needs the ``onnx`` package (and ``onnxruntime`` for the check):
``pip install -e .[export]``. The last line printed is JSON.
"""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from pathlib import Path

import torch
from torch import nn

from lrfer.engine.loading import load_method_weights, load_run_config
from lrfer.engine.run import build_method, method_context
from lrfer.errors import UserError, exit_on_user_error
from lrfer.methods.base import Method


class Predictor(nn.Module):
    """``method.predict`` as a module's forward (images -> logits), what is traced."""

    def __init__(self, method: Method) -> None:
        super().__init__()
        self.method = method

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.method.predict(images)


def load_predictor(run_dir: Path, checkpoint: str, overrides: list[str]) -> tuple[Predictor, list[int]]:
    """The run's method with its weights, wrapped for tracing, and its per-image input shape."""
    cfg = load_run_config(run_dir, overrides)
    ctx = method_context(cfg)
    method = build_method(cfg, ctx)
    load_method_weights(method, run_dir, checkpoint)
    return Predictor(method).eval(), [ctx.in_channels, ctx.input_size, ctx.input_size]


def export_torchscript(model: Predictor, example: torch.Tensor, out: Path) -> callable:
    with torch.no_grad():
        traced = torch.jit.freeze(torch.jit.trace(model, example, check_trace=False))
    out.parent.mkdir(parents=True, exist_ok=True)
    torch.jit.save(traced, str(out))
    loaded = torch.jit.load(str(out))
    return lambda x: loaded(x)


def export_onnx(model: Predictor, example: torch.Tensor, out: Path) -> callable | None:
    try:
        import onnx  # noqa: F401  (the TorchScript-based exporter needs it)
    except ImportError:
        raise UserError("ONNX export needs the onnx package: pip install onnx onnxruntime") from None
    out.parent.mkdir(parents=True, exist_ok=True)
    torch.onnx.export(
        model,
        (example,),
        str(out),
        input_names=["images"],
        output_names=["logits"],
        dynamic_axes={"images": {0: "batch"}, "logits": {0: "batch"}},
        dynamo=False,
    )
    try:
        import onnxruntime as ort
    except ImportError:
        print("onnxruntime is not installed: the exported model is not checked")
        return None
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    return lambda x: torch.from_numpy(session.run(None, {"images": x.numpy()})[0])


def export_run(
    run_dir: Path,
    fmt: str = "torchscript",
    checkpoint: str = "best",
    out: Path | None = None,
    atol: float = 1e-4,
    overrides: list[str] | None = None,
    batch: int = 4,
) -> dict:
    """Export, reload, compare; returns ``{"path", "format", "max_abs_diff", "ok", ...}``."""
    if fmt not in ("torchscript", "onnx"):
        raise UserError(f"unknown --format {fmt!r}: choose torchscript or onnx")
    model, shape = load_predictor(run_dir, checkpoint, overrides or [])
    out = out or run_dir / "export" / ("model.pt" if fmt == "torchscript" else "model.onnx")
    gen = torch.Generator().manual_seed(0)
    example = torch.randn(batch, *shape, generator=gen)
    runner = (export_torchscript if fmt == "torchscript" else export_onnx)(model, example, out)
    check = torch.randn(batch, *shape, generator=gen)
    result = {"path": str(out), "format": fmt, "checkpoint": checkpoint, "input": shape, "atol": atol}
    if runner is None:
        return {**result, "max_abs_diff": None, "ok": True}
    with torch.no_grad():
        expected = model(check)
        got = runner(check)
    diff = float((expected - got).abs().max())
    return {**result, "max_abs_diff": diff, "ok": diff <= atol}


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
    result = export_run(args.run_dir, args.format, args.checkpoint, args.out, args.atol, args.override)
    diff = result["max_abs_diff"]
    print(
        f"wrote {result['path']}" + ("" if diff is None else f"; max abs diff {diff:.3g} (atol {args.atol})")
    )
    print(json.dumps(result))
    if not result["ok"]:
        print(
            f"error: the exported model differs from the original by {diff:.3g} > {args.atol}",
            file=sys.stderr,
        )
        sys.exit(1)


if __name__ == "__main__":
    main()

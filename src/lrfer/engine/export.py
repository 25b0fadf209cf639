"""Export a trained run's ``method.predict`` to TorchScript or ONNX, reload it and compare with the original.

The command-line layer is ``scripts/export.py``; the formats and the check are described there.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import torch

from lrfer.engine.predictor import Predictor, load_predictor
from lrfer.errors import UserError

log = logging.getLogger(__name__)

#: a callable that runs an exported model on a batch of images
Runner = Callable[[torch.Tensor], torch.Tensor]


def export_torchscript(model: Predictor, example: torch.Tensor, out: Path) -> Runner:
    with torch.no_grad():
        traced = torch.jit.freeze(torch.jit.trace(model, example, check_trace=False))
    out.parent.mkdir(parents=True, exist_ok=True)
    torch.jit.save(traced, str(out))
    loaded = torch.jit.load(str(out))
    return lambda x: loaded(x)


def export_onnx(model: Predictor, example: torch.Tensor, out: Path) -> Runner | None:
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
        log.warning("onnxruntime is not installed: the exported model is not checked")
        return None
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    return lambda x: torch.from_numpy(session.run(None, {"images": x.numpy()})[0])


def export_run(
    run_dir: str | Path,
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
    run_dir = Path(run_dir)
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

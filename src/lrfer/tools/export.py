"""Export a trained run's ``method.predict`` to TorchScript or ONNX, reload it and compare with the original.

The command-line layer is ``scripts/export.py``; the formats and the check are described there.
"""

from __future__ import annotations

import logging
import math
import os
import secrets
from collections.abc import Callable
from pathlib import Path

import torch

from lrfer.core.errors import UserError, check_folder_can_be_written, make_output_folder, writing
from lrfer.tools.predictor import Predictor, load_predictor

log = logging.getLogger(__name__)

#: a callable that runs an exported model on a batch of images
Runner = Callable[[torch.Tensor], torch.Tensor]


def export_torchscript(model: Predictor, example: torch.Tensor, out: Path) -> Runner:
    with torch.no_grad():
        traced = torch.jit.freeze(torch.jit.trace(model, example, check_trace=False))
    torch.jit.save(traced, str(out))
    loaded = torch.jit.load(str(out))
    return lambda x: loaded(x)


def export_onnx(model: Predictor, example: torch.Tensor, out: Path) -> Runner | None:
    try:
        import onnx  # noqa: F401  (the TorchScript-based exporter needs it)
    except ImportError:
        raise UserError("ONNX export needs the onnx package: pip install onnx onnxruntime") from None
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
    """Export, reload, compare; returns ``{"path", "format", "max_abs_diff", "ok", ...}``.

    The model is exported to a temporary file beside ``out`` and renamed onto ``out`` only when it passes
    the check: an export that fails it (``ok`` false) leaves a previous ``out`` as it was.
    """
    if fmt not in ("torchscript", "onnx"):
        raise UserError(f"unknown --format {fmt!r}: choose torchscript or onnx")
    if not (math.isfinite(atol) and atol >= 0):
        raise UserError(f"--atol must be a number >= 0 (the largest allowed max |difference|), got {atol}")
    run_dir = Path(run_dir)
    out = Path(out or run_dir / "export" / ("model.pt" if fmt == "torchscript" else "model.onnx"))
    if out.is_dir():
        raise UserError(f"--out {out} is a folder: give the file to write")
    check_folder_can_be_written(out.parent, "write the export into")
    model, shape = load_predictor(run_dir, checkpoint, overrides or [])
    gen = torch.Generator().manual_seed(0)
    example = torch.randn(batch, *shape, generator=gen)
    make_output_folder(out.parent)
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}-{secrets.token_hex(4)}{out.suffix}")
    try:
        with writing(out):
            runner = (export_torchscript if fmt == "torchscript" else export_onnx)(model, example, tmp)
        check = torch.randn(batch, *shape, generator=gen)
        result = {"path": str(out), "format": fmt, "checkpoint": checkpoint, "input": shape, "atol": atol}
        if runner is None:
            ok, diff = True, None
        else:
            with torch.no_grad():
                expected = model(check)
                got = runner(check)
            diff = float((expected - got).abs().max())
            ok = diff <= atol
        if ok:
            with writing(out):
                os.replace(tmp, out)
        return {**result, "max_abs_diff": diff, "ok": ok}
    finally:
        tmp.unlink(missing_ok=True)

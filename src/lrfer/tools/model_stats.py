"""Parameters, multiply-accumulates and forward-pass memory of a method, from its config alone.

What ``scripts/model_stats.py`` prints (see its docstring for the meaning of every field), as functions that
scripts and tests import.
"""

from __future__ import annotations

import csv
from pathlib import Path

import torch
from omegaconf import DictConfig
from torch.utils.flop_counter import FlopCounterMode

from lrfer.core.errors import UserError
from lrfer.engine.run import build_method, method_context
from lrfer.methods.base import Method
from lrfer.tools.latency import cpu_latency_ms, cpu_model
from lrfer.tools.predictor import build_predictor

MIB = 2**20


def count_params(method: torch.nn.Module) -> tuple[int, int]:
    """(parameters, parameters + BatchNorm running statistics)."""
    params = sum(p.numel() for p in method.parameters())
    stats = sum(
        b.numel() for name, b in method.named_buffers() if name.rsplit(".", 1)[-1].startswith("running_")
    )
    return params, params + stats


def count_macs(method: Method, images: torch.Tensor, factor: torch.Tensor) -> int:
    """Multiply-accumulates of ``method.predict`` on ``images`` in eval mode (FLOPs / 2)."""
    method.eval()
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        method.predict(images, factor=factor)
    return counter.get_total_flops() // 2


def saved_bytes(method: Method, images: torch.Tensor, factor: torch.Tensor) -> int:
    """Bytes of the storages autograd saves in train-mode ``method.predict``, less weights and input."""
    method.train()
    # storages are told apart by their StorageImpl (shared by views; also on the meta device, where every
    # data pointer is 0); the saved tensors stay alive until the sum, so no address is reused meanwhile
    exclude = {t.untyped_storage()._cdata for t in [*method.parameters(), *method.buffers(), images]}
    seen: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        if storage._cdata not in exclude:
            seen[storage._cdata] = storage.nbytes()
        return t

    with torch.enable_grad(), torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = method.predict(images, factor=factor)
    del out
    return sum(seen.values())


def model_stats(cfg: DictConfig, batch: int = 2, device: str = "cpu") -> dict:
    """The statistics of the method ``cfg`` describes (see the module docstring).

    ``device="meta"`` counts from shapes alone (no arithmetic, instant even for large networks); it needs a
    method whose ``predict`` has no data-dependent control flow. ``cpu`` always works.
    """
    if batch < 1:
        raise UserError("--batch must be at least 1")
    if device not in ("cpu", "meta"):
        raise UserError(f"--device must be cpu or meta, got {device!r}")
    if device == "cpu":
        return _stats(cfg, batch)
    try:
        with torch.device("meta"):
            return _stats(cfg, batch)
    except UserError:
        raise
    except Exception as err:  # an op without a shapes-only kernel, a data-dependent step, ...
        cause = err.__cause__ or err  # Hydra wraps a constructor's error
        first = str(cause).strip().splitlines()[0] if str(cause).strip() else type(cause).__name__
        raise UserError(
            f"--device meta cannot count method={cfg.method.name} from shapes alone ({first[:160]}): "
            "use --device cpu"
        ) from None


def _stats(cfg: DictConfig, batch: int) -> dict:
    ctx = method_context(cfg)
    torch.manual_seed(int(cfg.seed))
    method = build_method(cfg, ctx)
    size = ctx.input_size
    degs = ctx.train_degradations
    factor_value = degs[0].effective_factor(ctx.native_size) if degs else 1.0
    one = torch.randn(1, ctx.in_channels, size, size)
    params, with_stats = count_params(method)
    macs = count_macs(method, one, torch.full((1,), float(factor_value)))
    many = torch.randn(batch, ctx.in_channels, size, size)
    saved = saved_bytes(method, many, torch.full((batch,), float(factor_value)))
    return {
        "method": cfg.method.name,
        "params": params,
        "params_with_bn_stats": with_stats,
        "macs": int(macs),
        "gmacs": round(macs / 1e9, 4),
        "gflops": round(2 * macs / 1e9, 4),
        "saved_mb": round(saved / batch / MIB, 3),
        "input": [ctx.in_channels, size, size],
    }


def append_csv(path: Path, row_name: str, stats: dict) -> None:
    """Append one row (``name`` + every statistic) to a CSV file, writing its header when new."""
    fields = ["name", "method", "input", "params", "params_with_bn_stats", "macs", "gmacs", "gflops"]
    fields.append("saved_mb")
    path.parent.mkdir(parents=True, exist_ok=True)
    new = not path.exists()
    with path.open("a", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        if new:
            writer.writeheader()
        writer.writerow({**stats, "name": row_name, "input": "x".join(map(str, stats["input"]))})


def method_cost(cfg: DictConfig, latency: dict) -> dict:
    """What a method costs at its input: parameters, GMACs and CPU batch-1 latency (``latency`` holds
    :func:`~lrfer.tools.latency.cpu_latency_ms`'s threads / warmup / repeats / iters). Freshly
    initialised weights: the cost does not depend on them."""
    stats = model_stats(cfg, device="cpu")
    torch.manual_seed(0)
    predictor, shape = build_predictor(cfg)
    return {
        "params": stats["params"],
        "gmacs": stats["gmacs"],
        "input": stats["input"],
        "native_size": int(cfg.dataset.image_size),
        "latency": cpu_latency_ms(predictor, shape, **latency),
        "cpu": cpu_model(),
        "torch": torch.__version__,
    }

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
import csv
import json
from pathlib import Path

import torch
from hydra import compose, initialize_config_dir
from torch.utils.flop_counter import FlopCounterMode

from lrfer.cli import CONFIG_DIR
from lrfer.config import register_schemas
from lrfer.engine.run import build_method, method_context
from lrfer.errors import UserError, exit_on_user_error
from lrfer.methods.base import Method

MIB = 2**20


def compose_config(overrides: list[str]):
    """The composed ``train`` config; ``input_size=<px>`` becomes dataset.image_size + degrade.input_size."""
    items = []
    for item in overrides:
        if item.startswith("input_size="):
            size = item.split("=", 1)[1]
            items += [f"dataset.image_size={size}", f"degrade.input_size={size}"]
        else:
            items.append(item)
    register_schemas()
    with initialize_config_dir(version_base="1.3", config_dir=str(CONFIG_DIR)):
        return compose("train", overrides=items)


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


def model_stats(cfg, batch: int = 2, device: str = "cpu") -> dict:
    """The statistics of the method ``cfg`` describes (see the module docstring).

    ``device="meta"`` counts from shapes alone (no arithmetic, instant even for large networks); it needs a
    method whose ``predict`` has no data-dependent control flow. ``cpu`` always works.
    """
    if batch < 1:
        raise UserError("--batch must be at least 1")
    if device not in ("cpu", "meta"):
        raise UserError(f"--device must be cpu or meta, got {device!r}")
    with torch.device(device):
        return _stats(cfg, batch)


def _stats(cfg, batch: int) -> dict:
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

#!/usr/bin/env python
"""Training throughput through the real Trainer loop: lrfer's batches (data on the device, and on the host)
vs the model-only limit vs a conventional PIL + DataLoader pipeline, and the trainer's optimisations.

    python scripts/bench_train.py [--device auto] [--sizes 100 224] [--methods baseline efc]
                                  [--batch-size 32] [--n-train 4096] [--steps 8] [--repeats 3]
                                  [--optimizations] [--no-conventional] [--workers 4]

Every loop is ``Trainer.train_one_epoch`` itself (logging off, progress bars off): batch assembly, the
forward/backward/optimiser step of every optimisation step, the on-device loss sums and finite check, and
the epoch's single read at its end. A timed run is K = ``--steps`` steps with the device synchronised only
before the first and after the last, so the host may run ahead of the GPU as it does in training. Loops, per
(method, input size):

  (a) ``trainer``: ``dataset.on_device=true`` — uint8 cache on the device -> MATLAB-bicubic views (x1, x2, x4
      mixed per sample) -> resize back -> batched augmentation -> step;
  (b) ``host``: ``dataset.on_device=false`` — the images stay on the host; the prefetching thread gathers the
      next batches into pinned buffers and copies them without blocking;
  (c) ``model_only``: the same Trainer stepping on one pre-made batch already on the device;
  (d) ``conventional``: PNG files decoded by PIL per sample in a torch DataLoader with persistent workers,
      PIL bicubic down/up-sampling, random flip and normalisation per sample (what public FER repositories
      do), fed to the same Trainer loop.

The training split has ``--n-train`` 100 px faces (4096 = 123 MB of uint8 images plus their views: more than
a CPU's last-level cache or a GPU's L2, so batches are gathered from memory, not from cache). Every loop
first runs one untimed warm-up of K steps (views, allocator, cuDNN autotuning, torch.compile); the
``--repeats`` timed rounds are interleaved across loops and images/s = batch * K / median round time.

``--optimizations`` times the trainer loop (a) again with each optimisation of the trainer and reports
its speed relative to fp32 eager: bf16 autocast (``trainer.precision=bf16``), channels_last
(``trainer.channels_last=true``), ``trainer.compile=true``, and all three together; the compile time
(the warm-up minus a timed run) is reported separately.

``--epoch`` measures whole epochs instead of K steps: ``Trainer.fit`` for ``--epochs`` epochs of the
``--n-train`` faces with validation, TensorBoard logging and checkpoints on (``last.pt`` every epoch,
``best.pt`` when validation improves, written by the background writer), and splits each epoch's time into
training steps, validation and the training thread's checkpoint share; the first epoch (warm-up) is not
counted. The last stdout line is JSON.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from hydra import compose, initialize_config_dir
from PIL import Image

from lrfer.cli import CONFIG_DIR
from lrfer.config import register_schemas
from lrfer.core.compat import torchvision
from lrfer.engine.resolve import RunSpec, resolve, resolve_device
from lrfer.engine.run import build_method, build_parts, method_context
from lrfer.engine.tblog import RunLogger
from lrfer.engine.trainer import Trainer
from lrfer.methods.base import Stage
from lrfer.report.provenance import provenance
from lrfer.tools.latency import cpu_model

DEGRADATIONS = ["x1", "x2", "x4"]
NATIVE = 100
METHOD_OVERRIDES = {
    "baseline": [],
    "efc": ["method=efc"],
    "voting": ["method=voting", "method.stem=conv3", "method.split_after=2"],
}
OPTIMISATIONS = {
    "bf16": ["trainer.precision=bf16"],
    "channels_last": ["trainer.channels_last='true'"],
    "compile": ["trainer.compile=true"],
    "bf16+channels_last+compile": [
        "trainer.precision=bf16",
        "trainer.channels_last='true'",
        "trainer.compile=true",
    ],
}


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def compose_cfg(method: str, size: int, args, cache: str, extra=()):
    overrides = [
        *METHOD_OVERRIDES[method],
        f"dataset.num_train={args.n_train}",
        f"dataset.num_val={args.batch_size}",
        f"dataset.num_test={args.batch_size}",
        f"dataset.image_size={NATIVE}",
        f"degrade.input_size={size}",
        f"degrade.train=[{','.join(DEGRADATIONS)}]",
        f"trainer.batch_size={args.batch_size}",
        f"trainer.device={args.device}",
        "trainer.progress=off",
        "logger=none",
        f"paths.cache_dir={cache}",
        "augment=default",
        *extra,
    ]
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        return compose("train", overrides=overrides)


class Loop:
    """One Trainer and a source of batches; :meth:`run` times K steps of ``Trainer.train_one_epoch``."""

    def __init__(self, spec: RunSpec, parts, steps: int, batches=None, method=None) -> None:
        self.parts, self.steps = parts, steps
        self.dm = parts.datamodule
        self.device = parts.device
        self.trainer = Trainer(spec, method if method is not None else parts.method, self.dm)
        self.memory_format = self.dm.memory_format  # the trainer set it; loops sharing data restore it
        self.stage = self.trainer.prepare_stage(0, Stage("bench", epochs=1, train_degrade=DEGRADATIONS))
        self.batches = batches  # None: the data module's own (a fresh epoch each run)
        self.epoch = 0

    def run(self) -> float:
        """Seconds for K steps, the device synchronised only before and after them."""
        self.dm.memory_format = self.memory_format
        source = (
            self.batches() if self.batches is not None else self.trainer.epoch_batches(self.stage, self.epoch)
        )
        first_steps = (b for _, b in zip(range(self.steps), source))
        sync(self.device)
        t0 = time.perf_counter()
        self.trainer.train_one_epoch(self.stage, self.epoch, batches=first_steps)
        sync(self.device)
        self.epoch += 1
        return time.perf_counter() - t0


def interleaved(loops: dict[str, Loop], repeats: int) -> tuple[dict[str, float], dict[str, float]]:
    """(median seconds per K steps, warm-up seconds) of every loop, rounds interleaved after a warm-up."""
    warmup = {name: loop.run() for name, loop in loops.items()}
    times: dict[str, list[float]] = {k: [] for k in loops}
    for _ in range(repeats):
        for name, loop in loops.items():
            times[name].append(loop.run())
    return {k: statistics.median(v) for k, v in times.items()}, warmup


class PngFaces(torch.utils.data.Dataset):
    """The conventional per-sample pipeline: decode, random factor down + bicubic up, flip, normalise."""

    def __init__(self, folder: Path, labels: torch.Tensor, size: int) -> None:
        self.files = sorted(folder.glob("*.png"))
        self.labels = labels
        self.size = size
        tv = torchvision.transforms
        self.to_tensor = tv.Compose(
            [tv.RandomHorizontalFlip(), tv.ToTensor(), tv.Normalize([0.5] * 3, [0.5] * 3)]
        )

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int):
        with Image.open(self.files[i]) as im:
            img = im.convert("RGB")
        factor = [1, 2, 4][np.random.randint(3)]
        if factor > 1:
            img = img.resize((NATIVE // factor, NATIVE // factor), Image.BICUBIC)
        img = img.resize((self.size, self.size), Image.BICUBIC)
        return self.to_tensor(img), int(self.labels[i])


def conventional_batches(parts, size: int, batch: int, workers: int, folder: Path):
    """A callable giving an endless stream of DataLoader batches (persistent workers, steady state)."""
    split = parts.datamodule.splits["train"]
    if not folder.exists():
        folder.mkdir(parents=True)
        images = split.images.cpu()
        for i in range(len(split)):
            Image.fromarray(images[i].permute(1, 2, 0).numpy()).save(folder / f"{i:06d}.png")
    device = parts.device
    loader = torch.utils.data.DataLoader(
        PngFaces(folder, split.labels.cpu(), size),
        batch_size=batch,
        shuffle=True,
        num_workers=workers,
        drop_last=True,
        pin_memory=device.type == "cuda",
        persistent_workers=workers > 0,
    )
    state = {"it": None}

    def batches():
        while True:
            if state["it"] is None:
                state["it"] = iter(loader)
            for images, labels in state["it"]:
                yield {
                    "image": images.to(device, non_blocking=True),
                    "label": labels.to(device, non_blocking=True),
                    "factor": torch.ones(len(labels), device=device),
                }
            state["it"] = None

    return batches, loader


def bench(method: str, size: int, args, tmp: Path) -> dict:
    cache = str(tmp / "cache")
    cfg = compose_cfg(method, size, args, cache, ["dataset.on_device='true'"])
    parts = build_parts(cfg)
    host_cfg = compose_cfg(method, size, args, cache, ["dataset.on_device='false'"])
    host_parts = build_parts(host_cfg)
    steps, batch = args.steps, args.batch_size
    loops = {"trainer": Loop(parts.spec, parts, steps)}
    fixed = next(iter(loops["trainer"].trainer.epoch_batches(loops["trainer"].stage, 0)))
    loops["model_only"] = Loop(parts.spec, parts, steps, batches=lambda: (dict(fixed) for _ in range(steps)))
    loops["host"] = Loop(host_parts.spec, host_parts, steps)
    loader = None
    if args.conventional:
        stream, loader = conventional_batches(parts, size, batch, args.workers, tmp / f"png{NATIVE}")
        loops["conventional"] = Loop(parts.spec, parts, steps, batches=stream)
    seconds, _ = interleaved(loops, args.repeats)
    speed = {k: round(batch * steps / v, 2) for k, v in seconds.items()}
    row = {
        "method": method,
        "input_size": size,
        "batch_size": batch,
        "n_train": args.n_train,
        "trainer_imgs_per_s": speed["trainer"],
        "host_imgs_per_s": speed["host"],
        "model_only_imgs_per_s": speed["model_only"],
        "trainer_vs_model_only": round(speed["trainer"] / speed["model_only"], 3),
        "host_vs_trainer": round(speed["host"] / speed["trainer"], 3),
        "precision": str(loops["trainer"].trainer.amp_dtype or "fp32"),
        "channels_last": loops["trainer"].trainer.channels_last,
        "host_prefetch": host_parts.datamodule.prefetch,
        "host_pinned": host_parts.datamodule.pin,
    }
    if args.conventional:
        row["conventional_imgs_per_s"] = speed["conventional"]
        row["trainer_vs_conventional"] = round(speed["trainer"] / speed["conventional"], 3)
        del loader
    if args.optimizations:
        print(json.dumps(row), flush=True)  # the loops' figures, before the (long) optimisation runs
        row["optimizations"] = optimisation_ratios(method, size, args, cache, parts)
    return row


def epoch_bench(method: str, size: int, args, tmp: Path) -> dict:
    """Median seconds of an epoch of ``Trainer.fit`` with validation, logging and checkpoints on, and
    the parts of it: training steps, validation, the training thread's share of the checkpoints."""
    run = tmp / f"run-{method}-{size}"
    cfg = compose_cfg(
        method,
        size,
        args,
        str(tmp / "cache"),
        [f"trainer.max_epochs={args.epochs}", f"method.epochs={args.epochs}", "trainer.checkpoint_every=1"],
    )
    spec = resolve(cfg, run)
    parts = build_parts(spec)
    logger = RunLogger(run, enabled=True)
    parts_s: dict[str, list[float]] = {"train": [], "val": [], "checkpoint": []}

    @contextlib.contextmanager
    def timed(phase: str):
        sync(parts.device)
        t0 = time.perf_counter()
        yield
        sync(parts.device)
        parts_s[phase].append(time.perf_counter() - t0)

    trainer = Trainer(spec, parts.method, parts.datamodule, logger=logger, phase_timer=timed)
    t0 = time.perf_counter()
    trainer.fit()
    total = time.perf_counter() - t0
    logger.close()
    n = len(parts_s["train"])
    epochs = [sum(parts_s[k][i] for k in parts_s if i < len(parts_s[k])) for i in range(n)]
    steady = slice(1, None) if n > 1 else slice(None)

    def med(values):
        return round(statistics.median(values[steady]), 4)

    epoch_s = med(epochs)
    return {
        "method": method,
        "input_size": size,
        "batch_size": args.batch_size,
        "n_train": args.n_train,
        "epochs": n,
        "fit_s": round(total, 2),
        "epoch_s": epoch_s,
        "train_steps_s": med(parts_s["train"]),
        "val_s": med(parts_s["val"]),
        "checkpoint_s": med(parts_s["checkpoint"]),
        "checkpoint_share_of_epoch": round(med(parts_s["checkpoint"]) / epoch_s, 4),
        "epoch_imgs_per_s": round(args.n_train / epoch_s, 2),
        "checkpoint_mb": round((run / "checkpoints" / "last.pt").stat().st_size / 2**20, 2),
    }


def optimisation_ratios(method: str, size: int, args, cache: str, parts) -> dict:
    """Speed of the trainer loop with each optimisation relative to fp32 eager, same data, same machine."""
    base = ["dataset.on_device='true'", "trainer.precision=fp32", "trainer.channels_last='false'"]
    loops, cfgs = {}, {}
    try:
        for name, extra in {"fp32": [], **OPTIMISATIONS}.items():
            cfg = compose_cfg(method, size, args, cache, [*base, *extra])
            torch.manual_seed(cfg.seed)
            fresh = build_method(cfg, method_context(cfg, in_channels=parts.datamodule.channels))
            cfgs[name] = cfg
            loops[name] = Loop(resolve(cfg), parts, args.steps, method=fresh)
        seconds, warmup = interleaved(loops, args.repeats)
    except Exception as err:  # no compiler on the machine: report, do not fail the benchmark
        return {"error": f"{type(err).__name__}: {str(err).splitlines()[0][:200]}"}
    out = {f"{k}_vs_fp32": round(seconds["fp32"] / v, 3) for k, v in seconds.items() if k != "fp32"}
    out["fp32_imgs_per_s"] = round(args.batch_size * args.steps / seconds["fp32"], 2)
    for name in loops:
        if cfgs[name].trainer.compile:
            out[f"{name}_compile_s"] = round(warmup[name] - seconds[name], 1)
    if parts.device.type != "cuda":
        out["note"] = "bf16 on a CPU without AMX/AVX512-BF16 is emulated"
    return out


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="auto")
    parser.add_argument("--sizes", type=int, nargs="+", default=[100, 224])
    parser.add_argument("--methods", nargs="+", default=["baseline", "efc"], choices=sorted(METHOD_OVERRIDES))
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--n-train", type=int, default=4096)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--workers", type=int, default=min(4, os.cpu_count() or 1))
    parser.add_argument("--optimizations", action="store_true")
    parser.add_argument("--no-conventional", dest="conventional", action="store_false")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument(
        "--epoch", action="store_true", help="time whole epochs (validation, logging, checkpoints)"
    )
    parser.add_argument(
        "--epochs", type=int, default=3, help="--epoch: epochs per run (the first is warm-up)"
    )
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    register_schemas()
    results = []
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        for method in args.methods:
            if not (CONFIG_DIR / "method" / f"{method}.yaml").exists():
                print(json.dumps({"method": method, "skipped": f"no configs/method/{method}.yaml"}))
                continue
            for size in args.sizes:
                row = (epoch_bench if args.epoch else bench)(method, size, args, Path(tmp))
                results.append(row)
                print(json.dumps(row), flush=True)
    device = resolve_device(args.device)
    summary = {
        "results": results,
        "device": str(device),
        "gpu": torch.cuda.get_device_name() if device.type == "cuda" else None,
        "cpu": cpu_model(),
        "threads": torch.get_num_threads(),
        "workers": args.workers,
        "torch": torch.__version__,
        "mode": "epoch" if args.epoch else "steps",
        "steps": args.steps,
        "repeats": args.repeats,
        "n_train": args.n_train,
        "degradations": DEGRADATIONS,
        "load_average_at_end": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "wall_s": round(time.perf_counter() - t0, 1),
        "provenance": provenance(),
    }
    if results and args.epoch:
        summary["epoch_s"] = results[0]["epoch_s"]
    elif results:  # the first row's headline numbers at top level, for quick checks
        for key in (
            "trainer_imgs_per_s",
            "model_only_imgs_per_s",
            "host_imgs_per_s",
            "trainer_vs_model_only",
        ):
            summary[key] = results[0][key]
    print(json.dumps(summary))
    return summary


if __name__ == "__main__":
    main()

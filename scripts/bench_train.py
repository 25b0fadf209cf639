#!/usr/bin/env python
"""Training throughput, side by side in one process: lrfer's loop vs the model-only limit vs a conventional
PIL + DataLoader pipeline.

    python scripts/bench_train.py [--device auto] [--sizes 100 224] [--methods baseline efc]
                                  [--batch-size 32] [--steps 4] [--repeats 3] [--optimizations]

For each (method, input size) it measures images per second of
  (a) ``pipeline``: the real training loop — uint8 cache on the device -> MATLAB-bicubic degradation view
      (x1, x2, x4 mixed per sample) -> resize back -> batched augmentation -> training step (lrfer's Trainer);
  (b) ``model_only``: the same method, batch and precision on one pre-made batch already on the device;
  (c) ``conventional``: PNG files decoded by PIL per sample in a torch DataLoader with workers, PIL bicubic
      down/up-sampling, random flip and normalisation per sample (what public FER repositories do), then the
      same training step.
The three are interleaved over ``--repeats`` rounds (after a warm-up round); images/s = batch / median step
time, each step including the fetch of its batch (the conventional loader keeps persistent workers, so
worker start-up is not charged to it). ``--optimizations`` adds the effect of each trainer optimisation on
the model-only step as a ratio to fp32 eager: bf16 autocast, channels_last, torch.compile (and CUDA graphs
on a GPU). The last stdout line is JSON.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from hydra import compose, initialize_config_dir
from PIL import Image

from lrfer.cli import CONFIG_DIR
from lrfer.compat import torchvision
from lrfer.config import register_schemas
from lrfer.data.degrade import parse_degradations
from lrfer.engine.run import build_parts
from lrfer.engine.trainer import Trainer, derive_seed
from lrfer.methods.base import Stage

DEGRADATIONS = ["x1", "x2", "x4"]
NATIVE = 100
METHOD_OVERRIDES = {
    "baseline": [],
    "efc": ["method=efc"],
    "voting": ["method=voting", "method.stem=conv3", "method.split_after=2"],
}


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def compose_parts(method: str, size: int, batch: int, n_train: int, device: str, cache: str, extra=()):
    overrides = [
        *METHOD_OVERRIDES[method],
        f"dataset.num_train={n_train}",
        f"dataset.num_val={batch}",
        f"dataset.num_test={batch}",
        f"dataset.image_size={NATIVE}",
        f"degrade.input_size={size}",
        f"degrade.train=[{','.join(DEGRADATIONS)}]",
        f"trainer.batch_size={batch}",
        f"trainer.device={device}",
        "logger=none",
        f"paths.cache_dir={cache}",
        "augment=default",
        *extra,
    ]
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose("train", overrides=overrides)
    return cfg, build_parts(cfg)


class Bench:
    """Holds one method's three loops; each ``run_*`` times ``steps`` optimisation steps."""

    def __init__(self, method: str, size: int, args, tmp: Path) -> None:
        self.steps, self.batch = args.steps, args.batch_size
        n_train = self.batch * self.steps
        self.cfg, self.parts = compose_parts(
            method, size, self.batch, n_train, args.device, str(tmp / "cache")
        )
        self.device = self.parts.device
        self.trainer = Trainer(
            self.cfg.trainer,
            self.parts.method,
            self.parts.datamodule,
            train_degrade=DEGRADATIONS,
            val_degrade=None,
            run_dir=None,
            seed=0,
            device=self.device,
        )
        self.stage = Stage("bench", epochs=1)
        self.opt = torch.optim.Adam(self.parts.method.parameters(), lr=1e-4)
        self.degs = parse_degradations(DEGRADATIONS)
        self.dm = self.parts.datamodule
        for deg in self.degs:  # the views are cached once per run, as in training: not part of the loop
            self.dm.view("train", deg)
        self.fixed = next(self.dm.train_batches(self.degs, seed=1))
        self.size = size
        self._loader: torch.utils.data.DataLoader | None = None
        self.folder = tmp / f"png{NATIVE}"
        if not self.folder.exists():
            self._write_pngs()

    def _write_pngs(self) -> None:
        self.folder.mkdir(parents=True)
        split = self.dm.splits["train"]
        for i in range(len(split)):
            Image.fromarray(split.images[i].permute(1, 2, 0).cpu().numpy()).save(self.folder / f"{i:06d}.png")

    def _step(self, batch) -> None:
        batch = self.trainer._prepare(batch)
        with self.trainer._autocast():
            loss = self.parts.method.training_step(batch, self.stage, "main")["loss"]
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()

    def _timed_steps(self, batches, step=None) -> list[float]:
        """Seconds of each ``step`` (default: the trainer's step), fetching its batch included, synchronised
        on the device."""
        step = step or self._step
        times = []
        it = iter(batches)
        while True:
            t0 = time.perf_counter()
            batch = next(it, None)
            if batch is None:
                return times
            step(batch)
            sync(self.device)
            times.append(time.perf_counter() - t0)

    def run_pipeline(self) -> list[float]:
        return self._timed_steps(self.dm.train_batches(self.degs, seed=derive_seed(0, 0, 0)))

    def run_model_only(self) -> list[float]:
        return self._timed_steps(dict(self.fixed) for _ in range(self.steps))

    def run_conventional(self, workers: int) -> list[float]:
        if self._loader is None:  # persistent workers: steady state, worker start-up not charged
            dataset = PngFaces(self.folder, self.dm.splits["train"].labels.cpu(), self.size)
            self._loader = torch.utils.data.DataLoader(
                dataset,
                batch_size=self.batch,
                shuffle=True,
                num_workers=workers,
                drop_last=True,
                pin_memory=self.device.type == "cuda",
                persistent_workers=workers > 0,
            )
        batches = (
            {
                "image": images.to(self.device, non_blocking=True),
                "label": labels.to(self.device),
                "factor": torch.ones(len(labels), device=self.device),
            }
            for images, labels in self._loader
        )
        return self._timed_steps(batches)

    def close(self) -> None:
        """Stop the conventional loader's persistent workers."""
        self._loader = None


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


def median_rounds(fns: dict, repeats: int, batch: int) -> dict[str, float]:
    """Images/s of each loop from its median step time, loops interleaved over ``repeats`` rounds after one
    warm-up round (step-level medians are robust to the other jobs of a shared machine)."""
    for fn in fns.values():
        fn()
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            times[name].extend(fn())
    return {k: round(batch / statistics.median(v), 2) for k, v in times.items()}


def optimisation_ratios(bench: Bench, repeats: int) -> dict[str, float]:
    """Model-only speed of each optimisation relative to fp32 eager on the same machine."""
    method, device = bench.parts.method, bench.device
    variants: dict[str, callable] = {}

    def make(amp: torch.dtype | None, channels_last: bool):
        def step(batch) -> None:
            ctx = torch.autocast(device.type, dtype=amp) if amp else contextlib.nullcontext()
            with ctx:
                loss = method.training_step(batch, bench.stage, "main")["loss"]
            bench.opt.zero_grad(set_to_none=True)
            loss.backward()
            bench.opt.step()

        def run() -> list[float]:
            batch = dict(bench.fixed)
            if channels_last:
                batch["image"] = batch["image"].contiguous(memory_format=torch.channels_last)
            return bench._timed_steps((batch for _ in range(bench.steps)), step)

        return run

    method.to(memory_format=torch.contiguous_format)
    variants["fp32"] = make(None, False)
    variants["bf16"] = make(torch.bfloat16, False)
    base = median_rounds(variants, repeats, bench.batch)
    method.to(memory_format=torch.channels_last)
    cl = median_rounds({"channels_last": make(None, True)}, repeats, bench.batch)
    method.to(memory_format=torch.contiguous_format)
    out = {
        "bf16_vs_fp32": round(base["bf16"] / base["fp32"], 3),
        "channels_last_vs_fp32": round(cl["channels_last"] / base["fp32"], 3),
    }
    try:
        for child in method.children():
            child.compile()
        compiled = median_rounds({"compile": make(None, False)}, repeats, bench.batch)
        out["compile_vs_fp32"] = round(compiled["compile"] / base["fp32"], 3)
    except Exception as err:  # compilers missing on the machine: report, do not fail the benchmark
        out["compile_vs_fp32"] = f"unavailable: {type(err).__name__}"
    if device.type != "cuda":
        out["cuda_graphs_vs_fp32"] = "n/a on CPU"
    return out


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="auto")
    parser.add_argument("--sizes", type=int, nargs="+", default=[100, 224])
    parser.add_argument("--methods", nargs="+", default=["baseline", "efc"], choices=sorted(METHOD_OVERRIDES))
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--workers", type=int, default=min(4, os.cpu_count() or 1))
    parser.add_argument("--optimizations", action="store_true")
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    register_schemas()
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for method in args.methods:
            if not (CONFIG_DIR / "method" / f"{method}.yaml").exists():
                print(json.dumps({"method": method, "skipped": f"no configs/method/{method}.yaml"}))
                continue
            for size in args.sizes:
                bench = Bench(method, size, args, Path(tmp))
                speeds = median_rounds(
                    {
                        "pipeline": bench.run_pipeline,
                        "model_only": bench.run_model_only,
                        "conventional": lambda b=bench: b.run_conventional(args.workers),
                    },
                    args.repeats,
                    args.batch_size,
                )
                row = {
                    "method": method,
                    "input_size": size,
                    "batch_size": args.batch_size,
                    "pipeline_imgs_per_s": speeds["pipeline"],
                    "model_only_imgs_per_s": speeds["model_only"],
                    "conventional_imgs_per_s": speeds["conventional"],
                    "pipeline_vs_model_only": round(speeds["pipeline"] / speeds["model_only"], 3),
                    "pipeline_vs_conventional": round(speeds["pipeline"] / speeds["conventional"], 3),
                    "precision": str(bench.trainer.amp_dtype or "fp32"),
                    "channels_last": bench.trainer.channels_last,
                }
                if args.optimizations:
                    row["optimizations"] = optimisation_ratios(bench, args.repeats)
                bench.close()
                results.append(row)
                print(json.dumps(row), flush=True)
    first = results[0] if results else {}
    summary = {
        "results": results,
        "device": str(bench.device) if results else args.device,
        "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() and args.device != "cpu" else None,
        "cpu": platform.processor() or platform.machine(),
        "threads": torch.get_num_threads(),
        "workers": args.workers,
        "torch": torch.__version__,
        "steps": args.steps,
        "repeats": args.repeats,
        "degradations": DEGRADATIONS,
    }
    for key in ("pipeline_imgs_per_s", "model_only_imgs_per_s", "conventional_imgs_per_s"):
        if first:  # the first row's headline numbers at top level, for quick checks
            summary[key] = first[key]
    print(json.dumps(summary))
    return summary


if __name__ == "__main__":
    main()

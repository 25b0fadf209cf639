#!/usr/bin/env python
"""DDP scaling: training images/s of N processes x 1 thread against 1 process x 1 and x N threads, same global
batch.

    python scripts/bench_ddp.py [--nproc 2] [--device cpu] [--method baseline] [--size 100]
                                [--batch-size 64] [--steps 4] [--epochs 3] [--rounds 2]

Each configuration is started with torchrun (``--nproc_per_node`` 1, then N) and runs lrfer's real training
loop (``Trainer.train_one_epoch``: batch assembly from the cached views x1/x2/x4, augmentation, forward,
backward, DDP all-reduce, optimiser step) on ``steps`` global batches of ``--batch-size`` per epoch: one
warm-up epoch, then ``--epochs`` timed epochs (barrier before and after each). With N processes every
rank trains on its own share (``batch-size / N``) of each global batch, so the same images are seen per
epoch. The configurations alternate for ``--rounds`` rounds; images/s = global images per epoch /
median epoch time. On the CPU every DDP process gets one intra-op thread (``OMP_NUM_THREADS=1``), so N
processes use N cores; on CUDA (``--device cuda``) each process drives one GPU. The third configuration,
1 process x N threads, is the best a single process can do with the same cores (CPU only).

The last stdout line is JSON with ``ddp_speedup`` (against 1 process x 1 thread; the limit is N),
``speedup_vs_best_single`` (against the faster of 1 x 1 and 1 x N threads: what DDP gains over simply
giving one process the cores), the throughputs and the machine's load average before and after (other jobs
on the machine depress the speed-up).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch
from hydra import compose, initialize_config_dir

from lrfer.cli import CONFIG_DIR
from lrfer.config import register_schemas
from lrfer.engine import distributed as dist
from lrfer.engine.run import build_parts, load_data
from lrfer.engine.trainer import Trainer
from lrfer.report.provenance import provenance
from lrfer.tools.latency import cpu_model

DEGRADATIONS = ["x1", "x2", "x4"]
METHOD_OVERRIDES = {
    "baseline": [],
    "efc": ["method=efc"],
    "voting": ["method=voting", "method.split_after=2"],
}


def overrides(args, cache: str) -> list[str]:
    return [
        *METHOD_OVERRIDES[args.method],
        f"dataset.num_train={args.batch_size * args.steps}",
        f"dataset.num_val={args.batch_size}",
        f"dataset.num_test={args.batch_size}",
        "dataset.image_size=100",
        f"degrade.input_size={args.size}",
        f"degrade.train=[{','.join(DEGRADATIONS)}]",
        f"trainer.batch_size={args.batch_size}",
        f"trainer.device={args.device}",
        f"trainer.num_threads={args.threads}",
        "trainer.progress=off",
        "logger=none",
        f"paths.cache_dir={cache}",
    ]


def compose_cfg(args, cache: str):
    register_schemas()
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        return compose("train", overrides=overrides(args, cache))


def worker(args) -> None:
    """One rank (started by torchrun): time the training loop, rank 0 writes ``--out``."""
    torch.set_num_threads(args.threads)
    cfg = compose_cfg(args, args.cache)
    parts = build_parts(cfg)  # joins the process group
    trainer = Trainer(parts.spec, parts.method, parts.datamodule)
    # the method's first stage on the bench's degradations: DDP-wrapped, its optimiser built
    stage = trainer.prepare_stage(0, replace(parts.method.stages()[0], train_degrade=DEGRADATIONS))
    degs = stage.train_degs
    for deg in degs:  # the views are made once per run in training too: not part of the loop
        parts.datamodule.view("train", deg)
    times = []
    for epoch in range(1 + args.epochs):
        dist.barrier()
        if parts.device.type == "cuda":
            torch.cuda.synchronize(parts.device)
        t0 = time.perf_counter()
        trainer.train_one_epoch(stage, epoch)
        if parts.device.type == "cuda":
            torch.cuda.synchronize(parts.device)
        dist.barrier()
        times.append(time.perf_counter() - t0)
    if dist.is_main():
        timed = times[1:]
        images = args.batch_size * parts.datamodule.num_train_batches(degs)
        Path(args.out).write_text(
            json.dumps(
                {
                    "world_size": dist.world_size(),
                    "epoch_s": [round(t, 3) for t in timed],
                    "imgs_per_s": round(images / statistics.median(timed), 2),
                    "device": str(parts.device),
                }
            )
        )
    dist.cleanup()


def worker_argv(args, cache: str, out: Path, threads: int) -> list[str]:
    """The options of one rank, from the parsed ones (``args``), never this call's own ``sys.argv``:
    torchrun's parser reads options after the script name too, and takes ``--nproc`` as an ambiguous
    abbreviation of its ``--nproc-per-node``, so a rank gets no option whose name torchrun could claim."""
    return [
        "--worker",
        f"--out={out}",
        f"--cache={cache}",
        f"--threads={threads}",
        f"--device={args.device}",
        f"--method={args.method}",
        f"--size={args.size}",
        f"--batch-size={args.batch_size}",
        f"--steps={args.steps}",
        f"--epochs={args.epochs}",
    ]


def launch(args, nproc: int, cache: str, out: Path, threads: int = 1) -> dict:
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc_per_node={nproc}",
        __file__,
        *worker_argv(args, cache, out, threads),
    ]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        sys.exit(f"{nproc}-process run failed:\n{proc.stderr[-3000:]}")
    return json.loads(out.read_text())


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--nproc", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--method", default="baseline", choices=sorted(METHOD_OVERRIDES))
    parser.add_argument("--size", type=int, default=100, help="network input side")
    parser.add_argument("--batch-size", type=int, default=64, help="the global batch")
    parser.add_argument("--steps", type=int, default=4, help="global batches per epoch")
    parser.add_argument("--epochs", type=int, default=3, help="timed epochs per launch (after one warm-up)")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1, help=argparse.SUPPRESS)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    parser.add_argument("--cache", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main() -> dict:
    args = parse_args()
    if args.worker:
        worker(args)
        return {}
    if args.batch_size % args.nproc:
        sys.exit(f"--batch-size {args.batch_size} must be divisible by --nproc {args.nproc}")
    load_before = os.getloadavg()
    # (processes, threads per process)
    configs = [(1, 1), (args.nproc, 1)] + ([(1, args.nproc)] if args.device == "cpu" else [])
    speeds: dict[tuple[int, int], list[float]] = {c: [] for c in configs}
    with tempfile.TemporaryDirectory() as tmp:
        cache = str(Path(tmp) / "cache")
        load_data(compose_cfg(args, cache))  # build the synthetic cache once, before any rank reads it
        for r in range(args.rounds):
            for nproc, threads in configs:
                row = launch(args, nproc, cache, Path(tmp) / f"r{r}_p{nproc}_t{threads}.json", threads)
                speeds[(nproc, threads)].append(row["imgs_per_s"])
                print(json.dumps({"round": r, "processes": nproc, "threads": threads, **row}), flush=True)
    median = {c: round(statistics.median(v), 2) for c, v in speeds.items()}
    one, many = median[(1, 1)], median[(args.nproc, 1)]
    best_single = max(v for (nproc, _), v in median.items() if nproc == 1)
    summary = {
        "ddp_speedup": round(many / one, 3),
        "speedup_vs_best_single": round(many / best_single, 3),
        "limit": args.nproc,
        "one_process_imgs_per_s": one,
        "one_process_n_threads_imgs_per_s": median.get((1, args.nproc)),
        "ddp_imgs_per_s": many,
        "processes": args.nproc,
        "threads_per_process": 1,
        "global_batch": args.batch_size,
        "method": args.method,
        "input_size": args.size,
        "steps_per_epoch": args.steps,
        "timed_epochs": args.epochs,
        "rounds": args.rounds,
        "device": args.device,
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "torch": torch.__version__,
        "load_average_before": [round(x, 2) for x in load_before],
        "load_average_after": [round(x, 2) for x in os.getloadavg()],
        "provenance": provenance(),
    }
    print(json.dumps(summary))
    return summary


if __name__ == "__main__":
    main()

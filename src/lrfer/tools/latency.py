"""CPU inference latency of a method, measured as ``scripts/bench_cpu.py`` does (batch 1, eager PyTorch)."""

from __future__ import annotations

import platform
import statistics
import subprocess
import time

import torch
from torch import nn


def cpu_latency_ms(
    model: nn.Module, shape: list[int], threads: int, warmup: int, repeats: int, iters: int
) -> dict[str, float]:
    """Median milliseconds per batch-1 inference of ``model`` on the CPU with ``threads`` intra-op threads.

    ``warmup`` inferences are not timed; then ``repeats`` timings of ``iters`` inferences each. Returns
    ``{"ms", "min_ms", "max_ms", "threads"}`` (median, fastest and slowest repeat).
    """
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        x = torch.randn(1, *shape, generator=torch.Generator().manual_seed(0))
        model = model.cpu().eval()
        samples = []
        with torch.inference_mode():
            for _ in range(warmup):
                model(x)
            for _ in range(repeats):
                start = time.perf_counter()
                for _ in range(iters):
                    model(x)
                samples.append(1000.0 * (time.perf_counter() - start) / iters)
    finally:
        torch.set_num_threads(before)
    return {
        "ms": round(statistics.median(samples), 3),
        "min_ms": round(min(samples), 3),
        "max_ms": round(max(samples), 3),
        "threads": threads,
    }


def cpu_model() -> str:
    """The processor's model name (``lscpu``), or what :mod:`platform` knows."""
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
        for line in out.splitlines():
            if line.startswith("Model name:"):
                return line.split(":", 1)[1].strip()
    except (OSError, subprocess.SubprocessError):
        pass
    return platform.processor() or platform.machine() or "unknown"

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


def describe_cpu(lscpu_text: str, isa: str) -> str:
    """``lscpu``'s model name with its family and model numbers and ``isa`` (the vector instructions torch's
    kernels use), e.g. ``AMD EPYC, family 25 model 1, AVX2``; an empty string when it names no model.

    Virtual machines often report a bare "AMD EPYC": the numbers tell the generations apart (family 25 model 1
    is Zen 3, model 17 Zen 4). CPU seconds measured on two such VMs are not comparable: an epoch of the
    findings' whole-face voting network (its first, on two threads) cost 275 CPU s on one (2026-12-07) and 458
    on a Zen 3 with AVX2 (2026-12-08).
    """
    fields = {}
    for line in lscpu_text.splitlines():
        key, sep, value = line.partition(":")
        if sep:
            fields.setdefault(key.strip(), value.strip())
    name = fields.get("Model name", "")
    if not name:
        return ""
    ids = [
        f"{label} {fields[key]}"
        for key, label in (("CPU family", "family"), ("Model", "model"))
        if key in fields
    ]
    return ", ".join(filter(None, [name, " ".join(ids), isa]))


def cpu_model() -> str:
    """The processor as :func:`describe_cpu` names it from ``lscpu``, or what :mod:`platform` knows."""
    isa = torch.backends.cpu.get_cpu_capability()
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
        described = describe_cpu(out, isa)
        if described:
            return described
    except (OSError, subprocess.SubprocessError):
        pass
    return ", ".join(filter(None, [platform.processor() or platform.machine() or "unknown", isa]))

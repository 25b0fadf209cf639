#!/usr/bin/env python
"""Batch-1 CPU inference speed of EFC and MobileNetV2 at 32x32, measured side by side (EFC paper, Table 4).

    nice python scripts/bench_cpu.py [--threads 1] [--repeats 15] [--iters 100] [--size 32]

Every network is built from its method config (``method=efc``; ``method=zoo method.arch=mobilenet_v2
method.small_input=false``, i.e. torchvision's MobileNetV2 with its ImageNet strides, the network whose
parameters and GFLOPs the paper lists: 2,266,951 and 0.013 at 32 px; the stride-reduced variant is timed
too as ``mobilenet_v2_small_input``). Backends: eager (``torch.inference_mode``), TorchScript (traced
``method.predict``, frozen) and ONNX Runtime when ``onnx`` + ``onnxruntime`` are installed (skipped
otherwise). All networks run in the same process with the same thread count; after a warm-up, each repeat
times ``--iters`` consecutive batch-1 inferences of every (network, backend) in turn (interleaved, so CPU
contention hits all alike), and the FPS reported is the median over repeats. ``efc_fps`` and
``mobilenet_v2_fps`` are each network's best backend; ``ratio`` = efc_fps / mobilenet_v2_fps (the paper:
290.78 / 151.60 = 1.92 on an Intel Core i7-6700T). The last line printed is JSON.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
import warnings
from collections.abc import Callable

import torch

from lrfer.config import compose_config
from lrfer.core.errors import exit_on_user_error
from lrfer.report.provenance import provenance
from lrfer.tools.latency import cpu_model
from lrfer.tools.predictor import Predictor, build_predictor

NETWORKS = {
    "efc": ["method=efc"],
    "mobilenet_v2": ["method=zoo", "method.arch=mobilenet_v2", "method.small_input=false"],
    "mobilenet_v2_small_input": ["method=zoo", "method.arch=mobilenet_v2", "method.small_input=true"],
}
PAPER = {"efc_fps": 290.78, "mobilenet_v2_fps": 151.60, "cpu": "Intel Core i7-6700T"}


def predictor_for(overrides: list[str], size: int) -> Predictor:
    cfg = compose_config([*overrides, f"input_size={size}", "dataset.num_classes=7"])
    torch.manual_seed(0)
    return build_predictor(cfg)[0]


def backends(model: Predictor, example: torch.Tensor) -> dict[str, Callable[[torch.Tensor], object]]:
    """Callables per backend; a backend that cannot be built is left out (reason printed)."""
    out: dict[str, Callable] = {"eager": model}
    with torch.inference_mode():
        traced = torch.jit.freeze(torch.jit.trace(model, example, check_trace=False))
    out["torchscript"] = traced
    try:
        import io

        import onnxruntime as ort

        buf = io.BytesIO()
        torch.onnx.export(
            model, (example,), buf, input_names=["images"], output_names=["logits"], dynamo=False
        )
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = torch.get_num_threads()
        opts.inter_op_num_threads = 1
        session = ort.InferenceSession(buf.getvalue(), opts, providers=["CPUExecutionProvider"])
        out["onnxruntime"] = lambda x: session.run(None, {"images": x.numpy()})
    except ImportError as err:
        print(f"onnxruntime backend skipped: {err}")
    except Exception as err:  # an exporter/runtime failure must not stop the other measurements
        print(f"onnxruntime backend skipped: {type(err).__name__}: {err}")
    return out


def time_fps(fn: Callable, x: torch.Tensor, iters: int) -> float:
    with torch.inference_mode():
        start = time.perf_counter()
        for _ in range(iters):
            fn(x)
        return iters / (time.perf_counter() - start)


#: tracing turns the input size into constants on purpose: the exported model has a fixed input size
warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)


@exit_on_user_error
def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (same for all)")
    parser.add_argument("--size", type=int, default=32, help="input side in pixels (the paper: 32)")
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--iters", type=int, default=100, help="inferences per timed repeat")
    parser.add_argument("--warmup", type=int, default=50)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    x = torch.randn(1, 3, args.size, args.size)

    runners = {}
    for name, overrides in NETWORKS.items():
        for backend, fn in backends(predictor_for(overrides, args.size), x).items():
            runners[(name, backend)] = fn
    for fn in runners.values():
        time_fps(fn, x, args.warmup)
    samples: dict[tuple[str, str], list[float]] = {key: [] for key in runners}
    for _ in range(args.repeats):
        for key, fn in runners.items():
            samples[key].append(time_fps(fn, x, args.iters))

    fps = {f"{n}/{b}": round(statistics.median(v), 2) for (n, b), v in samples.items()}
    best = {n: max(statistics.median(v) for (m, _), v in samples.items() if m == n) for n in NETWORKS}
    for key, value in fps.items():
        print(f"{key:40s} {value:10.2f} FPS")
    result = {
        "efc_fps": round(best["efc"], 2),
        "mobilenet_v2_fps": round(best["mobilenet_v2"], 2),
        "ratio": round(best["efc"] / best["mobilenet_v2"], 3),
        "mobilenet_v2_small_input_fps": round(best["mobilenet_v2_small_input"], 2),
        "per_backend": fps,
        "spread": {f"{n}/{b}": [round(min(v), 1), round(max(v), 1)] for (n, b), v in samples.items()},
        "threads": args.threads,
        "size": args.size,
        "repeats": args.repeats,
        "iters": args.iters,
        "torch": torch.__version__,
        "cpu": cpu_model(),
        "paper": {**PAPER, "ratio": round(PAPER["efc_fps"] / PAPER["mobilenet_v2_fps"], 3)},
        "provenance": provenance(),
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()

"""Frames per second of ``lrfer-predict RUN clip.mp4`` (faces in video) for trained runs, side by side.

    python scripts/bench_video.py efc=outputs/efc/... baseline=outputs/baseline/... [--repeat 2]
        [--frames 250] [--size 640x360] [--detect-every 5] [--out experiments/perf/video_fps.json]

Writes a clip with one real face (scripts/video_clips.py: scikit-image's astronaut, 90 px face, moving), then
runs the whole command on it for every run in turn, ``--repeat`` times (interleaved, so that a change in
the machine's load hits every run alike), with the annotated video, CSV, summary and timeline written.
Reports per run and repeat: ``fps_pipeline`` (frames / seconds from the first decoded frame to the last
frame written: decoding, detection, tracking, classification, drawing and encoding, as the summary's
``processed_fps``), ``fps_command`` (frames / wall time of the whole ``lrfer-predict`` call, loading the
run and writing the outputs included), ``cpu_ms_per_frame`` (CPU time of all the command's threads per
frame: what the frames cost whatever else the machine runs) and the machine's load average before and
after. Prints one JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import torch
from video_clips import write_clip

from lrfer.cli import predict
from lrfer.engine.loading import load_run_config
from lrfer.report.provenance import provenance
from lrfer.tools.latency import cpu_model


def describe(run: str) -> dict:
    """What the run is (its method, epochs, input size, test accuracy at x1), not where it lies."""
    cfg = load_run_config(run)
    path = Path(run) / "metrics.json"
    metrics = json.loads(path.read_text()) if path.is_file() else {}
    return {
        "method": str(cfg.method.name),
        "max_epochs": int(cfg.trainer.max_epochs),
        "input_size": int(cfg.get("input_size") or cfg.dataset.image_size),
        "test_x1_acc_synthetic": metrics.get("test", {}).get("x1", {}).get("acc"),
    }


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("runs", nargs="+", help="NAME=RUN_DIR")
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--frames", type=int, default=250)
    parser.add_argument("--size", default="640x360")
    parser.add_argument("--detect-every", type=int, default=5)
    parser.add_argument("--out", type=Path, help="also write the JSON here")
    args = parser.parse_args(argv)
    width, height = (int(v) for v in args.size.split("x"))
    runs = dict(r.split("=", 1) for r in args.runs)
    results: dict[str, list[dict]] = {name: [] for name in runs}
    with tempfile.TemporaryDirectory() as tmp:
        clip = write_clip(Path(tmp) / "clip.mp4", (width, height), args.frames)
        for repeat in range(args.repeat):
            for name, run in runs.items():
                out = Path(tmp) / f"{name}_{repeat}"
                load = os.getloadavg()[0]
                start, cpu = time.perf_counter(), time.process_time()
                outputs = ["--annotate", str(out / "annotated.mp4"), "--out", str(out / "faces.csv")]
                every = ["--detect-every", str(args.detect_every)]
                predict.main([run, str(clip), *outputs, *every, "--device", "cpu"])
                seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
                summary = json.loads((out / "faces_summary.json").read_text())
                results[name].append(
                    {
                        "fps_pipeline": summary["processed_fps"],
                        "fps_command": round(summary["frames"] / seconds, 2),
                        "seconds_command": round(seconds, 2),
                        "cpu_ms_per_frame": round(1000 * cpu / summary["frames"], 1),
                        "tracks": len(summary["tracks"]),
                        "load_before": round(load, 2),
                        "load_after": round(os.getloadavg()[0], 2),
                    }
                )
    report = {
        "command": "lrfer-predict RUN clip.mp4 --annotate annotated.mp4 --out faces.csv "
        f"--detect-every {args.detect_every} --device cpu",
        "clip": {"size": f"{width}x{height}", "frames": args.frames, "fps": 25, "faces": 1, "face_px": 90},
        "machine": {
            "cpu": cpu_model(),
            "cores": os.cpu_count(),
            "torch": torch.__version__,
            "python": platform.python_version(),
        },
        "runs": {name: {**describe(runs[name]), "repeats": r} for name, r in results.items()},
        "provenance": provenance(synthetic=True),  # the runs were trained on synthetic faces
    }
    text = json.dumps(report, indent=2)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")
    print(text)
    return report


if __name__ == "__main__":
    main()

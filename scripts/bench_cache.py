#!/usr/bin/env python
"""What verifying every byte of a dataset cache costs on load (the CRC-32 of every file), side by side.

    nice python scripts/bench_cache.py [--faces 15339] [--size 100] [--repeats 3] [--dir /tmp]

Writes one cache entry of ``--faces`` random uint8 faces of ``--size`` px (RAF-DB's basic set at its
aligned 100 px: 12,271 train + 3,068 test = 15,339 faces, 460 MB) into a temporary folder under ``--dir``,
then loads it ``--repeats`` times each way, interleaved: ``lrfer.data.cache.read_cache(every_byte=True)``
(what lrfer does) and ``every_byte=False`` (the CRC only of files whose modification time changed). The
files are in the page cache after the write (warm); a cold read adds the disk's read time for the same
bytes, which the first epoch of training pays anyway. Prints one JSON line: median seconds of each, their
difference, MB and the machine.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from lrfer.data.cache import read_cache, write_cache
from lrfer.data.faces import FaceData, FaceSplit
from lrfer.tools.latency import cpu_model


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--faces", type=int, default=15339)
    parser.add_argument("--size", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--dir", type=Path, default=None, help="where the temporary cache is written")
    args = parser.parse_args(argv)
    rng = np.random.default_rng(0)
    n_test = args.faces // 5
    splits = {}
    for name, n in (("train", args.faces - n_test), ("test", n_test)):
        images = torch.from_numpy(rng.integers(0, 256, (n, 3, args.size, args.size), dtype=np.uint8))
        splits[name] = FaceSplit(images, torch.from_numpy(rng.integers(0, 7, n)))
    data = FaceData("bench", [str(i) for i in range(7)], splits, {})
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        entry = Path(tmp) / "entry"
        write_cache(entry, data, {"bench": True})
        del data, splits
        size_mb = sum(f.stat().st_size for f in entry.iterdir()) / 2**20
        times: dict[str, list[float]] = {"every_byte": [], "changed_files_only": []}
        for _ in range(args.repeats):
            for key, every_byte in (("every_byte", True), ("changed_files_only", False)):
                t0 = time.perf_counter()
                read_cache(entry, every_byte=every_byte)
                times[key].append(time.perf_counter() - t0)
    median = {k: statistics.median(v) for k, v in times.items()}
    crc_s = median["every_byte"] - median["changed_files_only"]
    result = {
        "faces": args.faces,
        "size": args.size,
        "cache_mb": round(size_mb, 1),
        "load_s_every_byte": round(median["every_byte"], 3),
        "load_s_changed_files_only": round(median["changed_files_only"], 3),
        "crc_cost_s": round(crc_s, 3),
        "crc_gb_per_s": round(size_mb / 1024 / max(1e-9, crc_s), 2),
        "repeats": args.repeats,
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "torch": torch.__version__,
    }
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()

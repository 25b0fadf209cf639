#!/usr/bin/env python
"""Look at the synthetic face generator: generation speed and a picture of its classes at two resolutions.

    python scripts/check_synthetic.py [OUT.png] [--per-class 8] [--size 100] [--degrade x8] [--seed 0]

Times the generation of 10,000 faces of 100x100, then saves a PNG grid: one row per class (RAF-DB's order),
``--per-class`` faces at full resolution on the left and the same faces through the ``--degrade``
degradation (MATLAB bicubic, :func:`lrfer.data.degrade.degrade_uint8`) and bicubic back up on the right.
The last line printed is JSON. How learnable the faces are at each resolution is measured by training
through the real trainer, e.g. ``python train.py 'degrade.train=[x8]'``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from lrfer.core.errors import exit_on_user_error
from lrfer.data.degrade import degrade_uint8, parse_degradation, resize_to
from lrfer.data.synthetic import EXPRESSIONS, make_synthetic_faces


def class_grid(per_class: int, size: int, seed: int, label: str) -> torch.Tensor:
    """uint8 (3, H, W): per class a row of native faces, a gap, then the same faces degraded by ``label``."""
    k = len(EXPRESSIONS)
    images, labels = make_synthetic_faces(per_class * k * 2, image_size=size, seed=seed)
    full = torch.stack([images[labels == c][:per_class] for c in range(k)])  # (k, per_class, 3, S, S)
    low = degrade_uint8(full.flatten(0, 1), parse_degradation(label))
    back = resize_to(low.float(), size).round().clamp(0, 255).to(torch.uint8).view_as(full)
    gap = torch.full((3, size, max(2, size // 4)), 255, dtype=torch.uint8)
    rows = [torch.cat([*full[c], gap, *back[c]], dim=-1) for c in range(k)]
    return torch.cat(rows, dim=-2)


@exit_on_user_error
def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", nargs="?", default="synthetic_grid.png", type=Path)
    parser.add_argument("--per-class", type=int, default=8, help="faces per class (grid columns per side)")
    parser.add_argument("--size", type=int, default=100, help="generated image side in pixels")
    parser.add_argument("--degrade", default="x8", help="degradation of the right half (x8, 14px, ...)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    start = time.perf_counter()
    make_synthetic_faces(10_000, image_size=100, seed=args.seed)
    seconds = time.perf_counter() - start
    print(f"generated 10,000 faces of 100x100 in {seconds:.2f}s ({torch.get_num_threads()} threads)")

    from PIL import Image

    grid = class_grid(args.per_class, args.size, args.seed, args.degrade)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(grid.permute(1, 2, 0).numpy()).save(args.out)
    print(f"saved {args.out} (rows: {', '.join(EXPRESSIONS)}; left x1, right {args.degrade})")
    print(json.dumps({"generation_seconds_10k": round(seconds, 2), "grid": str(args.out)}))


if __name__ == "__main__":
    main()

"""Run under torchrun (gloo, CPU): one host copy of the views per machine (lrfer.data.shared_views).

``python -m torch.distributed.run --standalone --nproc_per_node=2 tests/shared_views_worker.py ENTRY OUT``
reads the cache entry ENTRY (written by the test), serves a training epoch and an evaluation of it from
host-resident images with view sharing on, and writes ``OUT/rank<r>.json``: how many views this rank
computed, a digest of every view and of the batches, and the file each view's memory is mapped from.
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import torch
from omegaconf import OmegaConf

from lrfer.config.schema import AugmentConfig, DegradeConfig
from lrfer.data.cache import read_cache
from lrfer.data.degrade import parse_degradations
from lrfer.data.faces import carve_validation
from lrfer.data.pipeline import FaceDataModule
from lrfer.engine import distributed as dist

TRAIN = ["x1", "x2", "x1+noise8"]
EVAL = "x4"


def mapped_file(t: torch.Tensor) -> str | None:
    """The file the memory at ``t.data_ptr()`` is mapped from (/proc/self/maps), None if anonymous."""
    ptr = t.data_ptr()
    for line in Path("/proc/self/maps").read_text().splitlines():
        fields = line.split(maxsplit=5)
        low, high = (int(x, 16) for x in fields[0].split("-"))
        if low <= ptr < high:
            return fields[5].strip() if len(fields) > 5 else None
    return None


def digest(t: torch.Tensor) -> str:
    return hashlib.sha1(t.contiguous().numpy().tobytes()).hexdigest()


def main() -> None:
    entry, out = Path(sys.argv[1]), Path(sys.argv[2])
    dist.init_from_env(torch.device("cpu"))
    data = carve_validation(read_cache(entry), 0.2, seed=0)
    dm = FaceDataModule(
        data,
        degrade_cfg=OmegaConf.structured(DegradeConfig(train=TRAIN)),
        augment_cfg=OmegaConf.structured(AugmentConfig(translate=0.0)),
        mean=[0.5] * 3,
        std=[0.25] * 3,
        batch_size=8,
        eval_batch_size=8,
        device=torch.device("cpu"),
        rank=dist.rank(),
        world_size=dist.world_size(),
        prefetch=True,
    )
    dm.view_sharing = dist.view_sharing()
    builds = []
    real = dm._make_view

    def counted(base: torch.Tensor, deg) -> torch.Tensor:
        view = real(base, deg)
        if view is not base:  # x1 is the images themselves
            builds.append(deg.label)
        return view

    dm._make_view = counted
    batches = hashlib.sha1()
    for batch in dm.train_batches(parse_degradations(TRAIN), seed=3):
        batches.update(batch["image"].numpy().tobytes())
    for split in ("val", "test"):
        for batch in dm.eval_batches(split, parse_degradations([EVAL])[0]):
            batches.update(batch["image"].numpy().tobytes())
    views = {
        f"{split}/{label}": dm.view(split, deg)
        for split, labels in (("train", TRAIN), ("val", [EVAL]), ("test", [EVAL]))
        for label, deg in zip(labels, parse_degradations(labels))
    }
    result = {
        "builds": builds,
        "views": {k: digest(v) for k, v in views.items()},
        "mapped": {k: mapped_file(v) for k, v in views.items()},
        "batches": batches.hexdigest(),
        "sharing": dm.view_sharing is not None,
    }
    (out / f"rank{dist.rank()}.json").write_text(json.dumps(result))
    dist.barrier()
    dist.cleanup()


if __name__ == "__main__":
    torch.set_num_threads(1)
    main()

"""Run under torchrun (gloo, CPU): one host copy of the data per machine (lrfer.data.shared_views).

``python -m torch.distributed.run --standalone --nproc_per_node=2 tests/shared_views_worker.py SCENARIO ...``
writes ``OUT/rank<r>.json``:

* ``views ENTRY OUT``: reads the cache entry ENTRY (written by the test), serves a training epoch and an
  evaluation of it from host-resident images with view sharing on; records how many views this rank
  computed, a digest of every view and of the batches, and the file each view's memory is mapped from;
* ``cache OUT``: loads a toy dataset through ``load_or_build`` into the empty cache folder ``OUT/cache``;
  records how many times this rank decoded it, a digest of its images and the file they are mapped from.
"""

from __future__ import annotations

import functools
import hashlib
import json
import sys
from pathlib import Path

import torch
from conftest import end_torchrun_worker
from omegaconf import OmegaConf

from lrfer.config import compose_config
from lrfer.data.cache import load_or_build, read_cache
from lrfer.data.degrade import parse_degradations
from lrfer.data.faces import FaceData, FaceSplit, carve_validation
from lrfer.data.pipeline import FaceDataModule
from lrfer.engine import distributed as dist


@functools.cache
def _defaults():
    """The default config (configs/degrade/default.yaml, configs/augment/default.yaml, ...), composed once."""
    return compose_config()


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


def toy_faces(n: int = 40) -> FaceData:
    """``n`` random 16 px faces in train and test, the same in every process."""
    g = torch.Generator().manual_seed(0)
    splits = {
        name: FaceSplit(
            torch.randint(0, 256, (n, 3, 16, 16), dtype=torch.uint8, generator=g), torch.arange(n) % 3
        )
        for name in ("train", "test")
    }
    return FaceData("toy", ["a", "b", "c"], splits)


class ToyAdapter:
    """A dataset adapter that counts its decodes."""

    name = "toy"

    def __init__(self) -> None:
        self.loads = 0

    def fingerprint(self) -> dict:
        return {"n": 40}

    def load(self) -> FaceData:
        self.loads += 1
        return toy_faces()


def cache(out: Path) -> dict:
    adapter = ToyAdapter()
    data = load_or_build(adapter, out / "cache", dist.machine_sharing())
    return {
        "loads": adapter.loads,
        "images": {name: digest(split.base) for name, split in data.splits.items()},
        "mapped": {name: mapped_file(split.base) for name, split in data.splits.items()},
    }


def main() -> None:
    dist.init_from_env(torch.device("cpu"))
    if sys.argv[1] == "cache":
        out = Path(sys.argv[2])
        result = cache(out)
    else:
        entry, out = Path(sys.argv[2]), Path(sys.argv[3])
        result = views(entry)
    (out / f"rank{dist.rank()}.json").write_text(json.dumps(result))
    end_torchrun_worker()


def views(entry: Path) -> dict:
    data = carve_validation(read_cache(entry), 0.2, seed=0)
    dm = FaceDataModule(
        data,
        degrade_cfg=OmegaConf.merge(_defaults().degrade, {"train": TRAIN}),
        augment_cfg=OmegaConf.merge(_defaults().augment, {"translate": 0.0}),
        mean=[0.5] * 3,
        std=[0.25] * 3,
        batch_size=8,
        eval_batch_size=8,
        device=torch.device("cpu"),
        rank=dist.rank(),
        world_size=dist.world_size(),
        prefetch=True,
    )
    dm.view_sharing = dist.machine_sharing()
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
    return {
        "builds": builds,
        "views": {k: digest(v) for k, v in views.items()},
        "mapped": {k: mapped_file(v) for k, v in views.items()},
        "batches": batches.hexdigest(),
        "sharing": dm.view_sharing is not None,
    }


if __name__ == "__main__":
    torch.set_num_threads(1)
    main()

"""Run under torchrun (or call ``shares`` directly): the (index, degradation) of every training batch this
rank receives, for random/balanced sampling and degrade.train_mode random/all, over two epochs.

``python -m torch.distributed.run --nproc_per_node=2 tests/shard_worker.py OUT_DIR`` writes
``OUT_DIR/rank<r>.json``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
from omegaconf import OmegaConf

from lrfer.config import compose_config
from lrfer.data.degrade import parse_degradations
from lrfer.data.faces import FaceData, FaceSplit
from lrfer.data.pipeline import FaceDataModule

MODES = [("random", "random"), ("balanced", "random"), ("random", "all"), ("balanced", "all")]
BATCH, EPOCHS, N = 12, 2, 40


def shares(rank: int, world: int) -> dict[str, list[list[list[int]]]]:
    """``{"<sampler>/<train_mode>": [per batch of every epoch: [index..., degradation...]]}`` of one rank."""
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (N, 3, 16, 16), dtype=torch.uint8, generator=g)
    labels = torch.tensor([0] * 24 + [1] * 12 + [2] * 4)  # imbalanced: balanced sampling repeats rows
    split = FaceSplit(images, labels)
    data = FaceData("toy", ["a", "b", "c"], {"train": split, "val": split, "test": split})
    degs = parse_degradations(["x1", "x2"])
    defaults = compose_config()
    out = {}
    for sampler, mode in MODES:
        dm = FaceDataModule(
            data,
            degrade_cfg=OmegaConf.merge(defaults.degrade, {"train": ["x1", "x2"], "train_mode": mode}),
            augment_cfg=OmegaConf.merge(defaults.augment, {"translate": 0.0}),
            mean=[0.5] * 3,
            std=[0.25] * 3,
            batch_size=BATCH,
            eval_batch_size=8,
            device=torch.device("cpu"),
            sampler=sampler,
            rank=rank,
            world_size=world,
        )
        batches = []
        for epoch in range(EPOCHS):
            for batch in dm.train_batches(degs, seed=1000 + epoch):
                batches.append([batch["index"].tolist(), batch["degradation"].tolist()])
        out[f"{sampler}/{mode}"] = batches
    return out


if __name__ == "__main__":
    from conftest import end_torchrun_worker

    from lrfer.engine import distributed as dist

    dist.init_from_env(torch.device("cpu"))
    result = shares(dist.rank(), dist.world_size())
    Path(sys.argv[1]).mkdir(parents=True, exist_ok=True)
    (Path(sys.argv[1]) / f"rank{dist.rank()}.json").write_text(json.dumps(result))
    end_torchrun_worker()

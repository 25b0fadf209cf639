"""Evaluation of host-resident images (issue 28, defect 5): gathered ahead into pinned buffers by the
prefetching thread and copied without waiting, as training batches are; the batches and the metrics are
the ones the direct path gives."""

from __future__ import annotations

import functools

import pytest
import torch
from conftest import TINY_RESNET, compose_cfg, tiny
from omegaconf import OmegaConf

from lrfer.config import compose_config
from lrfer.data import pipeline
from lrfer.data.degrade import parse_degradations
from lrfer.data.faces import FaceData, FaceSplit
from lrfer.data.pipeline import FaceDataModule
from lrfer.engine.run import build_parts
from lrfer.engine.trainer import Trainer


@functools.cache
def _defaults():
    """The default config (configs/degrade/default.yaml, configs/augment/default.yaml, ...), composed once."""
    return compose_config()


def toy_module(prefetch: bool, rank: int = 0, world: int = 1, device: str = "cpu") -> FaceDataModule:
    """23 faces in train and test, host-resident; training batches of 4 per rank, evaluation batches of 5."""
    g = torch.Generator().manual_seed(0)
    n = 23
    images = torch.randint(0, 256, (n, 3, 16, 16), dtype=torch.uint8, generator=g)
    split = FaceSplit(images, torch.arange(n) % 3, targets=torch.rand(n, 3, generator=g))
    data = FaceData("toy", ["a", "b", "c"], {"train": split, "test": split})
    return FaceDataModule(
        data,
        degrade_cfg=OmegaConf.merge(_defaults().degrade, {"train": ["x1", "x2"]}),
        augment_cfg=_defaults().augment,
        mean=[0.5] * 3,
        std=[0.25] * 3,
        batch_size=4 * world,
        eval_batch_size=5,
        device=torch.device(device),
        storage_device=torch.device("cpu"),
        rank=rank,
        world_size=world,
        prefetch=prefetch,
    )


@pytest.fixture
def prefetchers(monkeypatch):
    """The splits the prefetching thread served, one entry per loader started."""
    started = []

    class Recorded(pipeline._Prefetcher):
        def __init__(self, dm, plan, degs, need_hr, split="train"):
            started.append(split)
            super().__init__(dm, plan, degs, need_hr, split)

    monkeypatch.setattr(pipeline, "_Prefetcher", Recorded)
    return started


@pytest.mark.parametrize("rank", [0, 1])
def test_evaluation_batches_of_host_images_are_prefetched_and_equal_the_direct_ones(prefetchers, rank):
    """Rank ``rank`` of two: a 12- or 11-face shard in batches of 5 (the last one short), with image_hr."""
    deg = parse_degradations(["x2"])[0]
    direct = list(toy_module(False, rank, 2).eval_batches("test", deg, need_hr=True))
    assert prefetchers == []
    served = list(toy_module(True, rank, 2).eval_batches("test", deg, need_hr=True))
    assert prefetchers == ["test"]
    assert [len(b["label"]) for b in served] == [len(b["label"]) for b in direct] == [5, 5, 2 - rank]
    for a, b in zip(direct, served):
        assert a.keys() == b.keys()
        assert all(torch.equal(a[k], b[k]) for k in a), [k for k in a if not torch.equal(a[k], b[k])]


def test_an_empty_evaluation_shard_starts_no_prefetching_thread(prefetchers):
    dm = toy_module(True, rank=30, world=40)  # 23 faces for 40 ranks: rank 30 has none
    assert list(dm.eval_batches("test", parse_degradations(["x2"])[0])) == []
    assert prefetchers == []


def test_evaluation_metrics_from_host_images_equal_those_from_the_device_path(tmp_path, prefetchers):
    """The trainer's evaluation with ``dataset.on_device=false`` (prefetching host path, also on a CPU)
    gives the rows of ``on_device=true`` for every degradation."""
    rows = {}
    for on_device in ("true", "false"):
        cfg = compose_cfg(*tiny(tmp_path / on_device, TINY_RESNET, f"dataset.on_device='{on_device}'"))
        parts = build_parts(cfg)
        trainer = Trainer(parts.spec, parts.method, parts.datamodule)
        rows[on_device] = trainer.evaluate("test", ["x1", "x2", "x4+noise8"], keep_confusion=True)
    assert prefetchers == ["test"] * 3
    assert rows["true"] == rows["false"]


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_evaluation_batches_of_host_images_come_through_pinned_buffers_on_the_gpu(prefetchers):
    deg = parse_degradations(["x2"])[0]
    served = toy_module(True, device="cuda")
    assert served.pin
    direct = list(toy_module(False, device="cuda").eval_batches("test", deg, need_hr=True))
    for a, b in zip(direct, served.eval_batches("test", deg, need_hr=True)):
        assert all(torch.equal(a[k], b[k]) for k in a)
    assert prefetchers == ["test"]

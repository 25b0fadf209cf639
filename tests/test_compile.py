"""trainer.compile=true compiles every network a stage runs (DRGFER's experts, FSR-FER's classifier parts).

A recording torch.compile backend notes the parameters that enter each compiled graph; every parameter a
stage trains (and the frozen networks it runs) must have gone through one, and every stage must have run
compiled graphs. The graphs then run eagerly, so the test needs no C++ compiler and takes seconds.
"""

from __future__ import annotations

import pytest
import torch
from conftest import TINY_FSRFER, TINY_RESNET, compose_cfg, tiny

import lrfer.engine.trainer as trainer_mod
from lrfer.core.errors import UserError
from lrfer.engine.run import build_parts
from lrfer.engine.trainer import Trainer

CASES = {
    "baseline": ["degrade.train=[x1,x2]", TINY_RESNET],
    "drgfer": ["method=drgfer", "method.factors=[x1,x4]", TINY_RESNET],
    "fsrfer": TINY_FSRFER,
    "da": ["method=da", "method.factors=[x1,x4]", TINY_RESNET],
}


class Recorder:
    """A torch.compile backend that records the parameters each graph runs with, and runs it eagerly."""

    def __init__(self) -> None:
        self.params: set[int] = set()
        self.graphs = 0
        self.calls = 0

    def __call__(self, gm, example_inputs):
        self.graphs += 1

        def run(*args):
            # at every call: a graph compiled for one expert is reused for its twins with their weights
            self.calls += 1
            self.params.update(id(t) for t in args if isinstance(t, torch.nn.Parameter))
            return gm.forward(*args)

        return run


@pytest.fixture
def recorder(monkeypatch):
    torch._dynamo.reset()
    rec = Recorder()
    monkeypatch.setattr(trainer_mod, "COMPILE_BACKEND", rec)
    yield rec
    torch._dynamo.reset()


def _trainer(tmp, *overrides):
    cfg = compose_cfg(*tiny(tmp, *overrides, "trainer.compile=true", "trainer.batch_size=16"))
    parts = build_parts(cfg)
    trainer = Trainer(parts.spec, parts.method, parts.datamodule)
    return cfg, parts, trainer


@pytest.mark.parametrize("name", list(CASES))
def test_every_network_a_stage_runs_is_compiled(tmp_path, recorder, name):
    _, parts, trainer = _trainer(tmp_path, *CASES[name])
    method = parts.method
    for si, stage in enumerate(method.stages()):
        recorder.params.clear()
        calls_before = recorder.calls
        run = trainer.prepare_stage(si, stage)
        two_steps = (b for _, b in zip(range(2), trainer.epoch_batches(run, 0)))
        trainer.train_one_epoch(run, 0, batches=two_steps)
        trained = {
            id(p): n
            for n, p in method.named_parameters()
            for step in stage.steps
            if any(p is q for q in method.stage_parameters(stage, step))
        }
        eager = sorted(n for i, n in trained.items() if i not in recorder.params)
        assert not eager, (
            f"{name} stage {stage.name}: parameters trained outside compiled graphs: {eager[:5]}"
        )
        assert recorder.calls > calls_before  # the stage ran compiled graphs (new or reused ones)
        if name == "fsrfer" and stage.name != "extractor":
            frozen = [n for n, p in method.classifier.named_parameters() if id(p) not in recorder.params]
            # the frozen extractor's trunk and head run compiled through feature_map / embed / classify
            assert not frozen, f"fsrfer stage {stage.name}: classifier parts run eagerly: {frozen[:5]}"
    assert recorder.graphs > 0


def test_compile_mode_is_checked(tmp_path):
    cfg = compose_cfg(*tiny(tmp_path, "trainer.compile_mode=fastest"))
    with pytest.raises(UserError, match=r"trainer\.compile_mode=fastest must be one of default"):
        build_parts(cfg)


def test_networks_of_drgfer_are_the_rrn_and_every_expert(tmp_path):
    cfg = compose_cfg(*tiny(tmp_path, *CASES["drgfer"]))
    method = build_parts(cfg).method
    assert method.networks() == [method.rrn, *method.mrafer.experts]


def test_under_ddp_the_ddp_wrapped_method_is_compiled(tmp_path, recorder):
    """A one-process gloo group makes the trainer wrap the method in DDP; it then compiles the wrapper."""
    import torch.distributed as tdist
    from torch.nn.parallel import DistributedDataParallel

    store = tdist.FileStore(str(tmp_path / "store"), 1)
    tdist.init_process_group("gloo", store=store, rank=0, world_size=1)
    try:
        _, parts, trainer = _trainer(tmp_path, *CASES["baseline"], "trainer.max_epochs=1")
        run = trainer.prepare_stage(0, parts.method.stages()[0])
        trainer.train_one_epoch(run, 0, batches=(b for _, b in zip(range(2), trainer.epoch_batches(run, 0))))
        assert isinstance(trainer.model, torch._dynamo.eval_frame.OptimizedModule)
        assert isinstance(trainer.model._orig_mod, DistributedDataParallel)
        trained = {id(p) for p in parts.method.parameters()}
        assert trained <= recorder.params
    finally:
        tdist.destroy_process_group()


@pytest.mark.slow  # 9 stages compiled under DDP (a gloo world of one process), ~30 s on 2 cores
def test_every_one_of_nine_stages_runs_compiled_under_ddp(tmp_path, recorder):
    """DDP + compile with 9 stages (DRGFER with 8 factors): dynamo's recompile limit (8 per code object:
    the stage's training step is guarded on its stage) must not leave the last stage's step uncompiled."""
    import torch._dynamo.utils as dynamo_utils
    import torch.distributed as tdist

    tdist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        _, _, trainer = _trainer(
            tmp_path, "method._target_=toy_methods.ManyStages", "trainer.max_epochs=1", "dataset.num_train=32"
        )
        per_stage = []
        real = trainer.train_one_epoch

        def counted(run, epoch, *args, **kwargs):
            out = real(run, epoch, *args, **kwargs)
            limit = [k for k in dynamo_utils.counters["unimplemented"] if "recompile limit" in k]
            per_stage.append((type(trainer.model).__name__, len(limit)))
            return out

        trainer.train_one_epoch = counted
        trainer.fit()
    finally:
        tdist.destroy_process_group()
    assert len(per_stage) == 9
    assert all(kind == "OptimizedModule" for kind, _ in per_stage)
    assert all(hits == 0 for _, hits in per_stage), f"recompile limit hit (stage, hits): {per_stage}"

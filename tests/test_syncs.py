"""Host-device synchronisations per training step, counted on the CPU (see lrfer.engine.syncs).

Every stage of baseline (mixed factors), mstrain, DRGFER (experts and RRN) and FSR-FER (extractor,
pre-training, GAN) runs a few steps of the real trainer loop under a SyncCounter. The steady-state steps
(all but the first, whose count also holds the epoch's set-up) must have no synchronising operation,
except FSR-FER's eigendecompositions (one per covariance-pooling call: the solver's status is read on the
host). The counts are recorded in experiments/perf/README.md; ``python -m pytest tests/test_syncs.py -s``
prints them.
"""

from __future__ import annotations

import pytest
import torch
from conftest import TINY_FSRFER, TINY_RESNET, compose_cfg, tiny

from lrfer.engine.run import build_parts
from lrfer.engine.syncs import SyncCounter, phased
from lrfer.engine.trainer import Trainer

CASES = {
    "baseline": ["degrade.train=[x1,x2,x4]", TINY_RESNET],
    "mstrain": ["method=mstrain", TINY_RESNET],
    "drgfer": ["method=drgfer", "method.factors=[x1,x2,x4]", TINY_RESNET],
    "fsrfer": TINY_FSRFER,
}
#: What each stage may still have per steady-state step (documented in experiments/perf/README.md).
ALLOWED = {
    ("fsrfer", "extractor"): {"linalg_eigh": 1},  # CovPoolFER's ReEig: one eigh per forward
    ("fsrfer", "pretrain"): {"linalg_eigh": 1},  # the frozen extractor's features of LR + HR, one call
    ("fsrfer", "gan"): {"linalg_eigh": 1},  # computed once for both GAN steps
}


def stage_counts(tmp, *overrides, steps=3):
    """``{stage: [Counter of step 0, step 1, ...]}`` over ``steps`` steps of every stage of a method."""
    cfg = compose_cfg(*tiny(tmp, *overrides, "trainer.batch_size=16"))
    parts = build_parts(cfg)
    trainer = Trainer(parts.spec, parts.method, parts.datamodule)
    results = {}
    for si, stage in enumerate(parts.method.stages()):
        run = trainer.prepare_stage(si, stage)
        counter = SyncCounter()
        first_steps = (b for _, b in zip(range(steps), trainer.epoch_batches(run, 0)))
        with counter:
            trainer.train_one_epoch(run, 0, batches=phased(first_steps, counter))
        results[stage.name] = [dict(counter.counts.get(f"step {i}", {})) for i in range(steps)]
        results[stage.name + " (epoch end)"] = dict(counter.counts.get("epoch end", {}))
    return results


@pytest.mark.parametrize("name", list(CASES))
def test_no_host_sync_in_steady_state_steps(tmp_path, name):
    counts = stage_counts(tmp_path, *CASES[name])
    print(f"\n{name}: {counts}")
    for stage, per_step in counts.items():
        if stage.endswith("(epoch end)"):
            continue
        allowed = ALLOWED.get((name, stage), {})
        for i, step in enumerate(per_step[1:], start=1):
            extra = {k: v for k, v in step.items() if v > allowed.get(k, 0)}
            assert not extra, f"{name} stage {stage} step {i}: synchronising operations {step}"


def test_counter_sees_the_usual_culprits():
    x = torch.arange(6.0)
    with SyncCounter() as counter:
        counter.phase = "a"
        _ = x[0].item(), int(x[1]), bool(x[2] > 0), torch.nonzero(x > 2), x[x > 3], x.tolist()
        _ = torch.tensor([1.0, 2.0], device="cpu"), torch.arange(3).repeat_interleave(torch.tensor([1, 2, 3]))
    seen = counter.counts["a"]
    assert seen["_local_scalar_dense"] == 3 and seen["nonzero"] == 1 and seen["boolean_index"] == 1
    assert seen["to_host"] == 1 and seen["from_python"] == 1 and seen["repeat_interleave"] == 1
    with SyncCounter() as counter:
        counter.phase = "b"
        _ = torch.tensor([1.0, 2.0]), x.repeat_interleave(2), x[torch.tensor([0, 2])]
    assert counter.total("b") == 0


def test_optimizer_step_counters_are_host_scalars_not_syncs():
    net = torch.nn.Linear(3, 2)
    opt = torch.optim.Adam(net.parameters())
    with SyncCounter() as counter:
        for i in range(2):
            counter.phase = f"step {i}"
            net(torch.ones(4, 3)).sum().backward()
            opt.step()
    assert counter.total("step 0") == 0 and counter.total("step 1") == 0

"""Evaluation without host waits per batch (issue 28, defect 5): the confusion counts are a fixed-size
``scatter_add_`` on the device (not ``bincount``, which reads the range on the host) and the method's
declared values are summed there too; the host reads everything once, after the last batch."""

from __future__ import annotations

import pytest
import torch
from conftest import TINY_RESNET, compose_cfg, tiny

from lrfer.engine.run import build_parts
from lrfer.engine.syncs import SyncCounter
from lrfer.engine.trainer import Trainer


def labelled(batches, counter: SyncCounter, label: str):
    """Yield ``batches`` with the counter's phase ``<label> batch <i>`` (assembling batch i and evaluating
    it), then ``after`` (what follows the last batch)."""
    it = iter(batches)
    i = 0
    while True:
        counter.phase = f"{label} batch {i}"
        try:
            batch = next(it)
        except StopIteration:
            counter.phase = "after"
            return
        yield batch
        i += 1


def evaluation_counts(tmp, *overrides, labels=("x1", "x4")):
    """``{phase: Counter}`` of one evaluation: ``<degradation> batch <i>`` per batch, ``after`` what follows
    the last degradation's last batch."""
    small = ["dataset.num_train=28", "dataset.num_val=14", "dataset.num_test=40"]
    small.append("trainer.eval_batch_size=16")  # three batches per degradation, the last one short
    cfg = compose_cfg(*tiny(tmp, TINY_RESNET, *small, *overrides))
    parts = build_parts(cfg)
    trainer = Trainer(parts.spec, parts.method, parts.datamodule)
    dm = parts.datamodule
    trainer.evaluate("test", list(labels))  # views made, first calls done
    counter = SyncCounter()
    real = dm.eval_batches
    dm.eval_batches = lambda split, deg, **k: labelled(real(split, deg, **k), counter, deg.label)
    with counter:
        rows = trainer.evaluate("test", list(labels))
    assert all(rows[d]["n"] == len(dm.splits["test"]) for d in labels)
    return {phase: dict(c) for phase, c in counter.counts.items() if c}


CASES = {
    "baseline": [TINY_RESNET, "dataset.on_device='true'"],
    "baseline-host": [TINY_RESNET, "dataset.on_device='false'"],  # prefetched from host memory
    "declared-values": ["method._target_=toy_methods.TwoStageToy"],  # sums is_x1 per degradation
    "drgfer": ["method=drgfer", "method.factors=[x1,x4]", TINY_RESNET],  # routed by the RRN
}
#: What a method may still read per evaluation batch: MRAFER's group sizes (one read, data-dependent).
ALLOWED = {"drgfer": {"to_host": 1}}


@pytest.mark.parametrize("name", list(CASES))
def test_no_host_sync_per_evaluation_batch(tmp_path, name):
    counts = evaluation_counts(tmp_path, *CASES[name])
    print(counts)
    allowed = ALLOWED.get(name, {})
    per_batch = {
        phase: c
        for phase, c in counts.items()
        if phase != "after" and any(v > allowed.get(k, 0) for k, v in c.items())
    }
    assert not per_batch, per_batch
    # after the last batch: one copy to the host of the confusion counts and one of the declared values'
    # sums; the metrics are computed from those host copies (the counter counts host tensors' reads too)
    assert counts["after"]["to_host"] == 2, counts


def test_the_counter_sees_value_reads_and_bincount_under_inference_mode():
    """Evaluation runs under ``torch.inference_mode``, where ``.item()`` arrives as ``aten.item``."""
    x = torch.arange(6)
    with SyncCounter() as counter, torch.inference_mode():
        counter.phase = "eval"
        _ = x.sum().item(), float(x[1]), torch.bincount(x)
    assert counter.counts["eval"]["_local_scalar_dense"] == 2 and counter.counts["eval"]["bincount"] == 1

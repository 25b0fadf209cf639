"""Run under torchrun (gloo, CPU): one scenario of the trainer's multi-process behaviour, results per rank.

``python -m torch.distributed.run --standalone --nproc_per_node=2 tests/ddp_worker.py SCENARIO OUT_DIR
[override ...]`` writes ``OUT_DIR/<scenario>-rank<r>.json``. Scenarios:

* ``evaluate``: the validation metrics of every stage of the method (the rows each rank returns);
* ``syncs``: host synchronisations per training step of every stage, counted under DDP (see
  ``tests/test_syncs.py``);
* ``checkpoints``: a fit with a run folder, recording each rank's checkpoint work (state dicts taken,
  host copies, files written).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
from conftest import compose_cfg, end_torchrun_worker

from lrfer.data.degrade import parse_degradations
from lrfer.engine import distributed as dist
from lrfer.engine.run import build_parts
from lrfer.engine.syncs import SyncCounter, phased
from lrfer.engine.trainer import Trainer


def evaluate(trainer: Trainer, cfg) -> dict:
    rows = {}
    for stage in trainer.method.stages():
        trainer.method.on_stage_start(stage)
        labels = stage.val_degrade or cfg.degrade.val or cfg.degrade.train
        labels = [d.label for d in parse_degradations(labels)]
        rows[stage.name] = trainer.evaluate("val", labels, stage)
    rows["test"] = trainer.evaluate("test", list(cfg.degrade.test))
    return rows


def syncs(trainer: Trainer, cfg, steps: int = 3) -> dict:
    """``{stage: [Counter of step 0, step 1, ...]}`` over ``steps`` DDP training steps of every stage."""
    results = {}
    for si, stage in enumerate(trainer.method.stages()):
        run = trainer.prepare_stage(si, stage)
        counter = SyncCounter()
        first_steps = (b for _, b in zip(range(steps), trainer.epoch_batches(run, 0)))
        with counter:
            trainer.train_one_epoch(run, 0, batches=phased(first_steps, counter))
        results[stage.name] = [dict(counter.counts.get(f"step {i}", {})) for i in range(steps)]
        results["wrapped " + stage.name] = type(trainer.model).__name__
    return results


def checkpoints(trainer: Trainer, cfg) -> dict:
    from lrfer.engine import checkpoint_writer

    work = {"state_dicts": 0, "host_copies": 0, "files": 0}
    real_state, real_copy, real_write = (
        checkpoint_writer.checkpoint_state,
        checkpoint_writer.host_copy,
        checkpoint_writer.write_file,
    )

    def counted(name, real):
        def run(*args, **kwargs):
            work[name] += 1
            return real(*args, **kwargs)

        return run

    checkpoint_writer.checkpoint_state = counted("state_dicts", real_state)
    checkpoint_writer.host_copy = counted("host_copies", real_copy)
    checkpoint_writer.write_file = counted("files", real_write)
    try:
        trainer.fit()
    finally:
        checkpoint_writer.checkpoint_state, checkpoint_writer.host_copy, checkpoint_writer.write_file = (
            real_state,
            real_copy,
            real_write,
        )
    return work


def main() -> None:
    scenario, out = sys.argv[1], Path(sys.argv[2])
    cfg = compose_cfg(*sys.argv[3:])
    parts = build_parts(cfg)
    run_dir = out / "run" if scenario == "checkpoints" else None
    trainer = Trainer.from_config(cfg, parts.method, parts.datamodule, run_dir=run_dir)
    result = {"evaluate": evaluate, "syncs": syncs, "checkpoints": checkpoints}[scenario](trainer, cfg)
    result["world_size"] = dist.world_size()
    (out / f"{scenario}-rank{dist.rank()}.json").write_text(json.dumps(result))
    # every rank's last collective completes on every rank before one ends (without it, a loaded machine saw
    # rank 1 abort in gloo's teardown: "terminate called without an active exception"), and no teardown
    # runs, which can deadlock (conftest.end_torchrun_worker)
    end_torchrun_worker()


if __name__ == "__main__":
    torch.set_num_threads(1)
    main()

"""Test a finished run's model again: at other degradations, from its checkpoint on disk.

``lrfer-evaluate`` re-evaluates a run at any labels; the leaderboard tests a run it reuses from the papers'
findings at the labels that run's own test did not cover (:func:`retest_at`). A checkpoint read back from
disk is trusted only when it reproduces one of the run's own test rows (the same faces, the same
degradation, the same network: the same accuracy).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from lrfer.core.errors import UserError
from lrfer.data.degrade import parse_degradations
from lrfer.engine.loading import load_method_weights, load_run_config
from lrfer.engine.resolve import resolve
from lrfer.engine.run import build_parts
from lrfer.engine.trainer import Trainer
from lrfer.methods.base import Method


def evaluate_run(
    run_dir: Path,
    labels: list[str] | None = None,
    split: str = "test",
    checkpoint: str = "best",
    overrides: list[str] | None = None,
    prepare: Callable[[Method], None] | None = None,
) -> dict:
    """A finished run's ``checkpoint`` evaluated on ``split`` at ``labels`` (default: the run's
    ``degrade.test``): ``{"method", "dataset", "checkpoint", "checkpoint_epoch", split: rows}``, the rows as
    in ``metrics.json``. ``prepare(method)`` is called with the loaded method before the evaluation (a
    diagnosis registers its forward hooks there). Writes nothing."""
    spec = resolve(load_run_config(run_dir, overrides or [], validate=False))
    cfg = spec.cfg
    degradations = parse_degradations(labels) if labels else spec.degrade.test
    parts = build_parts(spec)
    meta = load_method_weights(parts.method, run_dir, checkpoint)
    if prepare is not None:
        prepare(parts.method)
    trainer = Trainer(spec, parts.method, parts.datamodule)
    rows = trainer.evaluate(split, degradations, keep_confusion=True)
    return {
        "method": cfg.method.name,
        "dataset": cfg.dataset.name,
        "checkpoint": checkpoint,
        "checkpoint_epoch": meta.get("epoch"),
        split: rows,
    }


def retest_at(run_dir: Path, labels: list[str]) -> dict:
    """The test rows of the finished run in ``run_dir`` at ``labels``, from the checkpoint (``best``, else
    ``last``) that reproduces the accuracy of the first label of the run's own test (``metrics.json``) to
    1e-6: ``{"checkpoint", "checkpoint_epoch", "checked_against", "test": rows}``. Stops
    (:class:`UserError`) when neither checkpoint reproduces it: the run on disk is not the run tested."""
    metrics = json.loads((Path(run_dir) / "metrics.json").read_text())
    own = metrics.get("test", {})
    if not own:
        raise UserError(f"{run_dir}/metrics.json has no test rows to check a checkpoint against")
    check = next(iter(own))
    wanted = float(own[check]["acc"])
    found = {}
    for checkpoint in ("best", "last"):
        if not (Path(run_dir) / "checkpoints" / f"{checkpoint}.pt").is_file():
            continue
        result = evaluate_run(Path(run_dir), [check, *labels], checkpoint=checkpoint)
        got = float(result["test"][check]["acc"])
        found[checkpoint] = got
        if abs(got - wanted) <= 1e-6:
            rows = {label: row for label, row in result["test"].items() if label in labels}
            epoch = result["checkpoint_epoch"]
            return {
                "checkpoint": checkpoint,
                "checkpoint_epoch": epoch,
                "checked_against": check,
                "test": rows,
            }
    seen = ", ".join(f"{k}.pt {v:.4f}" for k, v in found.items()) or "no checkpoint in checkpoints/"
    raise UserError(
        f"{run_dir}: no checkpoint reproduces its own test accuracy at {check} ({wanted:.4f}; {seen}): "
        "train that run again or leave it out"
    )

"""The trainer's guarantees, each as one specification on a seconds-long run (the baseline method with a
two-layer network on generated faces):

* the best epoch of a stage is picked on the validation split only, by strict improvement (the first of
  equal scores wins), ``best.pt`` holds it, and ``trainer.restore_best`` loads it back (from the run folder,
  or from memory without one); validation runs every ``trainer.val_every`` epochs and after the last;
* ``trainer.grad_clip`` bounds the norm of every optimiser step's gradient;
* every epoch's randomness derives from (seed, stage, epoch, rank): it repeats, and differs between
  epochs, stages and torchrun ranks;
* an epoch's reported loss and training accuracy are the mean over its steps and samples.

The validation scores are scripted (the real evaluation runs, then its accuracy is replaced), so which
epoch is best never depends on what a tiny network happens to learn.
"""

from __future__ import annotations

import types

import pytest
import torch
from conftest import TINY_RESNET, compose_cfg, tiny

import lrfer.engine.trainer as trainer_module
from lrfer.engine.run import build_parts
from lrfer.engine.trainer import Trainer

pytestmark = pytest.mark.usefixtures("one_thread")

#: No learning-rate decay: the weights change at every epoch, so every epoch's weights are distinct.
CONSTANT_LR = ("trainer.scheduler.name=none",)


def _trainer(tmp_path, *overrides, run_dir: str | None = "run"):
    cfg = compose_cfg(*tiny(tmp_path, TINY_RESNET, *CONSTANT_LR, *overrides))
    parts = build_parts(cfg)
    folder = tmp_path / run_dir if run_dir else None
    trainer = Trainer.from_config(cfg, parts.method, parts.datamodule, run_dir=folder)
    return trainer, parts.method


def _state(method) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in method.state_dict().items()}


def _same(a: dict, b: dict) -> bool:
    return set(a) == set(b) and all(torch.equal(a[k], b[k]) for k in a)


def _scripted_validation(monkeypatch, scores: list[float]) -> dict[str, list]:
    """Validation reports ``scores[i]`` as its accuracy at its i-th call; records the splits evaluated,
    the epochs validated and the weights at each validation."""
    real = Trainer.evaluate
    seen: dict[str, list] = {"splits": [], "weights": []}

    def evaluate(self, split, degradations, stage=None, keep_confusion=False):
        seen["splits"].append(split)
        rows = real(self, split, degradations, stage, keep_confusion)
        if split == "val":
            seen["weights"].append(_state(self.method))
            for row in rows.values():
                row["acc"] = scores[len(seen["weights"]) - 1]
        return rows

    monkeypatch.setattr(Trainer, "evaluate", evaluate)
    return seen


@pytest.mark.parametrize("run_dir", ["run", None], ids=["run-folder", "in-memory"])
def test_the_first_best_validation_epoch_is_kept_and_restored(tmp_path, monkeypatch, run_dir):
    """Scores 0.5, 0.8, 0.8, 0.6: epoch 2 is the best (epoch 3 only equals it). The stage ends with epoch
    2's weights, best.pt holds them, and nothing but the validation split was evaluated."""
    seen = _scripted_validation(monkeypatch, [0.5, 0.8, 0.8, 0.6])
    trainer, method = _trainer(tmp_path, "trainer.max_epochs=4", run_dir=run_dir)
    (summary,) = trainer.fit()
    assert seen["splits"] == ["val"] * 4  # never the test split while training
    assert (summary.best_epoch, summary.best_val, summary.epochs) == (2, 0.8, 4)
    assert [h["epoch"] for h in trainer.val_history] == [1, 2, 3, 4]
    assert [h["score"] for h in trainer.val_history] == [0.5, 0.8, 0.8, 0.6]
    assert not _same(seen["weights"][1], seen["weights"][3])  # the last epoch is another model
    assert _same(_state(method), seen["weights"][1])  # restore_best: epoch 2's weights
    if run_dir:
        best = torch.load(tmp_path / "run" / "checkpoints" / "best.pt", weights_only=True)
        assert (best["epoch"], best["score"], best["stage_index"]) == (2, 0.8, 0)
        assert best["val"] == trainer.val_history[1]["val"]  # the validation metrics of the best epoch
        assert _same(best["method"], seen["weights"][1])


def test_without_restore_best_the_stage_ends_with_its_last_epoch(tmp_path, monkeypatch):
    seen = _scripted_validation(monkeypatch, [0.5, 0.8, 0.8, 0.6])
    trainer, method = _trainer(tmp_path, "trainer.max_epochs=4", "trainer.restore_best=false")
    (summary,) = trainer.fit()
    assert summary.best_epoch == 2
    assert _same(_state(method), seen["weights"][3])
    best = torch.load(tmp_path / "run" / "checkpoints" / "best.pt", weights_only=True)
    assert best["epoch"] == 2 and _same(best["method"], seen["weights"][1])


def test_a_later_strictly_better_epoch_replaces_the_best(tmp_path, monkeypatch):
    seen = _scripted_validation(monkeypatch, [0.3, 0.2, 0.4])
    trainer, method = _trainer(tmp_path, "trainer.max_epochs=3")
    (summary,) = trainer.fit()
    assert (summary.best_epoch, summary.best_val) == (3, 0.4)
    assert _same(_state(method), seen["weights"][2])


def test_validation_runs_every_val_every_epochs_and_after_the_last(tmp_path, monkeypatch):
    _scripted_validation(monkeypatch, [0.5, 0.6])
    trainer, _ = _trainer(tmp_path, "trainer.max_epochs=4", "trainer.val_every=3")
    (summary,) = trainer.fit()
    assert [h["epoch"] for h in trainer.val_history] == [3, 4]
    assert (summary.best_epoch, summary.best_val) == (4, 0.6)


def _one_epoch(trainer, method, si: int = 0, epoch: int = 0):
    """One epoch of the method's first stage, run as stage ``si``, through the trainer's public API."""
    run = trainer.prepare_stage(si, method.stages()[0])
    return trainer.train_one_epoch(run, epoch)


def _flat_params(method) -> torch.Tensor:
    return torch.cat([p.detach().flatten().clone() for p in method.parameters()])


@pytest.mark.parametrize("clip", [1e-3, None], ids=["clipped", "unclipped"])
def test_grad_clip_bounds_the_norm_of_each_step(tmp_path, clip):
    """Plain SGD (lr 1, no momentum, no weight decay) for one step: the parameters move by the gradient
    itself, whose norm trainer.grad_clip caps; without it, the step is far larger than the cap."""
    trainer, method = _trainer(
        tmp_path,
        "dataset.num_train=28",  # one batch of 28: one step
        "trainer.optimizer.name=sgd",
        "trainer.optimizer.lr=1.0",
        "trainer.optimizer.momentum=0.0",
        f"trainer.grad_clip={clip if clip else 'null'}",
        run_dir=None,
    )
    before = _flat_params(method)
    _one_epoch(trainer, method)
    step = (_flat_params(method) - before).norm().item()
    if clip:
        assert step == pytest.approx(clip, rel=1e-3)
    else:
        assert step > 10 * 1e-3


def _first_draws(monkeypatch, trainer, method, si: int, epoch: int, rank: int) -> list[float]:
    """The global RNG's first draw in every training step of one epoch, as ``rank`` of a torchrun job."""
    draws = []
    real = type(method).training_step

    def step(self, batch, stage, name):
        draws.append(torch.rand(()).item())  # what dropout or a random interpolation weight would draw
        return real(self, batch, stage, name)

    with monkeypatch.context() as m:
        m.setattr(type(method), "training_step", step)
        m.setattr(
            trainer_module,
            "dist",
            types.SimpleNamespace(**{**vars(trainer_module.dist), "rank": lambda: rank}),
        )
        _one_epoch(trainer, method, si, epoch)
    return draws


def test_each_epoch_stage_and_rank_has_its_own_repeatable_random_stream(tmp_path, monkeypatch):
    trainer, method = _trainer(tmp_path, run_dir=None)
    first = _first_draws(monkeypatch, trainer, method, si=0, epoch=0, rank=0)
    assert _first_draws(monkeypatch, trainer, method, si=0, epoch=0, rank=0) == first  # it repeats
    assert _first_draws(monkeypatch, trainer, method, si=0, epoch=1, rank=0)[0] != first[0]  # next epoch
    assert _first_draws(monkeypatch, trainer, method, si=1, epoch=0, rank=0)[0] != first[0]  # next stage
    assert _first_draws(monkeypatch, trainer, method, si=0, epoch=0, rank=1)[0] != first[0]  # another rank
    other_seed, other = _trainer(tmp_path, "seed=1", run_dir=None)
    assert _first_draws(monkeypatch, other_seed, other, si=0, epoch=0, rank=0)[0] != first[0]


def test_an_epochs_loss_and_accuracy_are_the_means_over_its_steps_and_samples(tmp_path, monkeypatch):
    trainer, method = _trainer(tmp_path, run_dir=None)  # 140 faces in batches of 28: 5 steps
    steps = []
    real = type(method).training_step

    def step(self, batch, stage, name):
        out = real(self, batch, stage, name)
        hits = (out["logits"].argmax(1) == batch["label"]).sum().item()
        steps.append((out["loss"].item(), hits, batch["label"].shape[0]))
        return out

    monkeypatch.setattr(type(method), "training_step", step)
    losses, train_acc = _one_epoch(trainer, method)
    assert len(steps) == 5
    assert losses["loss"] == pytest.approx(sum(s[0] for s in steps) / 5, rel=1e-6)
    assert train_acc == losses["train_acc"] == pytest.approx(sum(s[1] for s in steps) / 140)
    assert trainer.global_step == 5


def test_evaluation_leaves_the_method_in_the_mode_it_found(tmp_path):
    trainer, method = _trainer(tmp_path, run_dir=None)
    method.train()
    trainer.evaluate("val", ["x1"])
    assert method.training
    method.eval()
    trainer.evaluate("val", ["x1"])
    assert not method.training


def test_a_stage_selects_on_its_own_monitor_or_on_the_runs_metric_at_its_degradations(caplog):
    """``Stage.monitor``: a metric name of its own is used as given; ``True`` takes ``trainer.monitor``, or,
    for a stage validated at other degradations than the run's (a teacher on x1), its metric over those,
    with a log line saying so; ``False`` selects nothing."""
    from lrfer.methods.base import Stage

    owner = types.SimpleNamespace(cfg=types.SimpleNamespace(monitor="x4/acc"))
    assert (
        Trainer._monitor(owner, Stage("s", epochs=1, monitor="x1/balanced_acc"), ["x1"]) == "x1/balanced_acc"
    )
    assert Trainer._monitor(owner, Stage("s", epochs=1, monitor=True), ["x1", "x4"]) == "x4/acc"
    assert Trainer._monitor(owner, Stage("s", epochs=1, monitor=False), ["x4"]) is None
    with caplog.at_level("INFO", logger="lrfer.engine.trainer"):
        assert Trainer._monitor(owner, Stage("teacher", epochs=1, monitor=True), ["x1"]) == "acc"
    assert [r.getMessage() for r in caplog.records] == [
        "stage teacher is validated on ['x1']: it selects on acc"
    ]


@pytest.mark.parametrize("every", [1, 2])
def test_the_checkpoint_schedule_learns_the_training_time_per_epoch(tmp_path, monkeypatch, every):
    """After each ``last.pt`` the schedule (``checkpoint_every=auto`` adapts to it) is told the training
    seconds per epoch since the previous checkpoint. The trainer's clock is scripted: every epoch trains
    for exactly one second, so the schedule must hear 1.0 whether one or two epochs passed."""
    ticks = iter(range(10_000))
    monkeypatch.setattr(
        trainer_module,
        "time",
        types.SimpleNamespace(perf_counter=lambda: float(next(ticks)), process_time=lambda: 0.0),
    )
    heard = []
    done = trainer_module.CheckpointSchedule.done
    monkeypatch.setattr(
        trainer_module.CheckpointSchedule,
        "done",
        lambda self, cost, per_epoch: (heard.append(per_epoch), done(self, cost, per_epoch))[1],
    )
    trainer, _ = _trainer(tmp_path, "trainer.max_epochs=3", f"trainer.checkpoint_every={every}")
    trainer.fit()
    assert heard == ([1.0] * 3 if every == 1 else [1.0, 1.0])  # epochs 1, 2, 3 / epochs 2 and 3


def test_training_losses_are_logged_every_log_every_n_steps(tmp_path):
    """With a logger writing, the steps' losses reach it at global steps n, 2n, ... (5 batches an epoch,
    2 epochs, ``trainer.log_every_n_steps=2``: steps 2, 4, 6, 8, 10)."""
    from lrfer.engine.tblog import RunLogger

    written = []
    logger = RunLogger(None, enabled=False)
    logger.writer = types.SimpleNamespace(add_scalar=lambda tag, value, step: written.append((tag, step)))
    cfg = compose_cfg(*tiny(tmp_path, TINY_RESNET, *CONSTANT_LR, "trainer.log_every_n_steps=2"))
    parts = build_parts(cfg)
    Trainer.from_config(cfg, parts.method, parts.datamodule, logger=logger).fit()
    assert sorted({step for tag, step in written if tag == "train/train/loss"}) == [2, 4, 6, 8, 10]


def test_the_trainer_logs_its_device_precision_and_memory_layout(tmp_path, caplog):
    with caplog.at_level("INFO", logger="lrfer.engine.trainer"):
        _trainer(tmp_path, "trainer.max_epochs=1")
    assert "device cpu, fp32, channels_last=false" in [r.getMessage() for r in caplog.records]


def test_a_network_a_step_does_not_reach_is_left_as_it_is(tmp_path):
    """A parameter without a gradient in a step (a routed expert that got no sample) is not moved by that
    step's optimiser: no momentum, no weight decay, no Adam update from an earlier step's gradient."""
    cfg = compose_cfg(*tiny(tmp_path, "method._target_=toy_methods.AlternatingHeads", *CONSTANT_LR))
    parts = build_parts(cfg)
    trainer = Trainer.from_config(cfg, parts.method, parts.datamodule)
    run = trainer.prepare_stage(0, parts.method.stages()[0])
    batches = list(trainer.epoch_batches(run, 0))[:3]  # a, then b, then a
    trainer.train_one_epoch(run, 0, batches=batches)
    after_a, after_b = parts.method.a_at_call[1], parts.method.a_at_call[2]
    assert not torch.equal(parts.method.a_at_call[0], after_a)  # the step on a moved a
    assert torch.equal(after_a, after_b)  # the step on b left a where it was


def test_each_validated_epoch_records_its_own_cpu_seconds_training_and_validation(tmp_path, monkeypatch):
    """A clock that only training (3 s per epoch) and validation (0.5 s) advance: every history entry holds
    3.5 s, the epoch's own cost (not the run's running total), so a run's history prices each stage's
    epoch."""
    clock = {"now": 100.0}
    real_train, real_evaluate = Trainer.train_one_epoch, Trainer.evaluate

    def train_one_epoch(self, run, epoch):
        clock["now"] += 3.0
        return real_train(self, run, epoch)

    def evaluate(self, split, degradations, stage=None, keep_confusion=False):
        clock["now"] += 0.5
        return real_evaluate(self, split, degradations, stage, keep_confusion)

    monkeypatch.setattr(Trainer, "train_one_epoch", train_one_epoch)
    monkeypatch.setattr(Trainer, "evaluate", evaluate)
    monkeypatch.setattr(trainer_module.time, "process_time", lambda: clock["now"])
    trainer, _ = _trainer(tmp_path, "trainer.max_epochs=3")
    trainer.fit()
    assert [h["cpu_s"] for h in trainer.val_history] == [3.5, 3.5, 3.5]

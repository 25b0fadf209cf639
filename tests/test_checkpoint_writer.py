"""Checkpoints that do not stall training: the background writer, the schedule, partial ``last.pt`` files
and SIGTERM (lrfer.engine.checkpoint_writer, lrfer.engine.stop, the trainer's checkpoint section); and the
fixed evaluation shapes CUDA graphs need (the same toy trainer)."""

from __future__ import annotations

import os
import signal
import threading
import time

import pytest
import torch
from conftest import compose_cfg, tiny

from lrfer.core.checkpoint import load_checkpoint
from lrfer.core.errors import UserError
from lrfer.engine import checkpoint_writer
from lrfer.engine.checkpoint_writer import CheckpointSchedule, CheckpointWriter
from lrfer.engine.stop import Terminated

pytestmark = pytest.mark.usefixtures("one_thread")


def test_a_later_write_waits_for_the_previous_one_and_files_hold_the_state_at_submission(
    tmp_path, monkeypatch
):
    spans: list[tuple[str, float, float]] = []
    real = checkpoint_writer.write_file
    go = threading.Event()

    def slow(obj, path):
        start = time.perf_counter()
        go.wait(timeout=30)  # held until the test has looked: not a race against a sleep
        real(obj, path)
        spans.append((path.name, start, time.perf_counter()))

    monkeypatch.setattr(checkpoint_writer, "write_file", slow)
    weight = torch.zeros(3)
    writer = CheckpointWriter(enabled=True)
    writer.submit(tmp_path / "a.pt", lambda: {"method": {"w": weight}})
    weight += 1  # the training thread goes on at once; the file keeps the submitted values
    assert spans == []  # not written yet: in the background
    go.set()
    writer.submit(tmp_path / "b.pt", lambda: {"method": {"w": weight}})
    writer.close()
    assert [s[0] for s in spans] == ["a.pt", "b.pt"] and spans[1][1] >= spans[0][2]
    assert torch.equal(torch.load(tmp_path / "a.pt", weights_only=True)["method"]["w"], torch.zeros(3))
    assert torch.equal(torch.load(tmp_path / "b.pt", weights_only=True)["method"]["w"], torch.ones(3))


def test_a_failed_background_write_is_raised_on_the_training_thread(tmp_path, monkeypatch):
    def full(obj, path):
        raise UserError("no space left")

    monkeypatch.setattr(checkpoint_writer, "write_file", full)
    writer = CheckpointWriter(enabled=True)
    writer.submit(tmp_path / "a.pt", lambda: {"method": {}})
    with pytest.raises(UserError, match="no space"):
        writer.flush()


def test_a_disabled_writer_does_no_checkpoint_work(tmp_path):
    called = []
    writer = CheckpointWriter(enabled=False)
    writer.submit(tmp_path / "a.pt", lambda: called.append(1) or {})
    writer.close()
    assert called == [] and not (tmp_path / "a.pt").exists()


def test_checkpoint_every_n_epochs_and_always_at_stage_end_or_stop():
    schedule = CheckpointSchedule(2, budget=0.1)
    written = []
    for epoch in range(1, 6):
        if schedule.due(last_of_stage=epoch == 5, stop=False):
            written.append(epoch)
            schedule.done(cost=0.0, epoch_seconds=1.0)
    assert written == [2, 4, 5]
    schedule = CheckpointSchedule(3, budget=0.1)
    assert not schedule.due(False, False) and schedule.due(False, stop=True)


def test_auto_schedule_keeps_checkpoints_within_the_budget():
    schedule = CheckpointSchedule("auto", budget=0.1)
    assert schedule.every == 1
    schedule.done(cost=0.05, epoch_seconds=1.0)  # 5 % of an epoch: every epoch
    assert schedule.every == 1
    schedule.done(cost=0.35, epoch_seconds=1.0)  # 35 %: every 4th epoch costs 8.75 % of the training time
    assert schedule.every == 4


def _toy_trainer(tmp_path, *overrides):
    from lrfer.engine.run import build_parts
    from lrfer.engine.trainer import Trainer

    cfg = compose_cfg(*tiny(tmp_path, "method.epochs=2", "trainer.max_epochs=3", *overrides))
    cfg.method._target_ = "toy_methods.TwoStageToy"
    parts = build_parts(cfg)
    trainer = Trainer.from_config(cfg, parts.method, parts.datamodule, run_dir=tmp_path / "run")
    return trainer, parts.method


def test_a_mid_stage_last_pt_holds_only_what_the_stage_trains_and_reads_back_whole(tmp_path, monkeypatch):
    """Crashed in the student stage's second epoch: ``last.pt`` (epoch 1) holds the student and critic
    and their optimisers, not the frozen teacher; read back, the teacher comes from ``stage_start.pt``."""
    monkeypatch.setenv("LRFER_TOY_CRASH_AFTER", "15")  # teacher: 2 x 5 batches; student: 5 per epoch
    trainer, method = _toy_trainer(tmp_path)
    with pytest.raises(RuntimeError, match="interrupted"):
        trainer.fit()
    folder = tmp_path / "run" / "checkpoints"
    raw = torch.load(folder / "last.pt", weights_only=True)
    assert (raw["stage_index"], raw["epoch"]) == (1, 1)
    assert raw["method_base"] == "stage_start.pt" and set(raw["optimizers"]) == {"critic", "student"}
    assert not any(k.startswith("teacher.") for k in raw["method"])
    assert any(k.startswith("student.") for k in raw["method"]) and any(
        k.startswith("critic.") for k in raw["method"]
    )
    whole = load_checkpoint(folder / "last.pt")
    assert list(whole["method"]) == list(method.state_dict())
    for k, v in method.state_dict().items():
        if k.startswith("teacher."):  # frozen in this stage: the value it had all along
            assert torch.equal(whole["method"][k], v)
        else:
            assert torch.equal(whole["method"][k], raw["method"][k])


def test_a_finished_run_keeps_a_whole_last_pt_and_no_stage_start(tmp_path):
    trainer, _ = _toy_trainer(tmp_path, "trainer.checkpoint_every=5")
    trainer.fit()
    folder = tmp_path / "run" / "checkpoints"
    last = torch.load(folder / "last.pt", weights_only=True)
    assert "method_base" not in last and last["epoch"] == 3 and last["stage_index"] == 1
    assert sorted(p.name for p in folder.iterdir()) == ["best.pt", "last.pt"]


def test_sigterm_checkpoints_the_epoch_and_stops(tmp_path, monkeypatch):
    """SIGTERM in the first epoch of the student stage, with checkpoint_every far away: the epoch ends,
    ``last.pt`` holds it, the run stops with one line saying how to continue."""
    from toy_methods import TwoStageToy

    real = TwoStageToy.training_step

    def signalled(self, batch, stage, step):
        self.n_steps = getattr(self, "n_steps", 0) + 1
        if self.n_steps == 11:  # the student stage's first batch (its critic step)
            os.kill(os.getpid(), signal.SIGTERM)
        return real(self, batch, stage, step)

    monkeypatch.setattr(TwoStageToy, "training_step", signalled)
    trainer, _ = _toy_trainer(tmp_path, "trainer.checkpoint_every=50")
    assert threading.current_thread() is threading.main_thread()
    with pytest.raises(Terminated, match=r"SIGTERM.*trainer\.resume=true"):
        trainer.fit()
    last = torch.load(tmp_path / "run" / "checkpoints" / "last.pt", weights_only=True)
    assert (last["stage_index"], last["epoch"]) == (1, 1)
    assert signal.getsignal(signal.SIGTERM) is not trainer.stop._handle  # the handler is removed


def test_fixed_evaluation_shapes_pad_the_last_batch_and_keep_the_metrics(tmp_path):
    """reduce-overhead (CUDA graphs) needs one evaluation shape: the last, smaller batch is padded to
    ``eval_batch_size`` rows and the padding's outputs are dropped, so the metrics do not change."""
    trainer, method = _toy_trainer(tmp_path, "trainer.eval_batch_size=16")  # 56 val faces: 16+16+16+8
    plain = trainer.evaluate("val", ["x1", "x2"])
    shapes = []
    real = method.evaluate_step

    def recording(batch, stage=None):
        shapes.append(batch["image"].shape[0])
        return real(batch, stage)

    method.evaluate_step = recording
    trainer.fixed_eval_shapes = True
    assert trainer.evaluate("val", ["x1", "x2"]) == plain
    assert set(shapes) == {16} and len(shapes) == 8

"""A resumed run is the uninterrupted run: weights, optimiser state, learning rate and metrics.

Each test trains a run straight through, then trains it again and interrupts it (an exception from the
method's ``training_step`` after a number of calls: the process dies mid-epoch, after ``last.pt`` of an
earlier epoch was written), resumes it with ``trainer.resume=true`` and the run's own config, and compares
what the two runs leave behind: ``metrics.json`` and ``checkpoints/last.pt``. The runs are placed so that
the state a resume must restore matters: the learning rate has dropped before the interruption (step) or
changes every epoch (cosine), Adam's moments are non-zero, and a stage boundary lies between the
interruption and the end. The toy two-stage method (``tests/toy_methods.py``) keeps them to seconds.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import torch
from conftest import compose_cfg, tiny
from toy_methods import TwoStageToy, WarmStartToy

from lrfer.engine.run import run_training

pytestmark = pytest.mark.usefixtures("one_thread")

#: TwoStageToy with method.epochs=2: teacher 2 epochs (5 batches each, 1 call per batch), then the student
#: stage 7 epochs (5 batches each, 2 calls per batch: critic then student).
TOY = [
    "method._target_=toy_methods.TwoStageToy",
    "method.epochs=2",
    "trainer.max_epochs=null",
    "augment=default",
    "trainer.optimizer.lr=0.01",
]
TEACHER_CALLS, STUDENT_CALLS_PER_EPOCH = 2 * 5, 2 * 5


class Interrupted(RuntimeError):
    pass


def _interrupt_after(monkeypatch, cls, calls: int) -> None:
    """Make ``cls.training_step`` raise at call ``calls + 1``, like a process killed mid-epoch."""
    original = cls.training_step
    seen = {"n": 0}

    def step(self, batch, stage, name):
        seen["n"] += 1
        if seen["n"] > calls:
            raise Interrupted(f"interrupted at training step {seen['n']}")
        return original(self, batch, stage, name)

    monkeypatch.setattr(cls, "training_step", step)


def _last(run_dir: Path) -> dict:
    return torch.load(run_dir / "checkpoints" / "last.pt", weights_only=True)


def _assert_same_tensors(a, b, where: str) -> None:
    """Nested dicts/lists of tensors and numbers are equal, tensors bit for bit."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and torch.equal(a, b), where
    elif isinstance(a, dict):
        assert isinstance(b, dict) and set(a) == set(b), f"{where}: keys {sorted(a)} vs {sorted(b)}"
        for k in a:
            _assert_same_tensors(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, (list, tuple)):
        assert isinstance(b, (list, tuple)) and len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            _assert_same_tensors(x, y, f"{where}[{i}]")
    else:
        assert a == b, f"{where}: {a!r} != {b!r}"


def _lrs(state: dict) -> dict[str, list[float]]:
    return {step: [g["lr"] for g in opt["param_groups"]] for step, opt in state["optimizers"].items()}


def _assert_resumed_run_is_the_straight_run(straight: Path, resumed: Path) -> None:
    a, b = _last(straight), _last(resumed)
    assert (a["stage_index"], a["epoch"]) == (b["stage_index"], b["epoch"])
    # the position and the record of the run: step count (TensorBoard's x axis), the stage summaries
    # (best epoch and score: what restore_best and the results report) and every validation so far
    assert a["global_step"] == b["global_step"]
    assert (a["summary"], a["summaries"]) == (b["summary"], b["summaries"])
    assert [(h["stage"], h["epoch"], h["score"]) for h in a["val_history"]] == [
        (h["stage"], h["epoch"], h["score"]) for h in b["val_history"]
    ]
    assert _lrs(a) == _lrs(b)  # the learning rate (also inside optimizers, but named here)
    _assert_same_tensors(a["method"], b["method"], "weights")
    _assert_same_tensors(a["optimizers"], b["optimizers"], "optimizers")  # Adam's moments, step counts
    ma = json.loads((straight / "metrics.json").read_text())
    mb = json.loads((resumed / "metrics.json").read_text())
    for key in ("test", "val", "train", "objective"):
        assert ma[key] == mb[key], key


def _straight_and_interrupted(tmp_path, monkeypatch, overrides: list[str], calls: int, cls=TwoStageToy):
    """Train ``overrides`` straight into ``a``; train it into ``b`` interrupted after ``calls`` training
    steps, and return (a, b, the last.pt of b at the interruption) before ``b`` is resumed."""
    cfg = compose_cfg(*tiny(tmp_path, *overrides))
    run_training(cfg, tmp_path / "a")
    with monkeypatch.context() as m:
        _interrupt_after(m, cls, calls)
        with pytest.raises(Interrupted):
            run_training(cfg, tmp_path / "b")
    assert not (tmp_path / "b" / "metrics.json").exists()
    return tmp_path / "a", tmp_path / "b", _last(tmp_path / "b"), cfg


def _resume(cfg, run_dir: Path) -> None:
    cfg = cfg.copy()
    cfg.trainer.resume = True
    run_training(cfg, run_dir)


def test_resume_after_a_step_lr_drop_continues_the_uninterrupted_run(tmp_path, monkeypatch):
    """Step schedule, lr x 0.1 every 2 epochs. Interrupted in the student stage's 4th epoch (last.pt after
    its 3rd: the lr has dropped once, the next drop comes after the 4th): the resumed run must drop it at
    the same epoch, so its weights, Adam state, lr and metrics equal the straight run's."""
    overrides = [*TOY, "trainer.scheduler.name=step", "trainer.scheduler.step_size=2"]
    calls = TEACHER_CALLS + 3 * STUDENT_CALLS_PER_EPOCH + 3
    straight, cut, at_cut, cfg = _straight_and_interrupted(tmp_path, monkeypatch, overrides, calls)
    assert (at_cut["stage_index"], at_cut["epoch"]) == (1, 3)
    assert _lrs(at_cut) == {"critic": [pytest.approx(0.05)], "student": [pytest.approx(0.001)]}  # one drop
    assert at_cut["global_step"] == 2 * 5 + 3 * 5  # batches trained: teacher 2 epochs, student 3
    _resume(cfg, cut)
    assert _last(cut)["global_step"] == 2 * 5 + 7 * 5
    assert _lrs(_last(straight)) == {"critic": [pytest.approx(5e-4)], "student": [pytest.approx(1e-5)]}
    _assert_resumed_run_is_the_straight_run(straight, cut)


def test_resume_with_a_cosine_schedule_continues_the_uninterrupted_run(tmp_path, monkeypatch):
    """Cosine over the student stage's 7 epochs: the lr differs at every epoch, so a resume that restarts
    the schedule (or rebuilds it for another length) gives other weights."""
    overrides = [*TOY, "trainer.scheduler.name=cosine", "trainer.scheduler.min_lr=0.0001"]
    calls = TEACHER_CALLS + 4 * STUDENT_CALLS_PER_EPOCH + 1
    straight, cut, at_cut, cfg = _straight_and_interrupted(tmp_path, monkeypatch, overrides, calls)
    assert (at_cut["stage_index"], at_cut["epoch"]) == (1, 4)
    assert 0.001 < _lrs(at_cut)["student"][0] < 0.01
    _resume(cfg, cut)
    _assert_resumed_run_is_the_straight_run(straight, cut)


def test_resume_across_a_stage_boundary_continues_the_uninterrupted_run(tmp_path, monkeypatch):
    """Interrupted in the teacher stage's 2nd (last) epoch: the resumed run finishes the teacher, restores
    its best epoch, starts the student stage with fresh optimisers and trains it as the straight run did."""
    overrides = [*TOY, "trainer.scheduler.name=step", "trainer.scheduler.step_size=1"]
    straight, cut, at_cut, cfg = _straight_and_interrupted(tmp_path, monkeypatch, overrides, 7)
    assert (at_cut["stage_index"], at_cut["epoch"]) == (0, 1)
    _resume(cfg, cut)
    _assert_resumed_run_is_the_straight_run(straight, cut)


def test_a_stage_that_initialises_a_network_at_its_start_resumes_from_the_checkpoint(tmp_path, monkeypatch):
    """The student stage starts from the teacher's weights (on_stage_start). Resumed in its 3rd epoch, the
    student continues from last.pt, not from a fresh copy of the teacher."""
    overrides = [*TOY, "method._target_=toy_methods.WarmStartToy"]
    calls = TEACHER_CALLS + 2 * STUDENT_CALLS_PER_EPOCH + 1
    straight, cut, at_cut, cfg = _straight_and_interrupted(
        tmp_path, monkeypatch, overrides, calls, WarmStartToy
    )
    assert (at_cut["stage_index"], at_cut["epoch"]) == (1, 2)
    _resume(cfg, cut)
    _assert_resumed_run_is_the_straight_run(straight, cut)


@pytest.mark.slow  # GME-Net teacher then student, three runs: ~40 s on 2 cores
def test_a_gmenet_run_interrupted_at_its_student_stage_resumes_exactly(tmp_path, monkeypatch):
    """GME-Net, interrupted in the student stage's first epoch (last.pt: the teacher's last epoch). The
    resumed run restores the teacher's best epoch, freezes it and distils the student exactly as the
    straight run did: the same weights (teacher and student), Adam state, lr and metrics (kd included)."""
    from lrfer.methods.gmenet import GMENetMethod

    overrides = [
        "method=gmenet",
        "method.width=8",
        "method.layers=[1,1,1,1]",
        "method.epochs=2",
        "trainer.scheduler.name=step",
        "trainer.scheduler.step_size=1",
    ]
    straight, cut, at_cut, cfg = _straight_and_interrupted(tmp_path, monkeypatch, overrides, 12, GMENetMethod)
    assert (at_cut["stage_index"], at_cut["epoch"]) == (0, 2)
    _resume(cfg, cut)
    _assert_resumed_run_is_the_straight_run(straight, cut)
    assert "kd" in json.loads((cut / "metrics.json").read_text())["train"]["stages"]["student"]


def test_a_resumed_runs_cpu_time_counts_every_start_up_to_the_checkpoint_it_resumed_from(
    tmp_path, monkeypatch
):
    """A CPU clock that only training steps advance (1 s each), back at 0 in each new process: the resumed
    run's ``metrics.json`` ``cpu_s`` is the uninterrupted run's, its first start's seconds up to the
    checkpoint it resumed from included (the steps redone after that checkpoint counted once)."""
    clock = {"now": 0.0}
    original = TwoStageToy.training_step

    def step(self, batch, stage, name):
        clock["now"] += 1.0
        return original(self, batch, stage, name)

    monkeypatch.setattr(TwoStageToy, "training_step", step)
    monkeypatch.setattr(time, "process_time", lambda: clock["now"])
    cfg = compose_cfg(*tiny(tmp_path, *TOY))
    run_training(cfg, tmp_path / "a")
    straight = json.loads((tmp_path / "a" / "metrics.json").read_text())
    assert straight["cpu_s"] == TEACHER_CALLS + 7 * STUDENT_CALLS_PER_EPOCH
    clock["now"] = 0.0
    with monkeypatch.context() as m:
        _interrupt_after(m, TwoStageToy, TEACHER_CALLS + 3)
        with pytest.raises(Interrupted):
            run_training(cfg, tmp_path / "b")
    at_checkpoint = _last(tmp_path / "b")["cpu_s"]
    assert 0 < at_checkpoint <= TEACHER_CALLS + 3
    clock["now"] = 0.0  # the resume is a new process
    _resume(cfg, tmp_path / "b")
    resumed = json.loads((tmp_path / "b" / "metrics.json").read_text())
    assert (resumed["cpu_s"], resumed["cpu_s_earlier_starts"]) == (straight["cpu_s"], at_checkpoint)

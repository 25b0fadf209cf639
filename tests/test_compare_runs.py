"""scripts/compare_runs.py: two run folders are the same run only when every logged number is equal."""

from __future__ import annotations

import json
from pathlib import Path

from conftest import load_script
from torch.utils.tensorboard import SummaryWriter


def _run(folder: Path, losses: list[float], test_acc: float, wall_s: float = 1.0) -> Path:
    """A run folder as train.py leaves it: TensorBoard scalars under tb/, val/test results in metrics.json."""
    writer = SummaryWriter(log_dir=str(folder / "tb"))
    for step, loss in enumerate(losses):
        writer.add_scalar("epoch/train/loss", loss, step)
        writer.add_scalar("time/epoch_s", wall_s, step)  # a timing: never compared
    writer.close()
    metrics = {"val": {"x1": {"acc": 0.5}}, "test": {"x1": {"acc": test_acc}}, "duration_s": wall_s}
    (folder / "metrics.json").write_text(json.dumps(metrics))
    return folder


def test_identical_runs_pass_whatever_their_wall_times(tmp_path, capsys):
    a = _run(tmp_path / "a", [1.0, 0.5], 0.75, wall_s=1.0)
    b = _run(tmp_path / "b", [1.0, 0.5], 0.75, wall_s=9.0)
    assert load_script("compare_runs").main([str(a), str(b)]) == 0
    assert "identical" in capsys.readouterr().out


def test_one_differing_epoch_loss_fails_and_names_its_tag(tmp_path, capsys):
    a = _run(tmp_path / "a", [1.0, 0.5], 0.75)
    b = _run(tmp_path / "b", [1.0, 0.5000001], 0.75)
    assert load_script("compare_runs").main([str(a), str(b)]) == 1
    assert "tensorboard epoch/train/loss" in capsys.readouterr().out


def test_a_differing_test_accuracy_fails(tmp_path, capsys):
    a = _run(tmp_path / "a", [1.0], 0.75)
    b = _run(tmp_path / "b", [1.0], 0.76)
    assert load_script("compare_runs").main([str(a), str(b)]) == 1
    assert "metrics.json test.x1.acc: 0.75 != 0.76" in capsys.readouterr().out


def test_partial_compares_the_steps_a_run_in_progress_has_logged(tmp_path, capsys):
    finished = _run(tmp_path / "a", [1.0, 0.5, 0.25], 0.75)
    same_so_far = _run(tmp_path / "b", [1.0, 0.5], 0.0)
    other_so_far = _run(tmp_path / "c", [1.0, 0.6], 0.0)
    assert load_script("compare_runs").main([str(finished), str(same_so_far), "--partial"]) == 0
    assert load_script("compare_runs").main([str(finished), str(other_so_far), "--partial"]) == 1
    assert "tensorboard epoch/train/loss" in capsys.readouterr().out

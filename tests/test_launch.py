"""Which run folders the multi-run scripts (leaderboard, calibration) reuse instead of training again."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from lrfer.core.errors import UserError
from lrfer.tools import launch
from lrfer.tools.launch import add_threads_argument, finished_run

OVERRIDES = ["method=baseline", "method.epochs=1", "seed=0"]


def _run(tmp_path: Path, recorded: list[str], finished: bool = True) -> Path:
    run_dir = tmp_path / "run"
    (run_dir / ".hydra").mkdir(parents=True)
    OmegaConf.save(OmegaConf.create(recorded), run_dir / ".hydra" / "overrides.yaml")
    if finished:
        (run_dir / "metrics.json").write_text("{}")
    return run_dir


def test_a_finished_run_of_the_same_overrides_is_reused(tmp_path):
    assert finished_run(_run(tmp_path, [*OVERRIDES, "trainer.resume=true"]), OVERRIDES)


def test_an_unfinished_run_is_trained(tmp_path):
    assert not finished_run(_run(tmp_path, OVERRIDES, finished=False), OVERRIDES)


def test_how_many_threads_a_run_used_does_not_matter(tmp_path):
    assert finished_run(_run(tmp_path, [*OVERRIDES, "trainer.num_threads=1"]), OVERRIDES)


def test_a_finished_run_of_other_overrides_is_refused_naming_the_difference(tmp_path):
    run_dir = _run(tmp_path, ["method=baseline", "method.epochs=8", "seed=0"])
    with pytest.raises(UserError, match=r"other overrides \(method\.epochs=1, method\.epochs=8\)"):
        finished_run(run_dir, OVERRIDES)


def test_a_finished_run_of_another_face_generator_is_refused(tmp_path):
    run_dir = _run(tmp_path, OVERRIDES)
    (run_dir / "metrics.json").write_text('{"dataset_info": {"generated": true, "generator_version": 2}}')
    assert finished_run(run_dir, OVERRIDES, {})
    with pytest.raises(UserError, match="generator_version=2, this is 3"):
        finished_run(run_dir, OVERRIDES, {"generator_version": 3})


def test_the_synthetic_faces_name_their_generator_version_as_provenance():
    from lrfer.data.datasets.synthetic import SyntheticFaces
    from lrfer.data.synthetic import GENERATOR_VERSION

    assert SyntheticFaces({"seed": 0}).provenance() == {"generator_version": GENERATOR_VERSION}


def _threads_given(monkeypatch, runs: int, jobs: int, cores: int = 4, **kwargs) -> list[list[str]]:
    """The ``trainer.num_threads=`` overrides each of ``runs`` runs is started with (no training)."""
    given: list[list[str]] = []
    monkeypatch.setattr(launch.os, "cpu_count", lambda: cores)
    monkeypatch.setattr(
        launch, "train_in_subprocess", lambda overrides, run_dir: given.append(overrides) or (True, 0.0)
    )
    series = [(["method=baseline", f"seed={k}"], Path(f"run{k}")) for k in range(runs)]
    launch.train_side_by_side(series, jobs, lambda *_: None, **kwargs)
    return [[o for o in overrides if o.startswith("trainer.num_threads=")] for overrides in given]


def test_runs_trained_side_by_side_share_the_cores(monkeypatch):
    assert _threads_given(monkeypatch, runs=3, jobs=2) == [["trainer.num_threads=2"]] * 3


def test_a_run_alone_in_its_series_keeps_torchs_default_threads(monkeypatch):
    assert _threads_given(monkeypatch, runs=1, jobs=2) == [[]]


def test_threads_per_run_when_given_hold_even_for_a_lone_run(monkeypatch):
    assert _threads_given(monkeypatch, runs=1, jobs=2, threads=1) == [["trainer.num_threads=1"]]


def test_zero_threads_per_run_is_refused(monkeypatch):
    with pytest.raises(UserError, match="threads per run must be at least 1"):
        _threads_given(monkeypatch, runs=1, jobs=1, threads=0)


def test_zero_threads_per_run_is_refused_when_the_command_line_is_read(capsys):
    parser = argparse.ArgumentParser(prog="findings.py")
    add_threads_argument(parser)
    with pytest.raises(SystemExit):
        parser.parse_args(["--threads", "0"])
    assert "--threads: threads per run must be at least 1, got 0" in capsys.readouterr().err

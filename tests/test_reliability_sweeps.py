"""Issue 30, groups 1 and 2, through the command line: runs that never mix, sweeps that survive a bad job.

Slow (real trainings and sweeps, seconds each): ``python -m pytest -m slow tests/test_reliability_sweeps.py``.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from datetime import datetime, timedelta

import pytest
import torch
from conftest import REPO, run_cli

from lrfer.engine.runlock import LOCK_FILE

pytestmark = pytest.mark.slow

TRAIN = str(REPO / "train.py")


def _small(tmp_path, *extra: str) -> list[str]:
    """A seconds-long EFC run: 28 faces of 16 px, one thread, no TensorBoard."""
    return [
        "method=efc",
        "dataset.num_train=28",
        "dataset.num_val=14",
        "dataset.num_test=14",
        "dataset.image_size=16",
        "degrade.test=[x1]",
        "trainer.batch_size=14",
        "trainer.max_epochs=1",
        "trainer.device=cpu",
        "trainer.num_threads=1",
        "logger=none",
        f"paths.cache_dir={tmp_path / 'cache'}",
        *extra,
    ]


def _error_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith("error")]


# -- group 1: one run per folder --------
def test_a_second_run_into_a_folder_in_use_is_refused_and_the_first_run_is_intact(tmp_path):
    """The first run is long enough never to end by itself (it is stopped with SIGTERM once the second one
    was refused), so the outcome does not depend on how fast the machine is."""
    run_dir = tmp_path / "run"
    first = subprocess.Popen(
        [sys.executable, TRAIN, *_small(tmp_path, "trainer.max_epochs=100000", f"hydra.run.dir={run_dir}")],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.time() + 120
        while not (run_dir / LOCK_FILE).exists() and first.poll() is None and time.time() < deadline:
            time.sleep(0.05)
        assert (run_dir / LOCK_FILE).exists(), "the first run never took its lock"
        second = run_cli([TRAIN, *_small(tmp_path, "method=baseline", f"hydra.run.dir={run_dir}")])
        assert first.poll() is None, first.communicate()[1][-2000:]
        first.send_signal(signal.SIGTERM)  # graceful stop: the epoch ends, last.pt is written, exit 143
        _, err = first.communicate(timeout=600)
    finally:
        if first.poll() is None:
            first.kill()
    assert second.returncode == 2 and "Traceback" not in second.stderr
    (line,) = _error_lines(second.stderr)
    assert "is in use by another run" in line and f"pid {first.pid}" in line
    assert first.returncode == 143, err[-2000:]
    assert "name: efc" in (run_dir / ".hydra" / "config.yaml").read_text()
    assert "baseline" not in (run_dir / ".hydra" / "overrides.yaml").read_text()
    assert "resnet" not in (run_dir / "train.log").read_text().lower()  # nothing of the second run logged
    last = torch.load(run_dir / "checkpoints" / "last.pt", weights_only=True)
    assert last["config"]["method"]["name"] == "efc"  # the first run's checkpoint, not the second's
    assert not (run_dir / LOCK_FILE).exists()  # the first run gave its lock back


def test_a_run_that_starts_in_the_same_second_as_another_gets_its_own_default_folder(tmp_path):
    # Another run holds the default folder of this second and of the next two minutes.
    taken = tmp_path / "outputs" / "efc" / "synthetic"
    now = datetime.now()
    stamps = [f"{now + timedelta(seconds=s):%Y-%m-%d_%H-%M-%S}" for s in range(120)]
    for stamp in stamps:
        (taken / stamp).mkdir(parents=True)
        (taken / stamp / "metrics.json").write_text('{"method": "efc", "seed": 7}')
    proc = run_cli([TRAIN, *_small(tmp_path, "seed=1")], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    (mine,) = [p for p in taken.iterdir() if p.name not in stamps]
    assert mine.name.endswith("_2") and mine.name[:-2] in stamps
    assert json.loads((mine / "metrics.json").read_text())["seed"] == 1
    assert "seed: 1" in (mine / ".hydra" / "config.yaml").read_text()
    for stamp in stamps:  # the other run's folders are untouched
        assert sorted(p.name for p in (taken / stamp).iterdir()) == ["metrics.json"]


def test_overwrite_through_the_command_line_leaves_nothing_of_the_previous_run(tmp_path):
    run_dir = tmp_path / "run"
    (run_dir / "checkpoints").mkdir(parents=True)
    (run_dir / "metrics.json").write_text('{"method": "baseline"}')
    (run_dir / "checkpoints" / "last.pt").write_bytes(b"old")
    (run_dir / "train.log").write_text("[old run] epoch 7/7\n")
    (run_dir / "eval_test.json").write_text("{}")
    (run_dir / "export").mkdir()
    (run_dir / "export" / "model.pt").write_bytes(b"old")
    (run_dir / ".hydra-resumes" / "2026-01-01_00-00-00").mkdir(parents=True)
    proc = run_cli([TRAIN, *_small(tmp_path, "trainer.overwrite=true", f"hydra.run.dir={run_dir}")])
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert sorted(p.name for p in run_dir.iterdir()) == [
        ".hydra", "checkpoints", "metrics.json", "train.log"
    ]  # fmt: skip
    log = (run_dir / "train.log").read_text()
    assert "[old run]" not in log and "emptied the previous run's train.log" in log
    assert "epoch 1/1" in log
    assert json.loads((run_dir / "metrics.json").read_text())["method"] == "efc"


# -- group 2: sweeps --------
@pytest.mark.parametrize("launcher", ["basic", "joblib"])
def test_a_sweep_finishes_its_good_jobs_past_a_bad_one_and_ends_with_a_summary(tmp_path, launcher):
    sweep = tmp_path / "sweep"
    extra = ["launcher=local"] if launcher == "joblib" else []  # joblib, 2 jobs at once
    lrs = "trainer.optimizer.lr=1e30,0.003"  # job 0's loss becomes nan: a user error during training
    proc = run_cli([TRAIN, "-m", *_small(tmp_path, *extra), f"hydra.sweep.dir={sweep}", lrs])
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert json.loads((sweep / "1" / "metrics.json").read_text())["method"] == "efc"  # the good job finished
    assert not (sweep / "0" / "metrics.json").exists()
    errors = _error_lines(proc.stderr)
    assert any(line.startswith("error: job #0 (trainer.optimizer.lr=1e+30) failed: ") for line in errors)
    assert "became nan" in "".join(errors) and errors[-1] == "error: 1 of the sweep's 2 jobs failed"
    summary = json.loads((sweep / "sweep_summary.json").read_text())
    assert [(r["job"], r["status"]) for r in summary["records"]] == [(0, "error"), (1, "ok")]
    assert "error: the main loss" in (sweep / "0" / "train.log").read_text()
    assert not (sweep / LOCK_FILE).exists()


def test_an_optuna_search_goes_on_past_a_failed_trial(tmp_path):
    pytest.importorskip("hydra_plugins.hydra_optuna_sweeper")
    sweep = tmp_path / "sweep"
    proc = run_cli(
        [
            TRAIN, "-m", "hparams_search=optuna", "hydra.sweeper.n_trials=3", f"hydra.sweep.dir={sweep}",
            *_small(tmp_path), "trainer.optimizer.lr=choice(1e30,0.003)",  # seed 0 draws 0.003, 1e30, 0.003
        ]
    )  # fmt: skip
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    summary = json.loads((sweep / "sweep_summary.json").read_text())
    statuses = {r["job"]: r["status"] for r in summary["records"]}
    assert sorted(statuses.values()) == ["error", "ok", "ok"]  # the trial after the failed one ran too
    assert statuses[2] == "ok" and (sweep / "2" / "metrics.json").exists()
    assert (sweep / "optimization_results.yaml").exists()
    assert _error_lines(proc.stderr)[-1] == "error: 1 of the sweep's 3 jobs failed"


def test_an_optuna_search_whose_every_trial_fails_ends_with_the_summary(tmp_path):
    pytest.importorskip("hydra_plugins.hydra_optuna_sweeper")
    sweep = tmp_path / "sweep"
    proc = run_cli(
        [
            TRAIN, "-m", "hparams_search=optuna", "hydra.sweeper.n_trials=2", f"hydra.sweep.dir={sweep}",
            *_small(tmp_path), "trainer.optimizer.lr=choice(1e30,1e31)",  # both diverge in the first steps
        ]
    )  # fmt: skip
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    summary = json.loads((sweep / "sweep_summary.json").read_text())
    assert [r["status"] for r in summary["records"]] == ["error", "error"]
    assert not (sweep / "optimization_results.yaml").exists()  # no best trial to write
    assert _error_lines(proc.stderr)[-1] == "error: 2 of the sweep's 2 jobs failed"


def test_a_sweep_with_an_invalid_job_is_refused_before_any_job_trains(tmp_path):
    sweep = tmp_path / "sweep"
    proc = run_cli([TRAIN, "-m", *_small(tmp_path), f"hydra.sweep.dir={sweep}", "degrade.train=[x1],[x0]"])
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    (line,) = _error_lines(proc.stderr)
    assert "1 of the sweep's 2 jobs cannot run" in line and "job #1 (degrade.train=[x0])" in line
    assert not sweep.exists()  # job 0 never trained


def test_a_partial_sweep_is_completed_with_resume(tmp_path):
    sweep = tmp_path / "sweep"
    common = [TRAIN, "-m", f"hydra.sweep.dir={sweep}"]
    first = run_cli([*common, *_small(tmp_path), "seed=0"])  # the sweep stopped after its first job
    assert first.returncode == 0, first.stderr[-2000:]
    config = (sweep / "0" / ".hydra" / "config.yaml").read_text()
    proc = run_cli([*common, *_small(tmp_path, "trainer.max_epochs=2", "trainer.resume=true"), "seed=0,1"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    continued = json.loads((sweep / "0" / "metrics.json").read_text())
    started = json.loads((sweep / "1" / "metrics.json").read_text())
    assert continued["seed"] == 0 and continued["train"]["stages"]["train"]["epochs"] == 2
    assert started["seed"] == 1 and started["train"]["stages"]["train"]["epochs"] == 2
    assert (sweep / "0" / ".hydra" / "config.yaml").read_text() == config  # job 0's own config kept
    assert "seed: 1" in (sweep / "1" / ".hydra" / "config.yaml").read_text()  # job 1 has one to evaluate
    assert "never ran" in (sweep / "1" / "train.log").read_text()


def _optuna_storage_works() -> bool:
    try:
        import optuna
        import sqlalchemy
    except ImportError:
        return False
    return optuna.__version__ >= "3" or sqlalchemy.__version__ < "2"


@pytest.mark.skipif(not _optuna_storage_works(), reason="optuna 2.10's storage needs SQLAlchemy < 2")
def test_an_optuna_study_is_extended_with_resume(tmp_path):
    pytest.importorskip("hydra_plugins.hydra_optuna_sweeper")
    sweep = tmp_path / "sweep"
    common = [
        TRAIN, "-m", "hparams_search=optuna", f"hydra.sweep.dir={sweep}",
        f"hydra.sweeper.storage=sqlite:///{tmp_path / 'study.db'}", *_small(tmp_path),
    ]  # fmt: skip
    first = run_cli([*common, "hydra.sweeper.n_trials=2"])
    assert first.returncode == 0, first.stderr[-2000:]
    before = {p.parent.name: p.read_text() for p in sweep.glob("*/metrics.json")}
    assert sorted(before) == ["0", "1"]
    proc = run_cli([*common, "hydra.sweeper.n_trials=3", "trainer.resume=true"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    after = {p.parent.name: p.read_text() for p in sweep.glob("*/metrics.json")}
    assert sorted(after) == ["0", "1", "2"]  # one more trial, in a new folder
    assert {k: after[k] for k in before} == before  # the earlier trials are untouched
    import optuna

    study = optuna.load_study(study_name="efc_synthetic", storage=f"sqlite:///{tmp_path / 'study.db'}")
    assert len(study.trials) == 3
    assert (sweep / "optimization_results.yaml").exists()

"""A run is resolved once: its config validated, its method values, run folder and processes checked once."""

from __future__ import annotations

import importlib
import logging
import signal
import sys
from collections import Counter

import pytest
from conftest import compose_cfg, tiny
from hydra.core.global_hydra import GlobalHydra

import lrfer.cli.guard
import lrfer.cli.sweep
import lrfer.cli.train
import lrfer.engine.loading
import lrfer.engine.resolve
import lrfer.engine.run
import lrfer.engine.trainer
from lrfer.core.errors import UserError
from lrfer.engine.resolve import RunSpec, resolve

#: The checks a run makes once, by the module that defines them.
ONCE = {
    "validate_config": "lrfer.config.validate",
    "check_run_folder": "lrfer.engine.runfolder",
    "check_required": "lrfer.engine.resolve",
    "init_from_env": "lrfer.engine.distributed",
}


def count_calls(monkeypatch) -> Counter:
    """Count the calls of every function in :data:`ONCE`, under every lrfer name it is imported as."""
    calls: Counter = Counter()
    for name, module in ONCE.items():
        original = getattr(importlib.import_module(module), name)

        def counted(*args, _name=name, _original=original, **kwargs):
            calls[_name] += 1
            return _original(*args, **kwargs)

        for loaded in list(sys.modules.values()):
            ours = getattr(loaded, "__name__", "").startswith("lrfer")
            if ours and getattr(loaded, name, None) is original:
                monkeypatch.setattr(loaded, name, counted)
    return calls


def run_entry(monkeypatch, *argv: str) -> None:
    """``python train.py <argv>`` through its entry, in this process; Hydra and log handlers are put back."""
    monkeypatch.setattr(sys, "argv", ["train.py", *argv])
    handlers = list(logging.root.handlers)
    try:
        lrfer.cli.train.main()
    finally:
        GlobalHydra.instance().clear()
        for handler in [h for h in logging.root.handlers if h not in handlers]:
            logging.root.removeHandler(handler)
            handler.close()


def test_python_train_py_resolves_its_run_once(tmp_path, monkeypatch):
    """``python train.py`` (its entry, in this process): each check runs once; a second one fails here."""
    calls = count_calls(monkeypatch)
    run_dir = tmp_path / "run"
    args = tiny(tmp_path, "trainer.max_epochs=1", "dataset.num_train=56", "dataset.num_test=28")
    run_entry(monkeypatch, *args, f"hydra.run.dir={run_dir}")
    assert (run_dir / "metrics.json").is_file()
    assert dict(calls) == dict.fromkeys(ONCE, 1)


def test_the_entry_gives_sigterm_back_to_its_previous_handler(tmp_path, monkeypatch):
    """``main()`` called in a process with its own SIGTERM handler (a test runner's worker, a notebook) leaves
    that handler in place when the run ends: a later SIGTERM must not raise the run's ``Terminated`` there."""

    def previous(signum, frame):
        pass

    before = signal.signal(signal.SIGTERM, previous)
    try:
        run_dir = tmp_path / "run"
        args = tiny(tmp_path, "trainer.max_epochs=1", "dataset.num_train=56", "dataset.num_test=28")
        run_entry(monkeypatch, *args, f"hydra.run.dir={run_dir}")
        assert (run_dir / "metrics.json").is_file()
        assert signal.getsignal(signal.SIGTERM) is previous
    finally:
        signal.signal(signal.SIGTERM, before)


def test_the_spec_holds_parsed_degradations_and_settled_options(tmp_path):
    spec = resolve(compose_cfg(*tiny(tmp_path, "degrade.train=[x1,X2+Jpeg30]", "degrade.test=[x4]")))
    assert isinstance(spec, RunSpec) and spec.run_dir is None
    assert [d.label for d in spec.degrade.train] == ["x1", "x2+jpeg30"]
    assert spec.degrade.val == spec.degrade.train  # degrade.val=null: selection on the training list
    assert spec.trainer.amp_dtype is None and spec.trainer.channels_last is False  # auto on a CPU
    assert spec.device.type == "cpu" and spec.world_size == 1


def test_a_global_batch_the_processes_cannot_share_is_refused(tmp_path, monkeypatch):
    monkeypatch.setattr(lrfer.engine.resolve.dist, "world_size", lambda: 3)
    with pytest.raises(
        UserError, match=r"trainer\.batch_size=28 \(the global batch\) must be divisible by the 3"
    ):
        resolve(compose_cfg(*tiny(tmp_path)))
    monkeypatch.setattr(lrfer.engine.resolve.dist, "world_size", lambda: 4)
    assert resolve(compose_cfg(*tiny(tmp_path))).world_size == 4


def test_a_resume_without_a_run_folder_stops_with_one_line(tmp_path):
    with pytest.raises(UserError, match=r"trainer\.resume=true needs the run folder"):
        resolve(compose_cfg(*tiny(tmp_path, "trainer.resume=true")))


def sweep_without_training(monkeypatch, *args: str) -> tuple[Counter, list[RunSpec]]:
    """``python train.py -m <args>`` (the basic launcher, in this process) with the training left out (the
    single run above covers it): the calls of the :data:`ONCE` checks, and the spec each job's task got."""
    calls = count_calls(monkeypatch)
    specs: list[RunSpec] = []

    def train(spec: RunSpec) -> dict:
        specs.append(spec)
        return {"method": "baseline", "dataset": "synthetic", "objective": {"value": 0.5}}

    monkeypatch.setattr(lrfer.cli.train, "run", train)
    monkeypatch.setattr(lrfer.cli.train, "format_table", lambda metrics: "")
    run_entry(monkeypatch, "-m", *args)
    return calls, specs


def test_a_sweep_checks_each_job_once_and_hands_each_job_its_own_checks(tmp_path, monkeypatch):
    """Every job is checked before the first one runs, and each check runs once per job."""
    sweep = tmp_path / "sweep"
    calls, specs = sweep_without_training(
        monkeypatch, *tiny(tmp_path), "degrade.train=[x1],[x2]", f"hydra.sweep.dir={sweep}"
    )
    assert [(s.run_dir.name, [d.label for d in s.degrade.train]) for s in specs] == [
        ("0", ["x1"]),
        ("1", ["x2"]),
    ]
    assert dict(calls) == dict.fromkeys(ONCE, 2)


def test_a_resumed_sweep_checks_each_job_folder_once(tmp_path, monkeypatch):
    """Job 0 ran before: its folder is checked up front, not again; job 1 never ran: it starts afresh, and its
    folder is checked when it starts."""
    sweep = tmp_path / "sweep"
    (sweep / "0" / "checkpoints").mkdir(parents=True)
    (sweep / "0" / "checkpoints" / "last.pt").write_bytes(b"")  # unreadable: no identity to compare
    args = [*tiny(tmp_path), "seed=0,1", "trainer.resume=true", f"hydra.sweep.dir={sweep}"]
    calls, specs = sweep_without_training(monkeypatch, *args)
    assert [(s.run_dir.name, s.cfg.trainer.resume) for s in specs] == [("0", True), ("1", False)]
    assert dict(calls) == dict.fromkeys(ONCE, 2)


def test_a_bad_value_every_sweep_job_shares_is_refused_in_the_line_a_single_run_gives(
    tmp_path, monkeypatch, capsys
):
    sweep = tmp_path / "sweep"
    with pytest.raises(SystemExit) as stop:
        sweep_without_training(
            monkeypatch, *tiny(tmp_path), "trainer.batch_size=0", "seed=0,1", f"hydra.sweep.dir={sweep}"
        )
    assert stop.value.code == 2
    assert capsys.readouterr().err.strip() == "error: trainer.batch_size=0 must be an integer >= 1"
    assert not sweep.exists()  # a refused sweep leaves no folder

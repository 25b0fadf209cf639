"""Issue 16 end to end, through the command line and real trainings (slow: ``python -m pytest -m slow``).

A protected run folder, a refused resume that leaves the run evaluable, honest exit codes of the console
scripts, one-line errors written to train.log, a damaged cache that trains like a clean one, a full disk,
and torchrun printing a user error once and leaving no scratch folder behind.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import resource
import subprocess
import sys

import pytest
import torch
from conftest import REPO, TORCHRUN, compose_cfg, run_cli, run_process, tiny

from lrfer.data.cache import cache_path
from lrfer.data.datasets import build_adapter
from lrfer.engine.run import run_training

pytestmark = pytest.mark.slow


def _checksums(folder):
    return {
        str(p.relative_to(folder)): hashlib.sha1(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def _error_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith("error")]


def _console_script(name: str, *args: str):
    """Run a ``[project.scripts]`` entry as pip's wrapper does: ``sys.exit(<module>:<function>())``."""
    target = re.search(rf'^{name} = "([\w.]+):(\w+)"', (REPO / "pyproject.toml").read_text(), re.M)
    module, function = target.groups()
    code = f"import sys; from {module} import {function} as f; sys.argv[0] = {name!r}; sys.exit(f())"
    return run_cli(["-c", code, *args])


def test_training_again_into_a_finished_run_is_refused_and_nothing_changes(trained_run, tmp_path):
    before = _checksums(trained_run)
    proc = run_cli(["train.py", *tiny(tmp_path), "degrade.test=[x1,x4]", f"hydra.run.dir={trained_run}"])
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    (line,) = _error_lines(proc.stderr)
    assert (
        "already holds a run" in line and "trainer.resume=true" in line and "trainer.overwrite=true" in line
    )
    assert _checksums(trained_run) == before  # metrics.json, both checkpoints, .hydra/, train.log


def test_a_resume_with_another_method_is_refused_and_the_run_still_evaluates(trained_run, tmp_path):
    config = (trained_run / ".hydra" / "config.yaml").read_text()
    before = _checksums(trained_run)
    proc = run_cli(
        ["train.py", *tiny(tmp_path), "method=efc", "trainer.resume=true", f"hydra.run.dir={trained_run}"]
    )
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    (line,) = _error_lines(proc.stderr)
    assert "cannot resume" in line and "method.name=baseline (now efc)" in line
    assert (trained_run / ".hydra" / "config.yaml").read_text() == config and _checksums(
        trained_run
    ) == before
    out = tmp_path / "eval.json"
    proc = _console_script("lrfer-evaluate", str(trained_run), "--out", str(out), "-o", "trainer.device=cpu")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert json.loads(out.read_text())["method"] == "baseline"


def test_lrfer_evaluate_and_lrfer_predict_exit_0_with_results_on_stdout(trained_run, tmp_path):
    out = tmp_path / "eval.json"
    proc = _console_script(
        "lrfer-evaluate", str(trained_run), "--out", str(out), "-o", "trainer.device=cpu",
        "-o", "trainer.eval_batch_size=64", "--degrade", "x1", "x2",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "x2" in proc.stdout and "{'method'" not in proc.stderr  # no result dumped by sys.exit
    assert list(json.loads(out.read_text())["test"]) == ["x1", "x2"]
    from PIL import Image

    Image.new("RGB", (20, 30), (128, 90, 60)).save(tmp_path / "face.png")
    csv_out = tmp_path / "pred.csv"
    proc = _console_script(
        "lrfer-predict",
        str(trained_run),
        str(tmp_path / "face.png"),
        "--out",
        str(csv_out),
        "--device",
        "cpu",
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "classified 1 faces" in proc.stdout and "[{'path'" not in proc.stderr and csv_out.exists()


def _missing_rafdb(tmp_path) -> list[str]:
    """A start that fails: RAF-DB at a folder that does not exist (not tiny(): no synthetic-only keys)."""
    return [
        "dataset=rafdb",
        f"dataset.root={tmp_path / 'no-such-folder'}",
        "trainer.device=cpu",
        "logger=none",
        f"paths.cache_dir={tmp_path / 'cache'}",
        f"hydra.run.dir={tmp_path / 'run'}",
    ]


def test_a_failed_start_writes_the_error_to_train_log(tmp_path):
    proc = run_cli(["train.py", *_missing_rafdb(tmp_path)])
    assert proc.returncode == 2 and len(_error_lines(proc.stderr)) == 1 and "Traceback" not in proc.stderr
    log = (tmp_path / "run" / "train.log").read_text()
    assert f"error: dataset.root={tmp_path / 'no-such-folder'} does not exist" in log


@pytest.mark.parametrize(
    "override",
    [
        "trainer.max_epochs=0",
        "augment.hflip=2",
        "dataset.val_fraction=1.5",
        "objective=bar",
        "trainer.monitor=foo",
    ],
)
def test_an_invalid_value_stops_the_cli_in_one_line_before_a_run_folder_exists(tmp_path, override):
    run_dir = tmp_path / "run"
    proc = run_cli(["train.py", *tiny(tmp_path), override, f"hydra.run.dir={run_dir}"])
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    (line,) = _error_lines(proc.stderr)
    assert override.split("=")[0] in line
    assert not run_dir.exists()


def test_extending_a_finished_cosine_run_rebuilds_the_schedule(tmp_path, caplog):
    common = ["trainer.scheduler.name=cosine", "trainer.scheduler.min_lr=0.0001", "dataset.num_train=56"]
    run_training(compose_cfg(*tiny(tmp_path, *common, "trainer.max_epochs=1")), tmp_path / "run")
    with caplog.at_level(logging.WARNING, logger="lrfer.engine.trainer"):
        cfg = compose_cfg(*tiny(tmp_path, *common, "trainer.max_epochs=2", "trainer.resume=true"))
        run_training(cfg, tmp_path / "run")
    assert "rebuilt with T_max=2" in caplog.text
    last = torch.load(tmp_path / "run" / "checkpoints" / "last.pt", weights_only=True)
    assert last["epoch"] == 2
    assert last["optimizers"]["main"]["param_groups"][0]["lr"] == pytest.approx(0.0001)


def test_a_cache_overwritten_with_noise_is_rebuilt_and_trains_like_a_clean_one(tmp_path):
    overrides = tiny(tmp_path, "trainer.max_epochs=1", "dataset.num_train=56", "degrade.test=[x1]")
    clean = run_training(compose_cfg(*overrides), None)
    cfg = compose_cfg(*overrides)
    adapter = build_adapter(cfg.dataset)
    images = cache_path(cfg.paths.cache_dir, adapter.name, adapter.fingerprint()) / "train_images.npy"
    raw = bytearray(images.read_bytes())
    raw[200:] = os.urandom(len(raw) - 200)
    images.write_bytes(bytes(raw))
    again = run_training(cfg, None)
    assert again["test"] == clean["test"] and again["train"] == clean["train"]


def test_a_full_disk_while_training_is_one_line(tmp_path):
    def small_files():  # every file written may hold 10 MB: the checkpoints do not fit
        resource.setrlimit(resource.RLIMIT_FSIZE, (10_000_000, 10_000_000))

    args = [
        sys.executable,
        "train.py",
        *tiny(tmp_path, "trainer.max_epochs=1"),
        f"hydra.run.dir={tmp_path / 'r'}",
    ]
    proc = subprocess.run(args, cwd=REPO, capture_output=True, text=True, timeout=600, preexec_fn=small_files)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    (line,) = _error_lines(proc.stderr)
    assert "cannot write" in line and "best.pt" in line
    assert not list((tmp_path / "r" / "checkpoints").glob(".*"))  # no temporary file left


def test_a_user_error_under_torchrun_is_printed_once_and_leaves_no_scratch_folder(tmp_path):
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    env = {**os.environ, "TMPDIR": str(scratch), "OMP_NUM_THREADS": "1"}
    cmd = [*TORCHRUN, "train.py", *_missing_rafdb(tmp_path)]
    proc = run_process(cmd, REPO, env, timeout=600)
    assert proc.returncode != 0
    assert len([line for line in proc.stderr.splitlines() if line.startswith("error: dataset.root")]) == 1
    assert not list(scratch.glob("lrfer-rank*"))


def test_a_resumed_run_keeps_its_hydra_folder_and_writes_the_new_config_aside(tmp_path):
    run_dir = tmp_path / "run"
    small = [*tiny(tmp_path, "dataset.num_train=56", "degrade.test=[x1]"), f"hydra.run.dir={run_dir}"]
    assert run_cli(["train.py", *small, "trainer.max_epochs=1"]).returncode == 0
    config = (run_dir / ".hydra" / "config.yaml").read_text()
    proc = run_cli(["train.py", *small, "trainer.max_epochs=2", "trainer.resume=true"])
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert (run_dir / ".hydra" / "config.yaml").read_text() == config
    (resumed,) = (run_dir / ".hydra-resumes").glob("*/config.yaml")
    assert "max_epochs: 2" in resumed.read_text() and "resume: true" in resumed.read_text()
    assert json.loads((run_dir / "metrics.json").read_text())["train"]["stages"]["train"]["epochs"] == 2

"""Issue 30: Ctrl-C and SIGTERM stop ``train.py`` with one line (stderr and train.log) saying how to resume.

Slow (a real training in a subprocess, stopped after its first epoch): ``python -m pytest -m slow``.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest
from conftest import REPO, tiny

pytestmark = pytest.mark.slow


def _default_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _start(tmp_path, run_dir) -> subprocess.Popen:
    overrides = tiny(
        tmp_path,
        "trainer.max_epochs=500",
        "method.epochs=500",
        "dataset.num_train=56",
        f"hydra.run.dir={run_dir}",
    )
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "HYDRA_FULL_ERROR": "0", "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(
        [sys.executable, "train.py", *overrides],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        # Ctrl-C as a terminal delivers it: a pytest-xdist worker (or a shell's background job) starts its
        # children with SIGINT ignored, and Python then never raises KeyboardInterrupt.
        preexec_fn=_default_sigint,
    )


@pytest.mark.parametrize(
    ("signum", "status", "what"),
    [(signal.SIGINT, 130, "interrupted (Ctrl-C)"), (signal.SIGTERM, 143, "terminated (SIGTERM)")],
    ids=["SIGINT", "SIGTERM"],
)
def test_a_signal_stops_training_with_one_logged_line_saying_how_to_resume(tmp_path, signum, status, what):
    run_dir = tmp_path / "run"
    proc = _start(tmp_path, run_dir)
    log = run_dir / "train.log"
    try:
        deadline = time.monotonic() + 300
        while not (log.is_file() and "epoch 2/500" in log.read_text()):
            assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()[1][-3000:]
            time.sleep(0.2)
        proc.send_signal(signum)
        _, err = proc.communicate(timeout=120)
    finally:  # a failed test leaves no 500-epoch training behind
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == status and "Traceback" not in err, err[-3000:]
    (line,) = [line for line in err.splitlines() if line.startswith(what)]
    assert "trainer.resume=true" in line and f"hydra.run.dir={run_dir}" in line
    assert line in log.read_text()
    assert (run_dir / "checkpoints" / "last.pt").is_file()

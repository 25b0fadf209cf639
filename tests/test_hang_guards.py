"""The test suite's own guards against a hang (tests/conftest.py): a hung torchrun-like process tree is killed
whole, so the test fails in bounded time instead of waiting on pipes that a detached rank holds open."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest
from conftest import REPO, descendants, kill_tree, run_process

#: A parent that starts a child in a session of its own (as torchrun starts its ranks); both sleep, and the
#: child holds the parent's stdout and stderr.
TREE = (
    "import subprocess, sys, time; "
    "subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(600)'], start_new_session=True); "
    "time.sleep(600)"
)


def test_a_tree_with_a_detached_child_is_killed_whole_and_its_pipes_close():
    parent = subprocess.Popen(
        [sys.executable, "-c", TREE],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    deadline = time.monotonic() + 60
    while not descendants(parent.pid):
        assert time.monotonic() < deadline, "the child never started"
        time.sleep(0.05)
    (child,) = descendants(parent.pid)
    kill_tree(parent.pid)
    parent.communicate(timeout=30)  # EOF: nothing holds the pipes any more
    assert parent.returncode == -9
    deadline = time.monotonic() + 30
    while _alive(child):
        assert time.monotonic() < deadline, f"the detached child {child} survived"
        time.sleep(0.05)


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def test_a_command_past_its_timeout_is_killed_with_its_detached_children_and_raises():
    """run_cli and run_two_ranks run commands through run_process: a hang ends at the timeout, with output."""
    start = time.monotonic()
    cmd = [sys.executable, "-c", "print('started', flush=True); " + TREE]
    with pytest.raises(subprocess.TimeoutExpired) as err:
        run_process(cmd, REPO, {}, timeout=3)
    assert time.monotonic() - start < 60 and err.value.stdout == "started\n"

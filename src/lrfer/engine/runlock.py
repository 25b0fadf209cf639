"""One run per run folder: an exclusive lock held for the life of the run.

A run takes ``<run folder>/.run.lock`` before Hydra or lrfer writes anything into the folder, and gives it
back when it ends. The lock is an ``flock`` on that file (the kernel drops it when the process dies, however
it dies), and the file names its owner -- ``pid``, ``host`` and start time -- for the message a second run
gets:

- a second run into a folder whose lock is held stops with one line naming the owner;
- a lock file left by a run that is gone (same host, its process no longer holds the lock) is broken, with
  a log line naming the dead owner;
- a lock file written on another host is never broken automatically (its process cannot be checked from
  here): the message says to delete the file once that run has ended.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import socket
import time
from pathlib import Path

from lrfer.core.errors import UserError

log = logging.getLogger(__name__)

#: The lock file inside a run folder.
LOCK_FILE = ".run.lock"


def _owner_text(owner: dict) -> str:
    started = owner.get("started")
    when = f", started {started}" if started else ""
    return f"pid {owner.get('pid', '?')} on host {owner.get('host', '?')}{when}"


def _read_owner(fd: int) -> dict:
    os.lseek(fd, 0, os.SEEK_SET)
    raw = os.read(fd, 4096)
    try:
        owner = json.loads(raw.decode() or "{}")
    except (UnicodeDecodeError, ValueError):
        return {"pid": "?", "host": "?"} if raw else {}
    return owner if isinstance(owner, dict) else {}


class RunLock:
    """The exclusive lock of one run folder (:func:`acquire`); :meth:`release` gives it back."""

    def __init__(self, path: Path, fd: int) -> None:
        self.path = path
        self._fd: int | None = fd

    @property
    def held(self) -> bool:
        return self._fd is not None

    def release(self) -> None:
        """Delete the lock file and drop the lock (idempotent)."""
        if self._fd is None:
            return
        with contextlib.suppress(OSError):
            # delete it only while it is still ours (a second run cannot have replaced it: it must lock it)
            if os.fstat(self._fd).st_ino == os.stat(self.path).st_ino:
                self.path.unlink()
        with contextlib.suppress(OSError):
            os.close(self._fd)
        self._fd = None


def acquire(run_dir: Path) -> RunLock:
    """Take the lock of ``run_dir`` (created if missing) or stop with one line when another run holds it."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / LOCK_FILE
    host, pid = socket.gethostname(), os.getpid()
    for _ in range(10):  # retried only when the file was replaced between opening and locking it
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            owner = _read_owner(fd)
            os.close(fd)
            raise UserError(
                f"{run_dir} is in use by another run ({_owner_text(owner)}): wait for it to finish, "
                "or train into another hydra.run.dir"
            ) from None
        try:
            if os.fstat(fd).st_ino != os.stat(path).st_ino:
                os.close(fd)  # the owner deleted the file as it finished: lock the new one
                continue
        except FileNotFoundError:
            os.close(fd)
            continue
        owner = _read_owner(fd)
        if owner:
            if owner.get("host") != host:
                os.close(fd)
                raise UserError(
                    f"{run_dir} is locked by a run on another host ({_owner_text(owner)}): if that run has "
                    f"ended, delete {path} and start again; otherwise train into another hydra.run.dir"
                )
            log.warning("broke the lock of %s left by a run that is gone (%s)", run_dir, _owner_text(owner))
        record = {"pid": pid, "host": host, "started": time.strftime("%Y-%m-%d %H:%M:%S")}
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(record).encode(), 0)
        return RunLock(path, fd)
    raise UserError(f"cannot lock {run_dir}: its lock file keeps changing; is another run starting there?")

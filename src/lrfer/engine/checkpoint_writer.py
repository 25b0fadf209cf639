"""Checkpoints that do not stall training: host copies written and fsynced by a background thread.

The training thread only takes the state (references, :func:`checkpoint_state`), copies its tensors to
host memory (:func:`host_copy`: pinned buffers reused from one checkpoint to the next when CUDA is
available, so the device-to-host copies are asynchronous), and hands the copy to a writer thread, which
waits for the copies to land and writes the file atomically with ``fsync`` (:func:`write_file`). A later
checkpoint first waits for the previous write, so files land in order and never two at once; an error of a
background write (a full disk) is raised on the training thread at the next checkpoint or at
:meth:`CheckpointWriter.flush`. Only the main process writes: a writer built with ``enabled=False`` (every
other rank) does no checkpoint work at all.

``last.pt`` in the middle of a stage holds only what the stage changes (:func:`stage_state_keys`: the
modules it trains, every buffer of the method, the stage's optimisers and schedulers) and names the file
holding the rest, ``stage_start.pt`` (the whole method when the stage started; written once per stage).
:func:`~lrfer.core.checkpoint.load_checkpoint` joins the two, so every reader sees a complete method.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from lrfer.core.checkpoint import save_checkpoint

#: The file a partial ``last.pt`` takes the untrained part of the method from.
STAGE_START = "stage_start.pt"


def stage_state_keys(method: nn.Module, trained: Iterable[nn.Module] | None) -> set[str] | None:
    """The ``state_dict`` keys of ``method`` that a stage training the modules ``trained`` can change:
    theirs and every buffer of the method (running statistics, step counters). None: all of them (the
    trained parameters could not be separated into whole modules)."""
    if trained is None:
        return None
    ids = {id(m) for m in trained}
    prefixes = tuple(f"{name}." for name, m in method.named_modules() if id(m) in ids and name)
    if any(id(m) == id(method) for m in trained):
        return None
    buffers = {name for name, _ in method.named_buffers()}
    every = list(method.state_dict())
    keys = {k for k in every if k.startswith(prefixes) or k in buffers}
    return None if len(keys) == len(every) else keys


def checkpoint_state(build: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """The checkpoint's content as references to the live tensors (``build`` assembles it)."""
    return build()


def host_copy(obj: Any, pool: dict[str, torch.Tensor] | None, pin: bool, _key: str = "") -> Any:
    """``obj`` with every tensor copied to host memory (nested dicts, lists and tuples followed).

    ``pin``: into page-locked buffers kept in ``pool`` (by position in ``obj``) and reused while their shape
    and dtype match, copied ``non_blocking`` (the caller waits for the device before reading them).
    Otherwise plain copies (on a CPU run: a snapshot the training thread can go on changing).
    """
    if isinstance(obj, torch.Tensor):
        t = obj.detach()
        if not pin or pool is None:
            return t.to("cpu", copy=True)
        buf = pool.get(_key)
        if buf is None or buf.shape != t.shape or buf.dtype != t.dtype:
            buf = torch.empty(t.shape, dtype=t.dtype, pin_memory=True)
            pool[_key] = buf
        buf.copy_(t, non_blocking=True)
        return buf
    if isinstance(obj, dict):
        return {k: host_copy(v, pool, pin, f"{_key}/{k}") for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        copied = [host_copy(v, pool, pin, f"{_key}/{i}") for i, v in enumerate(obj)]
        return copied if isinstance(obj, list) else tuple(copied)
    return obj


def write_file(obj: dict[str, Any], path: Path) -> None:
    """Write ``obj`` to ``path`` atomically, fsynced (:func:`~lrfer.core.checkpoint.save_checkpoint`)."""
    save_checkpoint(obj, path)


class CheckpointWriter:
    """Writes checkpoints from a background thread, one at a time, in submission order.

    ``enabled=False`` (non-main ranks, runs without a folder): :meth:`submit` does nothing.
    ``pin``: copy into pinned host memory (only when CUDA is available).
    """

    def __init__(self, enabled: bool, pin: bool = False) -> None:
        self.enabled = enabled
        self.pin = pin and torch.cuda.is_available()
        self._pools: dict[str, dict[str, torch.Tensor]] = {}
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None
        #: Seconds the training thread spent copying the last checkpoint's state to host memory.
        self.last_cost = 0.0
        #: Seconds it waited for the previous write to finish first (a disk slower than the checkpoints).
        self.last_wait = 0.0

    def submit(self, path: Path, build: Callable[[], dict[str, Any]]) -> None:
        """Copy what ``build()`` returns to host memory now and write it to ``path`` in the background."""
        if not self.enabled:
            return
        t0 = time.perf_counter()
        self.flush()  # the previous write (and its pinned buffers) must be done
        t1 = time.perf_counter()
        self.last_wait = t1 - t0
        pool = self._pools.setdefault(Path(path).name, {})
        obj = host_copy(checkpoint_state(build), pool, self.pin)
        event = None
        if self.pin:
            event = torch.cuda.Event()
            event.record()
        self._thread = threading.Thread(
            target=self._write, args=(obj, Path(path), event), name="lrfer-checkpoint", daemon=False
        )
        self._thread.start()
        self.last_cost = time.perf_counter() - t1

    def _write(self, obj: dict[str, Any], path: Path, event) -> None:
        try:
            if event is not None:
                event.synchronize()  # the non-blocking copies into the pinned buffers have landed
            write_file(obj, path)
        except BaseException as err:  # handed to the training thread
            self._error = err

    def flush(self) -> None:
        """Wait for the write in progress; raise its error, if it failed."""
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        if self._error is not None:
            err, self._error = self._error, None
            raise err

    def close(self) -> None:
        """Finish the write in progress (at the end of a run, also a failed or interrupted one)."""
        self.flush()


class CheckpointSchedule:
    """Which epochs write ``last.pt``: every ``every`` epochs (an int), or ``auto``.

    The last epoch of a stage is always checkpointed, and so is an epoch after which the run is asked to
    stop (SIGTERM). ``auto`` starts at every epoch and, after each checkpoint, sets the interval so that
    the training thread's copy of the state (:attr:`CheckpointWriter.last_cost`) stays within ``budget``
    of the training time between two checkpoints: ``ceil(cost / (budget * epoch time))``. (A wait for the
    previous write is not counted: it depends on the disk and other jobs, and would make the schedule of
    short runs erratic; the trainer logs it when it exceeds the budget.)
    """

    def __init__(self, every: int | str | None, budget: float) -> None:
        self.auto = every is None or str(every).lower() == "auto"
        self.every = 1 if self.auto else int(every)
        self.budget = float(budget)
        self.since = 0

    def due(self, last_of_stage: bool, stop: bool) -> bool:
        self.since += 1
        return last_of_stage or stop or self.since >= self.every

    def done(self, cost: float, epoch_seconds: float) -> None:
        """Record a checkpoint that cost the training thread ``cost`` seconds after epochs of
        ``epoch_seconds`` seconds each (``auto``: adapt the interval)."""
        self.since = 0
        if self.auto and epoch_seconds > 0:
            self.every = max(1, math.ceil(cost / (self.budget * epoch_seconds)))

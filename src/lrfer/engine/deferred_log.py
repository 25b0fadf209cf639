"""Training losses logged without a host wait: copied to host memory without blocking at a logging step,
read (and written to TensorBoard) at a later step, once the copy has landed.

``.item()`` on a CUDA loss drains the GPU queue; every ``log_every_n_steps`` steps that ended the overlap
of host and device. :class:`DeferredScalars` stacks the step's scalars on the device, starts one
non-blocking copy into a pinned buffer and records a CUDA event; a later :meth:`DeferredScalars.poll`
writes them once the event has completed (``query``, which never waits), and :meth:`flush` (at the end
of an epoch, which synchronises anyway) writes whatever is left. On a CPU the values are written at the next
poll.
"""

from __future__ import annotations

from collections.abc import Callable

import torch


class DeferredScalars:
    def __init__(self, write: Callable[[dict[str, float], int], None]) -> None:
        self.write = write
        self._pending: list[tuple[list[str], torch.Tensor, int, torch.cuda.Event | None]] = []

    def push(self, values: dict[str, torch.Tensor], step: int) -> None:
        """Start copying the scalars ``values`` of training step ``step`` to the host."""
        if not values:
            return
        names = list(values)
        stacked = torch.stack([values[k].detach().float() for k in names])
        event = None
        if stacked.device.type == "cuda":
            host = torch.empty(stacked.shape, dtype=stacked.dtype, pin_memory=True)
            host.copy_(stacked, non_blocking=True)
            event = torch.cuda.Event()
            event.record()
        else:
            host = stacked.clone()
        self._pending.append((names, host, step, event))

    def poll(self) -> None:
        """Write every pending step whose copy has landed (never waits)."""
        while self._pending and (self._pending[0][3] is None or self._pending[0][3].query()):
            self._emit(self._pending.pop(0))

    def flush(self) -> None:
        """Write everything pending, waiting for the copies."""
        while self._pending:
            names, host, step, event = self._pending.pop(0)
            if event is not None:
                event.synchronize()
            self._emit((names, host, step, None))

    def _emit(self, item) -> None:
        names, host, step, _ = item
        self.write(dict(zip(names, host.tolist())), step)

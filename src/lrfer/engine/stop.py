"""A request to stop training at the next epoch boundary, made by SIGTERM (a scheduler's pre-emption).

The first SIGTERM sets :attr:`StopRequest.requested`; the trainer reads it at the end of each epoch's
training, through the all-reduce it already makes there (so every rank agrees on the same epoch,
:attr:`StopRequest.agreed`), writes ``last.pt`` after that epoch whatever ``trainer.checkpoint_every``
says, waits for the write and stops. A second SIGTERM acts as the default one (the process ends at once).
"""

from __future__ import annotations

import contextlib
import logging
import signal
import threading

log = logging.getLogger(__name__)


class Terminated(BaseException):
    """The run stopped because of SIGTERM: raised by the trainer once the stop request's ``last.pt`` is on
    disk, or at once by a second SIGTERM (``lrfer.cli.train``). The command-line layer turns it into one
    line saying how to resume, and exit status 143."""


class StopRequest:
    def __init__(self) -> None:
        self.requested = False
        self.agreed = False

    def _handle(self, signum, frame) -> None:
        self.requested = True
        signal.signal(signal.SIGTERM, self._previous)  # a second SIGTERM: the previous behaviour
        log.warning("SIGTERM: stopping after this epoch, once last.pt is written (send it again to stop now)")

    @contextlib.contextmanager
    def on_sigterm(self):
        """Turn SIGTERM into a stop request while the block runs (only in the main thread, where Python
        delivers signals)."""
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        self._previous = signal.getsignal(signal.SIGTERM) or signal.SIG_DFL
        signal.signal(signal.SIGTERM, self._handle)
        try:
            yield
        finally:
            signal.signal(signal.SIGTERM, self._previous)

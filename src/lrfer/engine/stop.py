"""A request to stop training at the next epoch boundary, made by SIGTERM (a scheduler's pre-emption).

The first SIGTERM sets :attr:`StopRequest.requested`; the trainer reads it at the end of each epoch's
training, through the all-reduce it already makes there (so every rank agrees on the same epoch,
:attr:`StopRequest.agreed`), writes ``last.pt`` after that epoch whatever ``trainer.checkpoint_every``
says, waits for the write and stops. A second SIGTERM acts as the default one (the process ends at once).
"""

from __future__ import annotations

import logging
import signal

from lrfer.core.signals import DeferredSignal

log = logging.getLogger(__name__)


class Terminated(BaseException):
    """The run stopped because of SIGTERM: raised by the trainer once the stop request's ``last.pt`` is on
    disk, or at once by a second SIGTERM (``lrfer.cli.train``). The command-line layer turns it into one
    line saying how to resume, and exit status 143."""


class StopRequest(DeferredSignal):
    """SIGTERM deferred to the end of an epoch (:class:`~lrfer.core.signals.DeferredSignal`); ``agreed`` is
    what every rank decided at that epoch's all-reduce."""

    def __init__(self) -> None:
        super().__init__(signal.SIGTERM, on_first=self._warn)
        self.agreed = False

    @staticmethod
    def _warn() -> None:
        log.warning("SIGTERM: stopping after this epoch, once last.pt is written (send it again to stop now)")

    def on_sigterm(self):
        """Turn SIGTERM into a stop request while the block runs (only in the main thread, where Python
        delivers signals)."""
        return self.installed()

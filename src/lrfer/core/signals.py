"""A signal deferred to a point of the caller's choosing: the first one asks, a second one acts as before.

Training turns SIGTERM (a scheduler's pre-emption) into a stop after the epoch, once ``last.pt`` is written
(:class:`lrfer.engine.stop.StopRequest`); the video tool turns Ctrl-C (SIGINT) into a stop where a chunk of
frames ends, so that no frame is half written (:func:`lrfer.tools.video.track_video`). Both need the same
thing: the first signal sets a flag the caller reads where stopping is safe, and puts the previous handler
back, so that a second signal does what it did before (SIGTERM: the process ends; SIGINT: KeyboardInterrupt).
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Callable, Iterator


class DeferredSignal:
    """``signum`` turned into a request while :meth:`installed` runs (module docstring).

    ``requested`` is true once the signal came; ``on_first()`` runs in the handler (a log line, say). The
    handler is installed only in the main thread, the only one Python delivers signals to; elsewhere the
    block runs with the signal's behaviour unchanged and ``requested`` stays false.
    """

    def __init__(self, signum: int, on_first: Callable[[], None] | None = None) -> None:
        self.signum = signum
        self.on_first = on_first
        self._event = threading.Event()
        self._previous: Callable | int | None = None

    @property
    def requested(self) -> bool:
        return self._event.is_set()

    def is_requested(self) -> bool:
        """``requested`` as a callable, for code that polls (a frame reader waiting on a camera)."""
        return self._event.is_set()

    def _handle(self, signum: int, frame: object) -> None:
        self._event.set()
        signal.signal(self.signum, self._previous)  # a second signal: the previous behaviour
        if self.on_first is not None:
            self.on_first()

    @contextlib.contextmanager
    def installed(self) -> Iterator[DeferredSignal]:
        """Defer the signal while the block runs; the previous handler is back when it ends."""
        if threading.current_thread() is not threading.main_thread():
            yield self
            return
        previous = signal.getsignal(self.signum)
        self._previous = signal.SIG_DFL if previous is None else previous
        signal.signal(self.signum, self._handle)
        try:
            yield self
        finally:
            signal.signal(self.signum, self._previous)

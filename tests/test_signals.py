"""lrfer.core.signals.DeferredSignal: the first signal asks, a second acts as before, then the old handler."""

from __future__ import annotations

import signal
import threading

import pytest

from lrfer.core.signals import DeferredSignal


@pytest.fixture
def python_sigint(request):
    """SIGINT handled by Python's own handler (KeyboardInterrupt) during the test, whatever was set before."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    request.addfinalizer(lambda: signal.signal(signal.SIGINT, previous))


def test_the_first_signal_sets_requested_and_does_not_interrupt(python_sigint):
    calls = []
    with DeferredSignal(signal.SIGINT, on_first=lambda: calls.append(1)).installed() as deferred:
        assert not deferred.requested
        signal.raise_signal(signal.SIGINT)
        assert deferred.requested and deferred.is_requested()
    assert calls == [1]


def test_a_second_signal_acts_as_the_previous_handler(python_sigint):
    with DeferredSignal(signal.SIGINT).installed():
        signal.raise_signal(signal.SIGINT)
        with pytest.raises(KeyboardInterrupt):
            signal.raise_signal(signal.SIGINT)


def test_the_previous_handler_is_back_when_no_signal_came(python_sigint):
    with DeferredSignal(signal.SIGINT).installed():
        assert signal.getsignal(signal.SIGINT) is not signal.default_int_handler
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_the_previous_handler_is_back_when_the_block_raises(python_sigint):
    with pytest.raises(RuntimeError), DeferredSignal(signal.SIGINT).installed():
        raise RuntimeError("boom")
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_outside_the_main_thread_nothing_is_installed(python_sigint):
    seen = []

    def body() -> None:
        with DeferredSignal(signal.SIGINT).installed() as deferred:
            seen.append((signal.getsignal(signal.SIGINT), deferred.requested))

    thread = threading.Thread(target=body)
    thread.start()
    thread.join()
    assert seen == [(signal.default_int_handler, False)]

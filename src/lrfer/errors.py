"""User-facing errors: one clear line, never a traceback."""

from __future__ import annotations

import functools
import logging
import sys
from collections.abc import Callable
from typing import TypeVar

log = logging.getLogger(__name__)

F = TypeVar("F", bound=Callable)

#: Exit status of a command stopped by a user error (bad option, missing folder, corrupt file, ...).
USER_ERROR_EXIT_CODE = 2


class UserError(Exception):
    """An error the user caused and can fix: the message says what is wrong and what to do."""


def exit_on_user_error(fn: F) -> F:
    """Decorate a command-line entry point: a :class:`UserError` prints ``error: <message>`` and exits 2."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except UserError as err:
            print(f"error: {err}", file=sys.stderr, flush=True)
            raise SystemExit(USER_ERROR_EXIT_CODE) from None
        except KeyboardInterrupt:
            print("interrupted", file=sys.stderr, flush=True)
            raise SystemExit(130) from None

    return wrapper  # type: ignore[return-value]

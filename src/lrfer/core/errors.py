"""User-facing errors: one clear line, never a traceback.

Exit status of every lrfer command (``python train.py``, ``lrfer-train``, ``lrfer-evaluate``,
``lrfer-predict`` and the scripts):

- 0: success;
- 1: a Hydra/config error (a misspelt key, a value of the wrong type, an unknown group option) or a crash;
- 2: a user error: an invalid value, a missing or corrupt file, a protected run folder, a full disk, ...
  (one ``error: ...`` line on stderr; for training also in the run's ``train.log``);
- 130: interrupted (Ctrl-C).
"""

from __future__ import annotations

import contextlib
import errno
import functools
import logging
import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

log = logging.getLogger(__name__)

F = TypeVar("F", bound=Callable)

#: Exit status of a command stopped by a user error (bad option, missing folder, corrupt file, ...).
USER_ERROR_EXIT_CODE = 2
#: Exit status Hydra uses for a config error (and Python for a crash).
CONFIG_ERROR_EXIT_CODE = 1

#: ``errno`` values of a write that failed because of the disk, not because of lrfer.
_DISK_ERRNOS = {
    getattr(errno, name): reason
    for name, reason in (
        ("ENOSPC", "no space left on the device"),
        ("EDQUOT", "the disk quota is exceeded"),
        ("EFBIG", "the file is larger than allowed (a file size limit)"),
        ("EROFS", "the file system is read-only"),
        ("EACCES", "permission denied"),
        ("EPERM", "permission denied"),
    )
    if hasattr(errno, name)
}


class UserError(Exception):
    """An error the user caused and can fix: the message says what is wrong and what to do."""


class ProcessError(UserError):
    """A user error that may concern one process only (e.g. its GPU): printed by every torchrun rank.

    Other user errors (an invalid value, a missing dataset) are the same on every rank and printed once,
    by rank 0.
    """


def disk_error(err: BaseException, path: str | Path, what: str = "write") -> UserError | None:
    """A :class:`UserError` for a write that failed for want of disk (``err`` or an exception it wraps).

    ``torch.save`` wraps the ``OSError`` of a full disk in a ``RuntimeError``, so the cause and context
    chain is searched. Returns None when the failure is not a disk problem.
    """
    seen = set()
    cause: BaseException | None = err
    while cause is not None and id(cause) not in seen:
        seen.add(id(cause))
        if isinstance(cause, OSError) and cause.errno in _DISK_ERRNOS:
            return UserError(
                f"cannot {what} {path}: {_DISK_ERRNOS[cause.errno]} ([Errno {cause.errno}]); "
                "free some space or write elsewhere (hydra.run.dir=..., paths.cache_dir=...)"
            )
        cause = cause.__cause__ or cause.__context__
    return None


#: ``errno`` values of a write to a path that cannot hold a file (a file where a folder should be, ...).
_PATH_ERRNOS = {
    getattr(errno, name): reason
    for name, reason in (
        ("ENOTDIR", "a part of the path is a file, not a folder"),
        ("EEXIST", "a file of that name is in the way"),
        ("EISDIR", "it is a folder"),
        ("ENAMETOOLONG", "the name is too long"),
        ("EINVAL", "the name is not valid on this file system"),
    )
    if hasattr(errno, name)
}


def output_error(err: BaseException, path: str | Path, what: str = "write") -> UserError | None:
    """:func:`disk_error`, or a :class:`UserError` for a path that cannot be written (a file in the way of a
    folder, a folder in the way of a file); None when the failure is neither."""
    if (user := disk_error(err, path, what)) is not None:
        return user
    seen = set()
    cause: BaseException | None = err
    while cause is not None and id(cause) not in seen:
        seen.add(id(cause))
        if isinstance(cause, OSError) and cause.errno in _PATH_ERRNOS:
            where = f" ({cause.filename})" if cause.filename and str(cause.filename) != str(path) else ""
            return UserError(
                f"cannot {what} {path}: {_PATH_ERRNOS[cause.errno]}{where} ([Errno {cause.errno}]); "
                "write elsewhere"
            )
        cause = cause.__cause__ or cause.__context__
    return None


@contextlib.contextmanager
def writing(path: str | Path, what: str = "write") -> Iterator[None]:
    """Turn a failed write to ``path`` (full or read-only disk, impossible path) into one-line
    :class:`UserError` (:func:`output_error`); other errors pass unchanged."""
    try:
        yield
    except (OSError, RuntimeError) as err:
        if (user := output_error(err, path, what)) is not None:
            raise user from None
        raise


def make_output_folder(path: str | Path) -> Path:
    """``mkdir -p path``, or a one-line :class:`UserError` saying why it cannot be made."""
    path = Path(path)
    with writing(path, "create the folder"):
        path.mkdir(parents=True, exist_ok=True)
    return path


def check_folder_can_be_written(path: str | Path, what: str = "write into") -> None:
    """Refuse (one line, as :func:`output_error`) a folder that cannot be made or written, without making it:
    a file in its way, a read-only file system, a folder the user may not write."""
    path = Path(path).expanduser().absolute()
    existing = path
    while not existing.exists() and existing.parent != existing:
        existing = existing.parent
    if not existing.is_dir():
        err: OSError = NotADirectoryError(errno.ENOTDIR, "Not a directory", str(existing))
    elif os.statvfs(existing).f_flag & os.ST_RDONLY:
        err = OSError(errno.EROFS, "Read-only file system", str(existing))
    elif not os.access(existing, os.W_OK | os.X_OK):
        err = PermissionError(errno.EACCES, "Permission denied", str(existing))
    else:
        return
    raise output_error(err, path, what) or UserError(f"cannot {what} {path}")


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


def console_script(main: Callable) -> Callable[[], int]:
    """The function a ``[project.scripts]`` entry calls: runs ``main()`` and returns exit status 0.

    The wrapper that pip writes passes the return value to ``sys.exit``; ``main`` returns its results
    (for Python callers), which ``sys.exit`` would print on stderr with status 1.
    """

    @functools.wraps(main)
    def entry() -> int:
        main()
        return 0

    return entry

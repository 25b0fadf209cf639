"""Checkpoints written atomically (temporary file + rename) and loaded with ``weights_only=True``.

Files are created with the permissions the umask allows (``0666 & ~umask``), like any other file the
user writes, so a group sharing a folder can read the runs. A write that fails for want of disk (full,
quota, read-only) is a :class:`~lrfer.core.errors.UserError`, and leaves no temporary file behind; one left
by a
killed process is removed by :func:`remove_orphan_temporaries` when the run folder is next used.
"""

from __future__ import annotations

import json
import os
import re
import secrets
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch

from lrfer.core.errors import UserError, output_error

#: Temporary files are ``.<name>.tmp-<pid>-<random>`` beside their target (``.<name>.<8 chars>`` before).
_TEMPORARY = re.compile(r"^\..+\.(pt|json)\.(tmp-\d+-[0-9a-f]+|[A-Za-z0-9_]{8})$")


def _open_temporary(path: Path) -> tuple[int, Path]:
    """A new file beside ``path``, created with mode ``0666 & ~umask`` (``mkstemp`` would give 0600)."""
    while True:
        tmp = path.parent / f".{path.name}.tmp-{os.getpid()}-{secrets.token_hex(4)}"
        try:
            return os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666), tmp
        except FileExistsError:
            continue


def atomic_write_bytes(path: Path, write) -> None:
    """Call ``write(file_object)`` on a temporary sibling of ``path``, then rename it over ``path``."""
    path = Path(path)
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = _open_temporary(path)
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as err:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
        if isinstance(err, Exception) and (user := output_error(err, path)) is not None:
            raise user from None
        raise


def remove_orphan_temporaries(folders: Iterable[Path]) -> list[Path]:
    """Delete temporary files that a killed write left in ``folders``; returns what was removed."""
    removed = []
    for folder in folders:
        if not Path(folder).is_dir():
            continue
        for f in Path(folder).iterdir():
            if f.is_file() and _TEMPORARY.match(f.name):
                f.unlink(missing_ok=True)
                removed.append(f)
    return removed


def save_checkpoint(obj: dict[str, Any], path: Path) -> None:
    atomic_write_bytes(Path(path), lambda f: torch.save(obj, f))


def load_checkpoint(path: Path, require: Iterable[str] = ("method",)) -> dict[str, Any]:
    """Load a checkpoint on the CPU.

    A missing or unreadable file, or one that holds something other than a dict with the ``require``d keys
    (an lrfer checkpoint's structure), is a :class:`UserError`.
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(f"checkpoint {path} does not exist")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise UserError(
            f"checkpoint {path} cannot be read ({type(err).__name__}): it is corrupt or not lrfer's"
        ) from None
    if not isinstance(state, dict):
        problem = f"a {type(state).__name__}, not a dict"
    elif missing := [k for k in require if k not in state]:
        problem = f"no {', '.join(repr(k) for k in missing)}"
    elif "method" in state and not isinstance(state["method"], dict):
        problem = f"a {type(state['method']).__name__} as its method weights"
    elif state.get("method_base"):
        return _with_method_base(state, path)
    else:
        return state
    raise UserError(f"{path} is not an lrfer checkpoint (it holds {problem}): give a run's best.pt/last.pt")


def _with_method_base(state: dict[str, Any], path: Path) -> dict[str, Any]:
    """A mid-stage ``last.pt`` holds only what its stage changes: the rest of the method comes from the
    file it names (``stage_start.pt``, the whole method when that stage started)."""
    base_path = path.parent / str(state["method_base"])
    base = load_checkpoint(base_path, require=("method", "stage_index"))
    if base["stage_index"] != state.get("stage_index"):
        raise UserError(
            f"{path} continues stage {state.get('stage_index')} but {base_path} is the start of stage "
            f"{base['stage_index']}: the run folder was changed by hand; train into a new hydra.run.dir"
        )
    partial = state["method"]
    state["method"] = {k: partial.get(k, v) for k, v in base["method"].items()}
    state["method"].update({k: v for k, v in partial.items() if k not in state["method"]})
    del state["method_base"]
    return state


def resolve_run_checkpoint(path: str | Path, what: str = "checkpoint") -> Path:
    """A checkpoint file, or a run folder (its ``checkpoints/best.pt``, else ``checkpoints/last.pt``)."""
    path = Path(str(path)).expanduser()
    if path.is_dir():
        for name in ("best.pt", "last.pt"):
            if (path / "checkpoints" / name).is_file():
                return path / "checkpoints" / name
        raise UserError(f"{what}={path} is a folder without checkpoints/best.pt or last.pt")
    if not path.is_file():
        raise UserError(f"{what}={path} does not exist: give a run folder or its checkpoints/best.pt")
    return path


def write_json(obj: Any, path: Path) -> None:
    """Write JSON atomically."""
    text = json.dumps(obj, indent=2, sort_keys=False) + "\n"
    atomic_write_bytes(Path(path), lambda f: f.write(text.encode()))

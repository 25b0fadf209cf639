"""Checkpoints written atomically (temporary file + rename) and loaded with ``weights_only=True``."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import torch

from lrfer.errors import UserError


def atomic_write_bytes(path: Path, write) -> None:
    """Call ``write(file_object)`` on a temporary sibling of ``path``, then rename it over ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def save_checkpoint(obj: dict[str, Any], path: Path) -> None:
    atomic_write_bytes(Path(path), lambda f: torch.save(obj, f))


def load_checkpoint(path: Path) -> dict[str, Any]:
    """Load a checkpoint on the CPU; a missing or unreadable file is a :class:`UserError`."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"checkpoint {path} does not exist")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise UserError(
            f"checkpoint {path} cannot be read ({type(err).__name__}): it is corrupt or not lrfer's"
        ) from None


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

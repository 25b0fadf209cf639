"""One host copy of the low-resolution views per machine, shared by its torchrun processes.

When the images stay on the host (``dataset.on_device=false``, or ``auto`` with data too large for the GPU),
each low-resolution view (:meth:`~lrfer.data.pipeline.FaceDataModule.view`) is a uint8 array as large as
the split at that resolution: AffectNet at 224 px holds 15.7 GB of them. Built by every process, an 8-GPU
machine would hold eight copies (about 125 GB). With :class:`MachineSharing` the processes of one machine
share one copy instead:

* the machine's local rank 0 computes the view and writes it into the cache entry the images came from
  (``<cache entry>/views/<name>.npy``, with ``<name>.json`` recording its size, modification time and
  CRC-32), into a temporary file first, fsynced and renamed into place, so no process ever sees half a file;
* every process waits at a barrier, then memory-maps the file read-only (copy-on-write): its pages sit once
  in the page cache, whatever the number of processes mapping them;
* a later run finds the file and verifies it (local rank 0 checks its CRC-32; the others its size and
  modification time, which rank 0 has just vouched for) instead of computing it again; a damaged file is
  logged and rebuilt.

``<name>`` hashes what the view is made from: the cache file of the images, the degradation, the resize
kernel and antialiasing, the noise seed, the device type that computes it and the torch version (the
views are bit-for-bit per device type and library build). Images that are not in a cache
(``paths.cache_dir=null``, a cache that could not be written, splits merged in memory) are not shared: each
process makes its own copy, as a single process does. Deleting ``<cache entry>/views`` frees the disk space;
the views are made again when needed.

The barrier makes sharing a collective step: the data module shares a view only where every rank asks for
it in the same order (the start of a training epoch and of an evaluation), never in a one-rank call.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import secrets
import weakref
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from lrfer.core.errors import disk_error

log = logging.getLogger(__name__)

VIEWS_FOLDER = "views"
VIEWS_FORMAT = 1
_CHUNK = 1 << 24

#: id(image tensor) -> (weak reference to it, its cache entry, its file name there); see :func:`register`.
_SOURCES: dict[int, tuple[weakref.ref, Path, str]] = {}


def register(images: torch.Tensor, entry: Path, file: str) -> None:
    """Record that ``images`` hold the contents of ``entry/file`` (a verified cache array)."""
    key = id(images)
    _SOURCES[key] = (weakref.ref(images, lambda _ref, key=key: _SOURCES.pop(key, None)), entry, file)


def source_of(images: torch.Tensor) -> tuple[Path, str] | None:
    """The cache entry and file ``images`` came from, or None (not from a cache)."""
    found = _SOURCES.get(id(images))
    if found is None or found[0]() is not images:
        return None
    return found[1], found[2]


def view_name(source: str, label: str, *, kernel: str, antialias: bool, seed: int, device: str) -> str:
    """The file name (without suffix) of one view: a hash of everything the view's bytes depend on."""
    blob = json.dumps(
        {
            "format": VIEWS_FORMAT,
            "source": source,
            "degradation": label,
            "kernel": kernel,
            "antialias": bool(antialias),
            "seed": int(seed),
            "device": device,
            "torch": torch.__version__,
        },
        sort_keys=True,
    )
    return f"{label.replace('+', '_')}-{hashlib.sha1(blob.encode()).hexdigest()[:16]}"


def file_crc32(path: Path) -> int:
    """The standard CRC-32 of a file's bytes, read in chunks (the cache's and the shared views' checksum)."""
    crc = 0
    with path.open("rb") as f:
        while chunk := f.read(_CHUNK):
            crc = zlib.crc32(chunk, crc)
    return crc


def publish(folder: Path, name: str, view: torch.Tensor) -> bool:
    """Write ``view`` as ``folder/name.npy`` (then its record ``name.json``), atomically; False (and a
    warning) when the disk refuses, leaving no partial file."""
    array, record = folder / f"{name}.npy", folder / f"{name}.json"
    unique = f"{os.getpid()}-{secrets.token_hex(4)}"  # machines sharing one cache folder have their own
    tmp_array = folder / f".{name}.tmp-{unique}.npy"  # np.save would append .npy to another suffix
    tmp_record = folder / f".{name}.tmp-{unique}.json"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tmp_array.open("wb") as f:
            np.save(f, view.cpu().numpy())
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp_array, array)
        st = array.stat()
        meta = {"shape": list(view.shape), "size": st.st_size, "mtime_ns": st.st_mtime_ns}
        meta["crc32"] = file_crc32(array)
        tmp_record.write_text(json.dumps(meta))
        os.replace(tmp_record, record)
        return True
    except OSError as err:
        for path in (tmp_array, tmp_record):
            with contextlib.suppress(OSError):
                path.unlink(missing_ok=True)
        problem = disk_error(err, array) or f"cannot write {array}: {' '.join(str(err).split())}"
        log.warning("%s; every process keeps its own copy of this view", problem)
        return False


def open_view(folder: Path, name: str, shape: tuple[int, ...], every_byte: bool) -> torch.Tensor | None:
    """The view ``folder/name.npy`` memory-mapped (copy-on-write), or None when it is missing or damaged
    (a damaged one is logged and removed). ``every_byte``: also check its CRC-32 (else size and mtime)."""
    array, record = folder / f"{name}.npy", folder / f"{name}.json"
    if not record.exists():
        return None
    try:
        meta = json.loads(record.read_text())
        st = array.stat()
        problem = None
        if list(meta["shape"]) != list(shape):
            problem = f"shape {meta['shape']}, not {list(shape)}"
        elif st.st_size != meta["size"]:
            problem = f"{st.st_size} bytes, not {meta['size']}"
        elif not every_byte and st.st_mtime_ns != meta["mtime_ns"]:
            problem = "changed since it was written"
        elif every_byte and file_crc32(array) != meta["crc32"]:
            problem = "does not match its checksum"
        if problem is None:
            mapped = np.load(array, mmap_mode="c")
            if mapped.dtype != np.uint8 or tuple(mapped.shape) != tuple(shape):
                problem = f"holds {mapped.dtype} {mapped.shape}"
            else:
                return torch.from_numpy(mapped)
    except Exception as err:  # a record that is not JSON, a truncated .npy, ...
        problem = " ".join(str(err).split()) or type(err).__name__
    log.warning("the shared view %s is damaged (%s): making it again", array, problem)
    if every_byte:  # only the rank that rebuilds it removes it
        for path in (record, array):
            with contextlib.suppress(OSError):
                path.unlink(missing_ok=True)
    return None


@dataclass
class MachineSharing:
    """How the processes of one machine share what they would each make alike (the cache entry of the
    dataset, :func:`lrfer.data.cache.load_or_build`; the views, :meth:`share`): this process's
    ``local_rank`` (0 makes it) and a ``barrier`` every process of the run reaches
    (``torch.distributed.barrier``)."""

    local_rank: int
    barrier: Callable[[], None]

    def share(
        self,
        source: tuple[Path, str] | None,
        name: str,
        shape: tuple[int, ...],
        build: Callable[[], torch.Tensor],
        have: torch.Tensor | None = None,
        on_host: bool = True,
    ) -> torch.Tensor:
        """The view ``name``: mapped from the shared file when there is one, else ``have`` or ``build()``.

        Every process of the run calls it for the same views in the same order (it contains a barrier).
        ``source``: the cache entry and file of the images (None: nothing to share); ``on_host``: this
        process keeps its views on the host (else it builds its own, on its device).
        """
        folder = None if source is None else source[0] / VIEWS_FOLDER
        view = None
        try:
            if self.local_rank == 0 and on_host and folder is not None:
                view = open_view(folder, name, shape, every_byte=True)
                if view is None:
                    made = have if have is not None else build()
                    if publish(folder, name, made):
                        view = open_view(folder, name, shape, every_byte=False)
                    else:
                        view = made
                    del made
        finally:
            self.barrier()  # also when making it failed: the others then make their own (or fail alike)
        if view is None:
            if on_host and folder is not None:
                view = open_view(folder, name, shape, every_byte=False)
                if view is None:
                    log.warning("no shared copy of view %s: this process makes its own", name)
            if view is None:
                view = have if have is not None else build()
        return view

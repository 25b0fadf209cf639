"""Decode a dataset once into a uint8 cache on disk; later runs memory-map it.

A cache entry is a folder ``<cache_dir>/<dataset>/<key>/`` holding ``<split>_images.npy`` (N, 3, H, W) uint8,
``<split>_labels.npy``, optional ``<split>_targets.npy`` and ``manifest.json`` (source fingerprint, class
names, counts, content hash, and the size, modification time and CRC-32 of every file). ``key`` hashes the
adapter's fingerprint (its options and the size and modification time of its source files), so the cache is
rebuilt exactly when those change.

Nothing in the cache is trusted: every load checks the manifest, the files' sizes, the arrays' shapes, dtypes,
counts and label range, the stored content hash (labels and a sample of images) and the CRC-32 of every
file, so bytes changed in place are found even when the modification time was kept (silent bit rot). The
full read costs 1.6 s on a RAF-DB-sized cache (``scripts/bench_cache.py``, figures in the README); it
also brings the images into the page cache, which the first epoch reads anyway. A damaged entry is logged in
one line and rebuilt.

Writes are safe with several processes building and reading one entry at once (sweep jobs, torchrun ranks):
an entry is written into a private temporary folder and renamed into place, once. When another process got
there first the rename fails, and that counts as success (the data are identical); a damaged entry is first
renamed aside, then deleted. Folders and files get the permissions the umask allows.
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import secrets
import shutil
from pathlib import Path

import numpy as np
import torch

from lrfer.core.errors import disk_error
from lrfer.data.faces import FaceData, FaceSplit
from lrfer.data.shared_views import MachineSharing, file_crc32, register

log = logging.getLogger(__name__)

CACHE_FORMAT = 1


class CacheDamaged(Exception):
    """A cache entry that cannot be used as it is (the message says why); it is rebuilt."""


def fingerprint_key(fingerprint: dict) -> str:
    blob = json.dumps({"format": CACHE_FORMAT, **fingerprint}, sort_keys=True, default=str)
    return hashlib.sha1(blob.encode()).hexdigest()[:16]


def cache_path(cache_dir: str | Path, name: str, fingerprint: dict) -> Path:
    return Path(cache_dir) / name / fingerprint_key(fingerprint)


def _content_hash(data: FaceData) -> str:
    h = hashlib.sha1()
    for split_name, split in data.splits.items():
        h.update(split_name.encode())
        h.update(split.labels.numpy().tobytes())
        h.update(np.ascontiguousarray(split.images[:: max(1, len(split) // 64)].numpy()).tobytes())
    return h.hexdigest()


def _file_record(path: Path) -> dict:
    st = path.stat()
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "crc32": file_crc32(path)}


def _scratch(path: Path, kind: str) -> Path:
    return path.parent / f".{path.name}.{kind}-{os.getpid()}-{secrets.token_hex(4)}"


def write_cache(path: Path, data: FaceData, fingerprint: dict) -> bool:
    """Write ``data`` to ``path`` once: into a temporary sibling folder, then renamed into place.

    Returns False when another process had already written the entry (the rename found it there): that
    entry is kept and the copy discarded. A damaged entry must be removed first (:func:`discard_entry`).
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _scratch(path, "tmp")
    tmp.mkdir()
    try:
        files = {}
        for split_name, split in data.splits.items():
            arrays = {"images": split.images, "labels": split.labels, "targets": split.targets}
            for kind, tensor in arrays.items():
                if tensor is None:
                    continue
                name = f"{split_name}_{kind}.npy"
                np.save(tmp / name, tensor.cpu().numpy())
                files[name] = _file_record(tmp / name)
        for name, text in data.files.items():  # e.g. crop_boxes.csv of dataset.crop=detect
            (tmp / name).write_text(text)
            files[name] = _file_record(tmp / name)
        manifest = {
            "format": CACHE_FORMAT,
            "dataset": data.name,
            "class_names": data.class_names,
            "splits": {k: len(v) for k, v in data.splits.items()},
            "image_size": list(data.image_size),
            "content_hash": _content_hash(data),
            "files": files,
            "fingerprint": fingerprint,
            "info": data.info,
        }
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2, default=str))
        try:
            os.rename(tmp, path)
        except OSError as err:
            if err.errno in (errno.EEXIST, errno.ENOTEMPTY) or path.is_dir():
                log.debug("%s was written by another process meanwhile: keeping it", path)
                shutil.rmtree(tmp, ignore_errors=True)
                return False
            raise
        return True
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def discard_entry(path: Path) -> None:
    """Remove a damaged entry: renamed aside first (atomic, so no reader sees half of it), then deleted."""
    aside = _scratch(path, "damaged")
    try:
        os.rename(path, aside)
    except FileNotFoundError:
        return  # another process removed it already
    shutil.rmtree(aside, ignore_errors=True)


def _check(condition: bool, reason: str) -> None:
    if not condition:
        raise CacheDamaged(reason)


def read_cache(path: Path, every_byte: bool = True) -> FaceData:
    """Load and verify a cache entry (images memory-mapped); :class:`CacheDamaged` says what is wrong.

    ``every_byte``: the CRC-32 of every file is checked (False: only of files whose modification time is
    not the recorded one; ``scripts/bench_cache.py`` measures what the full check costs).
    """
    try:
        return _read_verified(path, every_byte)
    except CacheDamaged:
        raise
    except Exception as err:  # a truncated .npy, a missing file, a manifest that is not JSON, ...
        text = " ".join(str(err).split()) or type(err).__name__
        raise CacheDamaged(f"{type(err).__name__}: {text}") from None


def _read_verified(path: Path, every_byte: bool = True) -> FaceData:
    manifest = json.loads((path / "manifest.json").read_text())
    _check(isinstance(manifest, dict), "manifest.json is not a JSON object")
    _check(manifest.get("format") == CACHE_FORMAT, f"manifest format {manifest.get('format')!r}")
    counts, class_names, size = manifest["splits"], manifest["class_names"], manifest["image_size"]
    _check(isinstance(counts, dict) and counts, "manifest.json lists no splits")
    _check(isinstance(class_names, list) and class_names, "manifest.json lists no classes")
    _check(isinstance(size, list) and len(size) == 2, "manifest.json has no image size")
    for name, record in (manifest.get("files") or {}).items():
        file = path / name
        st = file.stat()
        _check(st.st_size == record["size"], f"{name} has {st.st_size} bytes, not {record['size']}")
        if every_byte or st.st_mtime_ns != record["mtime_ns"]:
            _check(file_crc32(file) == record["crc32"], f"{name} does not match its checksum")
    splits = {}
    for split_name, n in counts.items():
        # Copy-on-write memory map: pages are read from disk when used, nothing is copied up front.
        images = np.load(path / f"{split_name}_images.npy", mmap_mode="c")
        labels = np.load(path / f"{split_name}_labels.npy")
        _check(
            images.dtype == np.uint8 and images.ndim == 4 and images.shape[0] == n,
            f"{split_name}_images.npy is {images.dtype} {images.shape}, not {n} uint8 images",
        )
        _check(list(images.shape[2:]) == list(size), f"{split_name} images are not {size[0]}x{size[1]}")
        _check(
            labels.shape == (n,) and labels.dtype.kind in "iu", f"{split_name}_labels.npy is not {n} labels"
        )
        _check(
            n == 0 or (labels.min() >= 0 and labels.max() < len(class_names)),
            f"{split_name} labels outside 0..{len(class_names) - 1}",
        )
        targets_file = path / f"{split_name}_targets.npy"
        targets = None
        if targets_file.exists():
            targets = torch.from_numpy(np.load(targets_file)).float()
            _check(targets.shape[0] == n, f"{split_name}_targets.npy does not have {n} rows")
        images = torch.from_numpy(images)
        register(images, path, f"{split_name}_images.npy")  # its views can be shared across processes
        splits[split_name] = FaceSplit(images, torch.from_numpy(labels).long(), targets)
    data = FaceData(manifest["dataset"], list(class_names), splits, dict(manifest.get("info", {})))
    _check(_content_hash(data) == manifest["content_hash"], "the content hash does not match")
    return data


def load_or_build(adapter, cache_dir: str | Path | None, sharing: MachineSharing | None = None) -> FaceData:
    """Return the adapter's data from the cache, building (or rebuilding) the cache first if needed.

    ``cache_dir=None`` skips the cache (the adapter is decoded every time). A cache that cannot be written
    (full disk, read-only folder, a disk filling during the write) is a warning: the decoded data are used
    without it, and no partial entry is left.

    ``sharing`` (several torchrun processes on one machine): local rank 0 reads or builds the entry while
    the others wait at a barrier, then every process memory-maps it; so a first run decodes the dataset
    once per machine and holds its images once, not once per process. When local rank 0 could not write
    the entry, the others decode it themselves (as without sharing).
    """
    if cache_dir is None:
        return adapter.load()
    if sharing is None:
        return _load_or_build(adapter, cache_dir)
    if sharing.local_rank != 0:
        sharing.barrier()  # local rank 0 has read or built the entry
        return _load_or_build(adapter, cache_dir)
    try:
        data = _load_or_build(adapter, cache_dir, mapped=True)
    finally:
        sharing.barrier()  # also when it failed: the others then find no entry and fail on their own
    return data


def _load_or_build(adapter, cache_dir: str | Path, mapped: bool = False) -> FaceData:
    """:func:`load_or_build` in one process; ``mapped``: a freshly built entry is read back memory-mapped
    (the decoded copy is dropped), as the other processes of the machine will read it."""
    fingerprint = adapter.fingerprint()
    path = cache_path(cache_dir, adapter.name, fingerprint)
    if path.exists():
        try:
            data = read_cache(path)
            log.info("using cached %s at %s", adapter.name, path)
            return data
        except CacheDamaged as err:
            log.warning("the %s cache at %s is damaged (%s): rebuilding it", adapter.name, path, err)
            discard_entry(path)
    else:
        log.info("building the %s cache at %s", adapter.name, path)
    data = adapter.load()
    try:
        write_cache(path, data, fingerprint)  # False: another process wrote the same entry meanwhile
        for split_name, split in data.splits.items():
            if split.rows is None:  # the entry's file holds exactly these images
                register(split.base, path, f"{split_name}_images.npy")
        if mapped:
            try:
                return read_cache(path)
            except CacheDamaged as err:  # written a moment ago: keep the decoded data
                log.warning("the cache just written at %s reads back damaged (%s)", path, err)
    except OSError as err:
        # A disk that fills during the write may surface as numpy's short write ("... requested and ...
        # written", no errno): any failed write of the cache leaves the decoded data usable.
        problem = disk_error(err, path) or (
            f"cannot write {path}: {' '.join(str(err).split()) or type(err).__name__} (is the disk full?)"
        )
        log.warning("%s; continuing without a cache", problem)
    return data

"""Decode a dataset once into a uint8 cache on disk; later runs memory-map it.

A cache entry is a folder ``<cache_dir>/<dataset>/<key>/`` holding ``<split>_images.npy`` (N, 3, H, W) uint8,
``<split>_labels.npy``, optional ``<split>_targets.npy`` and ``manifest.json`` (source fingerprint, class
names, counts, content hash). ``key`` hashes the adapter's fingerprint (its options and the size and
modification time of its source files), so the cache is rebuilt exactly when those change. The entry is
written into a temporary folder and renamed into place, so an interrupted or failed build leaves nothing
half-written.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import torch

from lrfer.data.faces import FaceData, FaceSplit

log = logging.getLogger(__name__)

CACHE_FORMAT = 1


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


def write_cache(path: Path, data: FaceData, fingerprint: dict) -> None:
    """Write ``data`` to ``path`` atomically (temporary sibling folder, then rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    try:
        for split_name, split in data.splits.items():
            np.save(tmp / f"{split_name}_images.npy", split.images.cpu().numpy())
            np.save(tmp / f"{split_name}_labels.npy", split.labels.cpu().numpy())
            if split.targets is not None:
                np.save(tmp / f"{split_name}_targets.npy", split.targets.cpu().numpy())
        for name, text in data.files.items():  # e.g. crop_boxes.csv of dataset.crop=detect
            (tmp / name).write_text(text)
        manifest = {
            "format": CACHE_FORMAT,
            "dataset": data.name,
            "class_names": data.class_names,
            "splits": {k: len(v) for k, v in data.splits.items()},
            "image_size": list(data.image_size),
            "content_hash": _content_hash(data),
            "fingerprint": fingerprint,
            "info": data.info,
        }
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2, default=str))
        if path.exists():
            shutil.rmtree(path)
        os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def read_cache(path: Path) -> FaceData:
    """Load a cache entry (images memory-mapped, so nothing is read until used)."""
    manifest = json.loads((path / "manifest.json").read_text())
    splits = {}
    for split_name in manifest["splits"]:
        # Copy-on-write memory map: pages are read from disk when used, nothing is copied up front.
        images = torch.from_numpy(np.load(path / f"{split_name}_images.npy", mmap_mode="c"))
        labels = torch.from_numpy(np.load(path / f"{split_name}_labels.npy")).long()
        targets_file = path / f"{split_name}_targets.npy"
        targets = torch.from_numpy(np.load(targets_file)).float() if targets_file.exists() else None
        splits[split_name] = FaceSplit(images, labels, targets)
    return FaceData(
        manifest["dataset"], list(manifest["class_names"]), splits, dict(manifest.get("info", {}))
    )


def load_or_build(adapter, cache_dir: str | Path | None) -> FaceData:
    """Return the adapter's data from the cache, building the cache first if needed.

    ``cache_dir=None`` skips the cache (the adapter is decoded every time).
    """
    if cache_dir is None:
        return adapter.load()
    fingerprint = adapter.fingerprint()
    path = cache_path(cache_dir, adapter.name, fingerprint)
    if (path / "manifest.json").exists():
        log.info("using cached %s at %s", adapter.name, path)
        return read_cache(path)
    log.info("building the %s cache at %s", adapter.name, path)
    data = adapter.load()
    write_cache(path, data, fingerprint)
    return data

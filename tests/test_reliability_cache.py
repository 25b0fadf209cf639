"""Issue 30: the dataset cache survives a disk that fills during its write, and finds silent bit rot."""

from __future__ import annotations

import logging
import os

import numpy as np
import pytest
import torch
from conftest import compose_cfg, tiny

from lrfer.data import cache as cache_module
from lrfer.data.cache import cache_path, load_or_build
from lrfer.data.datasets import build_adapter


@pytest.fixture(scope="module")
def adapter(tmp_path_factory):
    cfg = compose_cfg(
        *tiny(tmp_path_factory.mktemp("cfg")),
        "dataset.num_train=28",
        "dataset.num_val=14",
        "dataset.num_test=140",  # > 64: the content hash samples every other image
        "dataset.image_size=16",
    )
    return build_adapter(cfg.dataset)


def test_a_disk_filling_during_the_cache_write_continues_without_a_cache(
    adapter, tmp_path, monkeypatch, caplog
):
    real_save = np.save
    calls = []

    def short_write(file, array, *args, **kwargs):  # numpy's own words when the disk fills mid-write
        calls.append(file)
        if len(calls) == 3:
            with open(file, "wb") as f:
                f.write(b"\x93NUMPY" + b"\0" * 100)
            raise OSError(f"{array.nbytes} requested and 106 written")
        return real_save(file, array, *args, **kwargs)

    monkeypatch.setattr(cache_module.np, "save", short_write)
    with caplog.at_level(logging.WARNING, logger="lrfer.data.cache"):
        data = load_or_build(adapter, tmp_path / "cache")
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "requested and 106 written" in warnings[0]
    assert warnings[0].endswith("continuing without a cache")
    assert len(data.splits["train"]) == 28
    entry = cache_path(tmp_path / "cache", adapter.name, adapter.fingerprint())
    assert not entry.exists() and os.listdir(entry.parent) == []  # no partial entry, no scratch folder


def test_silent_bit_rot_with_the_modification_time_restored_is_found_and_rebuilt(adapter, tmp_path, caplog):
    clean = load_or_build(adapter, tmp_path / "cache")
    entry = cache_path(tmp_path / "cache", adapter.name, adapter.fingerprint())
    images = entry / "test_images.npy"
    st = images.stat()
    raw = bytearray(images.read_bytes())
    raw[-7] ^= 0x01  # one bit of the last image (139): the content hash samples 0, 2, ..., 138
    images.write_bytes(bytes(raw))
    os.utime(images, ns=(st.st_atime_ns, st.st_mtime_ns))
    with caplog.at_level(logging.WARNING, logger="lrfer.data.cache"):
        again = load_or_build(adapter, tmp_path / "cache")
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "test_images.npy does not match its checksum" in warnings[0]
    assert torch.equal(again.splits["test"].images, clean.splits["test"].images)

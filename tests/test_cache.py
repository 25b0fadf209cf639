"""The dataset cache (``lrfer.data.cache``) as a specification, on a toy adapter in memory: one entry per
fingerprint, built once and reused, written atomically, verified on every read, rebuilt when damaged.

``test_reliability.py`` and ``test_reliability_cache.py`` check the same cache on the synthetic adapter."""

from __future__ import annotations

import errno
import json
import logging
import os
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch

from lrfer.data import cache as cache_module
from lrfer.data import shared_views as shared_views_module
from lrfer.data.cache import (
    CacheDamaged,
    cache_path,
    discard_entry,
    fingerprint_key,
    load_or_build,
    read_cache,
    write_cache,
)
from lrfer.data.faces import FaceData, FaceSplit

CLASSES = ["a", "b", "c"]


class ToyAdapter:
    """What the cache needs of a dataset adapter: ``name``, ``fingerprint()`` and ``load()`` (counted)."""

    def __init__(self, name="toy", seed=0, targets=False, files=None, empty_test=False, **options):
        self.name, self.seed, self.targets, self.files, self.empty_test = (
            name,
            seed,
            targets,
            files,
            empty_test,
        )
        self.options = {"seed": seed, **options}
        self.loads = 0

    def fingerprint(self) -> dict:
        return dict(self.options)

    def load(self) -> FaceData:
        self.loads += 1
        g = torch.Generator().manual_seed(self.seed)
        splits = {}
        for name, n in {"train": 140, "val": 9, "test": 0 if self.empty_test else 12}.items():
            images = torch.randint(0, 256, (n, 3, 8, 8), dtype=torch.uint8, generator=g)
            labels = torch.arange(n) % len(CLASSES)
            targets = torch.rand(n, len(CLASSES), generator=g) if self.targets and name == "train" else None
            splits[name] = FaceSplit(images, labels, targets)
        return FaceData(self.name, list(CLASSES), splits, {"source": "toy"}, dict(self.files or {}))


def _same(a: FaceData, b: FaceData) -> None:
    assert (a.name, a.class_names, a.info) == (b.name, b.class_names, b.info)
    assert list(a.splits) == list(b.splits)
    for name, split in a.splits.items():
        other = b.splits[name]
        assert torch.equal(split.images, other.images) and torch.equal(split.labels, other.labels)
        assert split.labels.dtype == torch.int64 and split.images.dtype == torch.uint8
        if split.targets is None:
            assert other.targets is None
        else:
            assert torch.equal(split.targets, other.targets)


def _entry(tmp_path: Path, adapter: ToyAdapter) -> Path:
    load_or_build(adapter, tmp_path / "cache")
    return cache_path(tmp_path / "cache", adapter.name, adapter.fingerprint())


def _replace(entry: Path, name: str, array: np.ndarray) -> None:
    """Store ``array`` as ``name`` and update the manifest's record of it, so that only the arrays' own
    checks (shape, dtype, labels, content hash) can find what changed."""
    np.save(entry / name, array)
    manifest = json.loads((entry / "manifest.json").read_text())
    manifest["files"][name] = cache_module._file_record(entry / name)
    (entry / "manifest.json").write_text(json.dumps(manifest))


def _manifest(entry: Path, **changes) -> None:
    manifest = json.loads((entry / "manifest.json").read_text())
    manifest.update(changes)
    (entry / "manifest.json").write_text(json.dumps(manifest))


# -- built once, reused, keyed by the fingerprint --------
def test_a_built_entry_reads_back_the_same_faces_and_the_adapter_is_not_asked_again(tmp_path):
    adapter = ToyAdapter(targets=True)
    first = load_or_build(adapter, tmp_path / "cache")
    second = load_or_build(adapter, tmp_path / "cache")
    assert adapter.loads == 1
    _same(first, adapter.load())
    _same(second, first)
    assert second.splits["train"].targets.dtype == torch.float32


def test_an_empty_split_is_cached_too(tmp_path):
    adapter = ToyAdapter(empty_test=True)
    data = load_or_build(adapter, tmp_path / "cache")
    again = load_or_build(adapter, tmp_path / "cache")
    assert adapter.loads == 1 and len(again.splits["test"]) == 0
    _same(again, data)


def test_a_changed_fingerprint_builds_a_new_entry_and_keeps_the_old_one(tmp_path):
    old, new = ToyAdapter(crop="centre"), ToyAdapter(crop="detect")
    load_or_build(old, tmp_path / "cache")
    load_or_build(new, tmp_path / "cache")
    load_or_build(old, tmp_path / "cache")
    assert (old.loads, new.loads) == (1, 1)
    entries = sorted(p.name for p in (tmp_path / "cache" / "toy").iterdir())
    assert len(entries) == 2 and not any(name.startswith(".") for name in entries)


def test_the_key_depends_on_the_fingerprint_s_values_not_on_their_order(monkeypatch):
    assert fingerprint_key({"a": 1, "b": [2, 3]}) == fingerprint_key({"b": [2, 3], "a": 1})
    assert fingerprint_key({"a": 1}) != fingerprint_key({"a": 2})
    assert fingerprint_key({"a": 1}) != fingerprint_key({"a": 1, "b": None})
    assert fingerprint_key({"a": Path("x")}) == fingerprint_key({"a": "x"})  # paths are hashed as text
    before = fingerprint_key({"a": 1})
    monkeypatch.setattr(cache_module, "CACHE_FORMAT", cache_module.CACHE_FORMAT + 1)
    assert fingerprint_key({"a": 1}) != before  # a new cache format never reads an old entry


def test_entries_live_under_the_dataset_s_name(tmp_path):
    one, two = ToyAdapter("one"), ToyAdapter("two")
    assert cache_path(tmp_path, "one", one.fingerprint()).parent == tmp_path / "one"
    load_or_build(one, tmp_path)
    load_or_build(two, tmp_path)
    assert two.loads == 1 and sorted(p.name for p in tmp_path.iterdir()) == ["one", "two"]


def test_without_a_cache_folder_the_adapter_decodes_every_time_and_nothing_is_written(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    adapter = ToyAdapter()
    load_or_build(adapter, None)
    load_or_build(adapter, None)
    assert adapter.loads == 2 and list(tmp_path.iterdir()) == []


def test_the_manifest_records_every_file_with_its_standard_crc32(tmp_path, monkeypatch):
    # several chunks per file: the CRC continues over them
    monkeypatch.setattr(shared_views_module, "_CHUNK", 100)
    entry = _entry(tmp_path, ToyAdapter(targets=True, files={"crop_boxes.csv": "id,x\n0,1\n"}))
    manifest = json.loads((entry / "manifest.json").read_text())
    assert manifest["splits"] == {"train": 140, "val": 9, "test": 12} and manifest["class_names"] == CLASSES
    assert manifest["dataset"] == "toy" and manifest["image_size"] == [8, 8]
    stored = {p.name for p in entry.iterdir()} - {"manifest.json"}
    assert (
        set(manifest["files"]) == stored and "train_targets.npy" in stored and "val_targets.npy" not in stored
    )
    for name, record in manifest["files"].items():
        raw = (entry / name).read_bytes()
        assert record["size"] == len(raw) and record["crc32"] == zlib.crc32(raw)
    assert (entry / "crop_boxes.csv").read_text() == "id,x\n0,1\n"


# -- atomic writes --------
def test_an_entry_another_process_wrote_first_is_kept_and_the_copy_discarded(tmp_path):
    adapter = ToyAdapter()
    entry = _entry(tmp_path, adapter)
    before = {p.name: p.read_bytes() for p in entry.iterdir()}
    other = ToyAdapter(seed=1).load()  # different bytes, to see which entry survives
    assert write_cache(entry, other, adapter.fingerprint()) is False
    assert {p.name: p.read_bytes() for p in entry.iterdir()} == before
    assert [p.name for p in entry.parent.iterdir()] == [entry.name]  # no scratch folder left


def test_an_entry_another_process_wrote_first_is_logged_as_kept(tmp_path, caplog):
    adapter = ToyAdapter()
    entry = _entry(tmp_path, adapter)
    with caplog.at_level(logging.DEBUG, logger="lrfer.data.cache"):
        write_cache(entry, adapter.load(), adapter.fingerprint())
    assert [r.getMessage() for r in caplog.records] == [
        f"{entry} was written by another process meanwhile: keeping it"
    ]


def test_a_fresh_entry_that_reads_back_damaged_keeps_the_decoded_faces_and_says_why(
    tmp_path, caplog, monkeypatch
):
    """The machine's other processes read the entry mapped; if the one just written does not read back, the
    decoded data is used, with a warning naming the entry and the damage."""
    adapter = ToyAdapter()

    def damaged(path, every_byte=True):
        raise CacheDamaged("test_images.npy does not match its checksum")

    monkeypatch.setattr(cache_module, "read_cache", damaged)
    with caplog.at_level(logging.WARNING, logger="lrfer.data.cache"):
        data = cache_module._load_or_build(adapter, tmp_path / "cache", mapped=True)
    _same(data, adapter.load())
    entry = cache_path(tmp_path / "cache", adapter.name, adapter.fingerprint())
    assert [r.getMessage() for r in caplog.records] == [
        f"the cache just written at {entry} reads back damaged (test_images.npy does not match its checksum)"
    ]


def test_a_fresh_entry_is_renamed_into_place_leaving_no_scratch_folder(tmp_path):
    adapter = ToyAdapter()
    entry = cache_path(tmp_path, adapter.name, adapter.fingerprint())
    assert write_cache(entry, adapter.load(), adapter.fingerprint()) is True
    assert [p.name for p in entry.parent.iterdir()] == [entry.name]
    _same(read_cache(entry), adapter.load())


def test_a_write_failing_half_way_leaves_nothing_and_training_continues_without_a_cache(
    tmp_path, monkeypatch, caplog
):
    real_save = np.save

    def full_disk(file, array, *args, **kwargs):  # the disk fills at the fourth array of every write
        if Path(file).name == "val_labels.npy":
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_save(file, array, *args, **kwargs)

    monkeypatch.setattr(cache_module.np, "save", full_disk)
    adapter = ToyAdapter()
    entry = cache_path(tmp_path / "cache", adapter.name, adapter.fingerprint())
    with pytest.raises(OSError):
        write_cache(entry, adapter.load(), adapter.fingerprint())
    assert os.listdir(entry.parent) == []
    with caplog.at_level(logging.WARNING, logger="lrfer.data.cache"):
        data = load_or_build(adapter, tmp_path / "cache")
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "no space left" in warnings[0].lower() and "without a cache" in warnings[0]
    assert f"cannot write {entry}:" in warnings[0]  # which entry could not be written
    _same(data, adapter.load())
    assert os.listdir(entry.parent) == []


def test_a_rename_failing_for_another_reason_than_a_present_entry_is_not_taken_for_success(
    tmp_path, monkeypatch
):
    def cross_device(src, dst):
        raise OSError(errno.EXDEV, "Invalid cross-device link")

    monkeypatch.setattr(cache_module.os, "rename", cross_device)
    adapter = ToyAdapter()
    entry = cache_path(tmp_path, adapter.name, adapter.fingerprint())
    with pytest.raises(OSError, match="cross-device"):
        write_cache(entry, adapter.load(), adapter.fingerprint())
    assert os.listdir(entry.parent) == []


def test_a_discarded_entry_is_gone_without_a_trace_and_discarding_twice_is_harmless(tmp_path):
    entry = _entry(tmp_path, ToyAdapter())
    discard_entry(entry)
    assert os.listdir(entry.parent) == []
    discard_entry(entry)


def test_a_damaged_entry_that_cannot_be_deleted_is_set_aside_and_the_build_goes_on(tmp_path, monkeypatch):
    """A disk that refuses deletions (read-only, failing): the entry leaves its place (renamed aside, so no
    reader sees it) and no error stops the run."""
    entry = _entry(tmp_path, ToyAdapter())

    def refuse(*args, **kwargs):
        raise PermissionError(errno.EACCES, "read-only file system")

    monkeypatch.setattr(os, "unlink", refuse)
    discard_entry(entry)
    monkeypatch.undo()
    assert not entry.exists() and len(os.listdir(entry.parent)) == 1


# -- verified on every read --------
def _damaged(entry: Path, match: str, every_byte: bool = True) -> None:
    with pytest.raises(CacheDamaged, match=match):
        read_cache(entry, every_byte=every_byte)


def test_a_sound_entry_reads_with_or_without_the_full_checksum(tmp_path):
    entry = _entry(tmp_path, ToyAdapter())
    _same(read_cache(entry, every_byte=True), read_cache(entry, every_byte=False))


def test_changed_bytes_with_the_time_kept_are_found_by_the_full_checksum_only(tmp_path):
    entry = _entry(tmp_path, ToyAdapter())
    images = entry / "train_images.npy"  # 140 images: the content hash samples 0, 2, ..., 138
    st = images.stat()
    raw = bytearray(images.read_bytes())
    raw[-3] ^= 0x10  # image 139
    images.write_bytes(bytes(raw))
    os.utime(images, ns=(st.st_atime_ns, st.st_mtime_ns))
    _damaged(entry, "train_images.npy does not match its checksum")
    read_cache(entry, every_byte=False)  # the documented trade-off: only files with a new time are read


def test_changed_bytes_with_a_new_modification_time_are_found_by_the_quick_check_too(tmp_path):
    entry = _entry(tmp_path, ToyAdapter())
    images = entry / "train_images.npy"
    st = images.stat()
    raw = bytearray(images.read_bytes())
    raw[-3] ^= 0x10
    images.write_bytes(bytes(raw))
    os.utime(images, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
    _damaged(entry, "does not match its checksum", every_byte=False)


def test_a_file_of_another_size_is_damage(tmp_path):
    entry = _entry(tmp_path, ToyAdapter())
    with (entry / "val_labels.npy").open("ab") as f:
        f.write(b"\0")
    _damaged(entry, "val_labels.npy has")


def test_a_changed_text_file_is_damage(tmp_path):
    entry = _entry(tmp_path, ToyAdapter(files={"crop_boxes.csv": "id,x\n0,1\n"}))
    (entry / "crop_boxes.csv").write_text("id,x\n0,2\n")
    _damaged(entry, "crop_boxes.csv does not match its checksum")


@pytest.mark.parametrize(
    ("change", "match"),
    [
        ({"format": cache_module.CACHE_FORMAT + 1}, f"^manifest format {cache_module.CACHE_FORMAT + 1}$"),
        ({"splits": {}}, r"^manifest\.json lists no splits$"),
        ({"class_names": []}, r"^manifest\.json lists no classes$"),
        ({"image_size": [8]}, r"^manifest\.json has no image size$"),
        ({"image_size": [8, 9]}, "^train images are not 8x9$"),
        ({"content_hash": "0" * 40}, "^the content hash does not match$"),
    ],
)
def test_a_manifest_that_does_not_describe_the_entry_is_damage(tmp_path, change, match):
    entry = _entry(tmp_path, ToyAdapter())
    _manifest(entry, **change)
    _damaged(entry, match)


def test_a_manifest_that_is_not_an_object_is_damage(tmp_path):
    entry = _entry(tmp_path, ToyAdapter())
    (entry / "manifest.json").write_text("[1, 2]")
    _damaged(entry, "not a JSON object")


def test_a_split_with_fewer_images_than_the_manifest_says_is_damage(tmp_path):
    entry = _entry(tmp_path, ToyAdapter())
    _replace(entry, "val_images.npy", np.load(entry / "val_images.npy")[:-1])
    _damaged(entry, "val_images.npy is uint8")


@pytest.mark.parametrize(
    ("name", "make", "match"),
    [
        ("val_images.npy", lambda a: a.astype(np.int16), "val_images.npy is int16"),
        ("val_images.npy", lambda a: a[:, 0], "not 9 uint8 images"),
        ("val_labels.npy", lambda a: a.astype(np.float32), "val_labels.npy is not 9 labels"),
        ("val_labels.npy", lambda a: a[:-1], "val_labels.npy is not 9 labels"),
        ("val_labels.npy", lambda a: np.where(a == 0, -1, a), r"val labels outside 0\.\.2"),
        ("val_labels.npy", lambda a: np.where(a == 0, 3, a), r"val labels outside 0\.\.2"),
        ("train_targets.npy", lambda a: a[:-1], "train_targets.npy does not have 140 rows"),
    ],
)
def test_arrays_of_the_wrong_kind_are_damage_even_with_a_matching_manifest(tmp_path, name, make, match):
    entry = _entry(tmp_path, ToyAdapter(targets=True))
    _replace(entry, name, make(np.load(entry / name)))
    _damaged(entry, match)


def test_a_changed_image_the_content_hash_samples_is_damage_even_with_a_matching_manifest(tmp_path):
    entry = _entry(tmp_path, ToyAdapter())
    images = np.load(entry / "test_images.npy")
    images[0] = 255 - images[0]
    _replace(entry, "test_images.npy", images)
    _damaged(entry, "content hash")


def test_the_content_hash_covers_the_labels_and_which_split_they_are_in(tmp_path):
    entry = _entry(tmp_path, ToyAdapter())
    labels = np.load(entry / "train_labels.npy")
    _replace(entry, "train_labels.npy", np.roll(labels, 1))
    _damaged(entry, "content hash")


def test_every_damage_is_one_line_of_cache_damaged_not_another_exception(tmp_path):
    entry = _entry(tmp_path, ToyAdapter())
    (entry / "test_labels.npy").unlink()
    with pytest.raises(CacheDamaged) as err:
        read_cache(entry)
    assert str(err.value).startswith("FileNotFoundError: ") and "\n" not in str(err.value)
    (entry / "manifest.json").write_text("{ not\n json")
    with pytest.raises(CacheDamaged) as err:
        read_cache(entry)
    # the error's own text, on one line
    assert (
        str(err.value)
        == "JSONDecodeError: Expecting property name enclosed in double quotes: line 1 column 3 (char 2)"
    )


def test_a_damaged_entry_is_logged_once_rebuilt_and_sound_afterwards(tmp_path, caplog):
    adapter = ToyAdapter()
    entry = _entry(tmp_path, adapter)
    _manifest(entry, content_hash="0" * 40)
    with caplog.at_level(logging.INFO, logger="lrfer.data.cache"):
        data = load_or_build(adapter, tmp_path / "cache")
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and str(entry) in warnings[0] and "content hash" in warnings[0]
    assert "damaged" in warnings[0] and "rebuilding" in warnings[0]
    assert adapter.loads == 2
    _same(data, adapter.load())
    _same(read_cache(entry), data)
    assert [p.name for p in entry.parent.iterdir()] == [entry.name]  # the damaged copy is gone


def test_building_and_reusing_an_entry_are_logged_with_its_path(tmp_path, caplog):
    adapter = ToyAdapter()
    entry = cache_path(tmp_path / "cache", adapter.name, adapter.fingerprint())
    with caplog.at_level(logging.INFO, logger="lrfer.data.cache"):
        load_or_build(adapter, tmp_path / "cache")
        load_or_build(adapter, tmp_path / "cache")
    assert [r.getMessage() for r in caplog.records] == [
        f"building the toy cache at {entry}",
        f"using cached toy at {entry}",
    ]


def test_the_images_are_mapped_from_disk_not_read_into_memory(tmp_path):
    """A later run memory-maps the cached images: reading an entry (without the full checksum) allocates far
    less than the images' size."""
    import tracemalloc

    class Big(ToyAdapter):
        def load(self):
            data = super().load()
            images = torch.zeros(16000, 3, 8, 8, dtype=torch.uint8)  # 3 MB
            data.splits["train"] = FaceSplit(images, torch.arange(16000) % len(CLASSES))
            return data

    entry = _entry(tmp_path, Big())
    tracemalloc.start()
    try:
        data = read_cache(entry, every_byte=False)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert len(data.splits["train"]) == 16000 and peak < 1_000_000

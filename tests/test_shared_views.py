"""Host memory of the views (issue 28, defect 7): what a run keeps, and one host copy per node."""

from __future__ import annotations

import functools
import hashlib
import importlib
import json
import os
from pathlib import Path

import pytest
import torch
from conftest import REPO, run_two_ranks
from omegaconf import OmegaConf

from lrfer.config import compose_config
from lrfer.core.errors import UserError
from lrfer.data.cache import cache_path, load_or_build, read_cache, write_cache
from lrfer.data.degrade import degrade_uint8, parse_degradations
from lrfer.data.faces import FaceData, FaceSplit, carve_validation
from lrfer.data.pipeline import FaceDataModule
from lrfer.data.shared_views import VIEWS_FOLDER, MachineSharing, source_of
from lrfer.engine.resolve import DegradeSpec
from lrfer.engine.run import cached_bytes


@functools.cache
def _defaults():
    """The default config (configs/degrade/default.yaml, configs/augment/default.yaml, ...), composed once."""
    return compose_config()


def toy_data(n: int = 10, side: int = 16) -> FaceData:
    images = torch.zeros((n, 3, side, side), dtype=torch.uint8)
    split = FaceSplit(images, torch.zeros(n, dtype=torch.long))
    return FaceData("toy", ["a"], {"train": split, "test": split})


def test_cached_bytes_counts_realistic_views_of_native_size():
    """``x1+noise8`` keeps the native size but is a new tensor (noise added): it is counted like ``x2``."""
    data = toy_data()
    cfg = OmegaConf.create({"degrade": {"train": ["x1"], "val": None, "test": ["x1", "x1+noise8", "x2"]}})
    x1 = tuple(parse_degradations(["x1"]))
    degrade = DegradeSpec(train=x1, val=x1, test=tuple(parse_degradations(["x1", "x1+noise8", "x2"])))
    native = 10 * 3 * 16 * 16
    assert cached_bytes(cfg, degrade, data) == native + native + 10 * 3 * 8 * 8


# -- one host copy of the views per machine --------

WORKER = REPO / "tests" / "shared_views_worker.py"
#: Seconds the two-process run may take (about 10 s on a loaded 2-core machine).
TIMEOUT = 180


def cached_toy(tmp: Path, n: int = 40) -> Path:
    """A verified cache entry of ``n`` random 16 px faces in train and test (what a run reads)."""
    g = torch.Generator().manual_seed(0)
    splits = {
        name: FaceSplit(
            torch.randint(0, 256, (n, 3, 16, 16), dtype=torch.uint8, generator=g),
            torch.arange(n) % 3,
        )
        for name in ("train", "test")
    }
    data = FaceData("toy", ["a", "b", "c"], splits)
    entry = cache_path(tmp / "cache", "toy", {"n": n})
    write_cache(entry, data, {"n": n})
    return entry


def run_ranks(out: Path, *scenario: str) -> list[dict]:
    """Each rank's result of ``tests/shared_views_worker.py`` ``scenario`` writing into ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    hang = "the two ranks did not finish: one waits at a barrier"
    proc = run_two_ranks([str(WORKER), *scenario], TIMEOUT, hang)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return [json.loads((out / f"rank{r}.json").read_text()) for r in range(2)]


def unshared(entry: Path, rank: int) -> dict:
    """What rank ``rank`` of two must see: its views and batches made by one process, without sharing."""
    worker = importlib.import_module("shared_views_worker")
    dm = FaceDataModule(
        carve_validation(read_cache(entry), 0.2, seed=0),
        degrade_cfg=OmegaConf.merge(_defaults().degrade, {"train": worker.TRAIN}),
        augment_cfg=OmegaConf.merge(_defaults().augment, {"translate": 0.0}),
        mean=[0.5] * 3,
        std=[0.25] * 3,
        batch_size=8,
        eval_batch_size=8,
        device=torch.device("cpu"),
        rank=rank,
        world_size=2,
        prefetch=True,
    )
    batches = hashlib.sha1()
    for batch in dm.train_batches(parse_degradations(worker.TRAIN), seed=3):
        batches.update(batch["image"].numpy().tobytes())
    for split in ("val", "test"):
        for batch in dm.eval_batches(split, parse_degradations([worker.EVAL])[0]):
            batches.update(batch["image"].numpy().tobytes())
    views = {}
    for split, labels in (("train", worker.TRAIN), ("val", [worker.EVAL]), ("test", [worker.EVAL])):
        for label, deg in zip(labels, parse_degradations(labels)):
            views[f"{split}/{label}"] = worker.digest(dm.view(split, deg))
    return {"views": views, "batches": batches.hexdigest()}


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory):
    """Two gloo ranks on one machine, run twice on one cache entry (the second run finds the views)."""
    tmp = tmp_path_factory.mktemp("shared_views")
    entry = cached_toy(tmp)
    first = run_ranks(tmp / "first", "views", str(entry), str(tmp / "first"))
    second = run_ranks(tmp / "second", "views", str(entry), str(tmp / "second"))
    return entry, first, second


@pytest.mark.slow  # two torchrun runs, ~30 s together on 2 loaded cores: `pytest -m slow`
def test_only_local_rank_0_makes_the_views_and_every_rank_sees_the_same_data(two_ranks):
    """x2, x1+noise8 (train, its carved validation share the images) and x4 (test): rank 0 makes each once,
    rank 1 none; both ranks hold views equal to the ones one process makes, and get the batches it gets."""
    entry, (rank0, rank1), _ = two_ranks
    assert rank0["sharing"] and rank1["sharing"]
    assert sorted(rank0["builds"]) == ["x1+noise8", "x2", "x4", "x4"]  # x4 of train/val and of test
    assert rank1["builds"] == []
    assert rank0["views"] == rank1["views"]
    for rank, seen in enumerate((rank0, rank1)):
        expected = unshared(entry, rank)
        assert seen["views"] == expected["views"]
        assert seen["batches"] == expected["batches"], f"rank {rank}"


@pytest.mark.slow  # two torchrun runs, ~30 s together on 2 loaded cores: `pytest -m slow`
def test_every_rank_maps_the_views_from_one_file_instead_of_holding_a_copy(two_ranks):
    entry, (rank0, rank1), _ = two_ranks
    folder = str(entry / VIEWS_FOLDER)
    for label, path in {**rank0["mapped"], **rank1["mapped"]}.items():
        if label.endswith("/x1"):
            assert path == str(entry / "train_images.npy")  # the images themselves
        else:
            assert path is not None and path.startswith(folder), f"{label} is held in {path}, not mapped"
    assert rank0["mapped"] == rank1["mapped"]


@pytest.mark.slow  # two torchrun runs, ~30 s together on 2 loaded cores: `pytest -m slow`
def test_a_later_run_reuses_the_shared_views_instead_of_making_them_again(two_ranks):
    _, first, (rank0, rank1) = two_ranks
    assert rank0["builds"] == rank1["builds"] == []
    assert rank0["views"] == first[0]["views"] and rank0["batches"] == first[0]["batches"]


@pytest.mark.slow  # one torchrun run, ~15 s on 2 loaded cores: `pytest -m slow`
def test_a_first_run_decodes_the_dataset_once_per_machine_and_every_rank_maps_its_cache(tmp_path):
    """An empty cache folder: local rank 0 decodes and writes the entry while rank 1 waits; both then hold
    the images as a mapping of the entry's files (not a decoded copy each)."""
    rank0, rank1 = run_ranks(tmp_path, "cache", str(tmp_path))
    assert (rank0["loads"], rank1["loads"]) == (1, 0)
    assert rank0["images"] == rank1["images"]
    for name in ("train", "test"):
        assert rank0["mapped"][name] == rank1["mapped"][name]
        assert rank0["mapped"][name].endswith(f"{name}_images.npy")


# -- one process: what local rank 0 does with a file it finds --------


def no_barrier() -> None:
    """One process plays the ranks in turn: nothing to wait for."""


def one_view(tmp: Path):
    entry = cached_toy(tmp)
    data = read_cache(entry)
    base = data.splits["train"].base
    deg = parse_degradations(["x2"])[0]
    made = []

    def build():
        made.append(1)
        return degrade_uint8(base, deg)

    return source_of(base), (40, 3, 8, 8), build, made, degrade_uint8(base, deg)


def test_the_other_local_ranks_map_what_local_rank_0_made(tmp_path):
    source, shape, build, made, expected = one_view(tmp_path)
    first = MachineSharing(0, no_barrier).share(source, "v", shape, build)
    second = MachineSharing(1, no_barrier).share(source, "v", shape, build)
    assert len(made) == 1
    assert torch.equal(first, expected) and torch.equal(second, expected)


def test_a_damaged_shared_view_is_made_again_by_local_rank_0(tmp_path, caplog):
    """Bytes changed in place with the modification time kept (bit rot): the CRC-32 finds it."""
    source, shape, build, made, expected = one_view(tmp_path)
    MachineSharing(0, no_barrier).share(source, "v", shape, build)
    array = source[0] / VIEWS_FOLDER / "v.npy"
    st = array.stat()
    raw = bytearray(array.read_bytes())
    raw[-1] ^= 0xFF
    array.write_bytes(bytes(raw))
    os.utime(array, ns=(st.st_atime_ns, st.st_mtime_ns))
    view = MachineSharing(0, no_barrier).share(source, "v", shape, build)
    assert len(made) == 2 and torch.equal(view, expected)
    assert "damaged (does not match its checksum)" in caplog.text


def test_a_view_that_cannot_be_written_is_kept_in_memory_by_every_rank(tmp_path, caplog):
    """The views folder cannot be made (a file stands in its place): one warning, no partial file, and
    every process keeps a copy of its own (as without sharing)."""
    source, shape, build, made, expected = one_view(tmp_path)
    blocker = source[0] / VIEWS_FOLDER
    blocker.write_text("not a folder")
    before = sorted(p.name for p in source[0].iterdir())
    first = MachineSharing(0, no_barrier).share(source, "v", shape, build)
    second = MachineSharing(1, no_barrier).share(source, "v", shape, build)
    assert torch.equal(first, expected) and torch.equal(second, expected)
    assert len(made) == 2 and sorted(p.name for p in source[0].iterdir()) == before
    assert "every process keeps its own copy" in caplog.text


def test_views_of_images_from_no_cache_are_not_shared(tmp_path):
    _, shape, build, made, expected = one_view(tmp_path)
    view = MachineSharing(1, no_barrier).share(None, "v", shape, build)
    assert len(made) == 1 and torch.equal(view, expected)


def test_local_rank_0_reaches_the_barrier_also_when_decoding_fails(tmp_path):
    """The others must not wait for an entry that will never come: they pass the barrier and decode (and
    fail) on their own."""

    class Broken:
        name = "toy"

        def fingerprint(self) -> dict:
            return {"n": 1}

        def load(self):
            raise UserError("dataset.root=/nowhere does not exist")

    passed = []
    with pytest.raises(UserError, match="does not exist"):
        load_or_build(Broken(), tmp_path / "cache", MachineSharing(0, lambda: passed.append(1)))
    assert passed == [1]


def test_local_rank_0_reaches_the_barrier_also_when_making_a_view_fails(tmp_path):
    source, shape, _, _, _ = one_view(tmp_path)
    passed = []

    def build():
        raise MemoryError("no room for the view")

    with pytest.raises(MemoryError):
        MachineSharing(0, lambda: passed.append(1)).share(source, "v", shape, build)
    assert passed == [1]

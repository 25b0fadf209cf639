"""Batches: keys, shapes, degradations mixed per sample, HR pairs, augmentation, determinism, samplers."""

from __future__ import annotations

import pytest
import torch
from conftest import compose_cfg
from omegaconf import OmegaConf

from lrfer.core.errors import UserError
from lrfer.data.degrade import parse_degradations
from lrfer.data.faces import FaceData, FaceSplit, carve_validation, stratified_split
from lrfer.data.pipeline import FaceDataModule
from lrfer.engine.run import method_context

#: The default config (configs/degrade/default.yaml, configs/augment/default.yaml, ...), composed once.
DEFAULTS = compose_cfg()


def _data(n=60, size=24, classes=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (n, 3, size, size), dtype=torch.uint8, generator=g)
    labels = torch.arange(n) % classes
    split = FaceSplit(images, labels)
    return FaceData("toy", [f"c{i}" for i in range(classes)], {"train": split, "val": split, "test": split})


def _module(
    data,
    train=("x1",),
    batch_size=16,
    input_size=None,
    resize_back=True,
    sampler="random",
    placement=None,
    **aug,
):
    """``placement``: extra FaceDataModule arguments (rank, world_size, prefetch)."""
    degrade = OmegaConf.merge(
        DEFAULTS.degrade, {"train": list(train), "input_size": input_size, "resize_back": resize_back}
    )
    augment = OmegaConf.merge(DEFAULTS.augment, {"translate": 0.0, **aug})
    return FaceDataModule(
        data,
        degrade_cfg=degrade,
        augment_cfg=augment,
        mean=[0.5] * 3,
        std=[0.25] * 3,
        batch_size=batch_size,
        eval_batch_size=32,
        device=torch.device("cpu"),
        sampler=sampler,
        **(placement or {}),
    )


def test_batch_keys_shapes_and_normalisation():
    dm = _module(_data(), input_size=40, hflip=0.0)
    batch = next(dm.train_batches(parse_degradations(["x1"]), seed=0))
    assert set(batch) == {"image", "label", "index", "factor", "degradation"}
    assert batch["image"].shape == (16, 3, 40, 40) and batch["image"].dtype == torch.float32
    assert batch["label"].dtype == torch.int64
    raw = dm.splits["train"].images[batch["index"]].float() / 255
    assert torch.allclose(batch["image"] * 0.25 + 0.5, dm_resized(raw, 40), atol=1e-5)


def dm_resized(raw, size):
    from lrfer.data.degrade import resize_to

    return resize_to(raw, size).clamp(0, 1)


def test_mixed_degradations_carry_their_factor_and_match_the_cached_view():
    degs = parse_degradations(["x1", "x2", "x4"])
    dm = _module(_data(), train=["x1", "x2", "x4"], hflip=0.0)
    batch = next(dm.train_batches(degs, seed=3))
    assert set(batch["degradation"].tolist()) == {0, 1, 2}
    assert torch.equal(batch["factor"], torch.tensor([1.0, 2.0, 4.0])[batch["degradation"]])
    i = int(torch.nonzero(batch["degradation"] == 2)[0])
    lr = dm.view("train", degs[2])[batch["index"][i]].float()[None] / 255
    assert lr.shape[-1] == 6
    assert torch.allclose(batch["image"][i] * 0.25 + 0.5, dm_resized(lr, 24)[0], atol=1e-5)


def test_hr_pairs_get_the_same_augmentation():
    data = _data()
    degs = parse_degradations(["x4"])
    dm = _module(data, train=["x4"], hflip=0.5)
    batch = next(dm.train_batches(degs, seed=1, need_hr=True))
    hr = batch["image_hr"] * 0.25 + 0.5
    native = data.splits["train"].images[batch["index"]].float() / 255
    flipped = torch.isclose(hr, native.flip(-1), atol=1e-5).flatten(1).all(1)
    same = torch.isclose(hr, native, atol=1e-5).flatten(1).all(1)
    assert (flipped | same).all() and flipped.any() and same.any()
    # the low-resolution image was flipped exactly when its HR partner was
    lr_raw = dm_resized(dm.view("train", degs[0])[batch["index"]].float() / 255, 24)
    lr_flipped = torch.isclose(batch["image"] * 0.25 + 0.5, lr_raw.flip(-1), atol=1e-5).flatten(1).all(1)
    assert torch.equal(lr_flipped, flipped)


def test_epochs_are_deterministic_per_seed():
    dm = _module(_data(), train=["x1", "x2"], translate=0.1, rotate=10, brightness=0.2, erase_p=0.5)
    degs = parse_degradations(["x1", "x2"])
    a = [b["image"] for b in dm.train_batches(degs, seed=7)]
    b = [b["image"] for b in dm.train_batches(degs, seed=7)]
    c = [b["image"] for b in dm.train_batches(degs, seed=8)]
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert not torch.equal(a[0], c[0])


@pytest.mark.parametrize("prefetch", [False, True])
def test_two_ranks_augment_their_shares_of_a_global_batch_differently(prefetch):
    """Under torchrun every rank draws its own augmentation: with every face the same image, rank 0's and
    rank 1's halves of a global batch would be equal if the ranks shared one random stream."""
    same = torch.randint(
        0, 256, (1, 3, 24, 24), dtype=torch.uint8, generator=torch.Generator().manual_seed(0)
    )
    split = FaceSplit(same.expand(32, -1, -1, -1).contiguous(), torch.arange(32) % 2)
    data = FaceData("toy", ["a", "b"], {"train": split, "val": split, "test": split})
    degs = parse_degradations(["x1"])
    batches = []
    for rank in (0, 1):
        placement = {"rank": rank, "world_size": 2, "prefetch": prefetch}
        dm = _module(data, batch_size=16, placement=placement, translate=0.1, rotate=10.0, hflip=0.5)
        batches.append(list(dm.train_batches(degs, seed=3)))
    assert len(batches[0]) == len(batches[1]) == 2
    for b0, b1 in zip(*batches):
        assert b0["image"].shape == b1["image"].shape == (8, 3, 24, 24)
        assert not set(b0["index"].tolist()) & set(b1["index"].tolist())  # disjoint shares
        assert not torch.allclose(b0["image"], b1["image"])  # drawn from different streams
        assert not torch.allclose(b0["image"][0], b0["image"][1])  # and per sample


def test_eval_batches_cover_the_split_in_order_without_augmentation():
    dm = _module(_data(n=70), hflip=1.0)
    deg = parse_degradations(["x2"])[0]
    batches = list(dm.eval_batches("test", deg))
    assert torch.equal(torch.cat([b["index"] for b in batches]), torch.arange(70))
    a, b = list(dm.eval_batches("test", deg)), batches
    assert all(torch.equal(x["image"], y["image"]) for x, y in zip(a, b))


def test_balanced_sampler_evens_out_classes():
    images = torch.zeros(100, 3, 8, 8, dtype=torch.uint8)
    labels = torch.tensor([0] * 90 + [1] * 10)
    split = FaceSplit(images, labels)
    data = FaceData("imb", ["a", "b"], {"train": split, "val": split, "test": split})
    dm = _module(data, batch_size=100, sampler="balanced")
    counts = torch.zeros(2)
    for seed in range(20):
        batch = next(dm.train_batches(parse_degradations(["x1"]), seed=seed))
        counts += torch.bincount(batch["label"], minlength=2)
    assert abs(counts[1] / counts.sum() - 0.5) < 0.05


def test_train_mode_all_sees_every_sample_at_every_degradation():
    data = _data(n=12)
    dm = _module(data, train=["x1", "x2", "x3"], batch_size=4)
    dm.degrade_cfg.train_mode = "all"
    degs = parse_degradations(["x1", "x2", "x3"])
    pairs = {
        (int(i), int(d)) for b in dm.train_batches(degs, seed=0) for i, d in zip(b["index"], b["degradation"])
    }
    assert pairs == {(i, d) for i in range(12) for d in range(3)}


def test_mixed_sizes_without_resize_back_are_refused():
    dm = _module(_data(), train=["x1", "x2"], resize_back=False)
    with pytest.raises(UserError, match="resize_back"):
        next(dm.train_batches(parse_degradations(["x1", "x2"]), seed=0))


def test_stratified_validation_split_is_seeded_and_stratified():
    labels = torch.arange(100) % 4
    keep, held = stratified_split(labels, 0.2, seed=5)
    keep2, held2 = stratified_split(labels, 0.2, seed=5)
    assert torch.equal(held, held2) and torch.equal(keep, keep2)
    assert len(set(keep.tolist()) & set(held.tolist())) == 0 and len(keep) + len(held) == 100
    assert torch.bincount(labels[held]).tolist() == [5, 5, 5, 5]
    data = _data()
    del data.splits["val"]
    carved = carve_validation(data, 0.25, seed=0)
    assert len(carved.splits["val"]) == 15 and len(carved.splits["train"]) == 45


def _prefetching(data, **kwargs):
    dm = _module(data, **kwargs)
    return FaceDataModule(
        data,
        degrade_cfg=dm.degrade_cfg,
        augment_cfg=dm.augment_cfg,
        mean=[0.5] * 3,
        std=[0.25] * 3,
        batch_size=dm.batch_size,
        eval_batch_size=32,
        device=torch.device("cpu"),
        sampler=dm.sampler,
        prefetch=True,
    )


@pytest.mark.parametrize("need_hr", [False, True])
def test_the_prefetching_host_path_gives_the_device_path_batches(need_hr):
    data = _data(n=70)
    degs = parse_degradations(["x1", "x2", "x4"])
    aug = {"translate": 0.1, "erase_p": 0.5}
    plain, prefetched = (
        _module(data, train=degs_labels(degs), **aug),
        _prefetching(data, train=degs_labels(degs), **aug),
    )
    assert prefetched.prefetch and not plain.prefetch
    a = list(plain.train_batches(degs, seed=4, need_hr=need_hr))
    b = list(prefetched.train_batches(degs, seed=4, need_hr=need_hr))
    assert len(a) == len(b) == 4
    for x, y in zip(a, b):
        assert set(x) == set(y) and all(torch.equal(x[k], y[k]) for k in x)


def degs_labels(degs):
    return [d.label for d in degs]


def test_a_prefetching_epoch_stopped_early_stops_its_thread():
    import threading

    dm = _prefetching(_data(n=70))
    it = dm.train_batches(parse_degradations(["x1"]), seed=0)
    next(it)
    it.close()
    assert not any(t.name == "lrfer-prefetch" and t.is_alive() for t in threading.enumerate())


def test_the_prefetch_thread_never_keeps_the_process_from_exiting():
    """An iterator left unfinished (an exception in the training loop) must not block the interpreter's exit:
    the prefetching thread is a daemon."""
    import threading

    dm = _prefetching(_data(n=70))
    it = dm.train_batches(parse_degradations(["x1"]), seed=0)
    try:
        next(it)
        threads = [t for t in threading.enumerate() if t.name == "lrfer-prefetch" and t.is_alive()]
    finally:
        it.close()  # a failing check must not leave the thread behind
    assert threads and all(t.daemon for t in threads)


def test_a_split_counts_as_present_only_when_it_has_faces():
    data = _data()
    data.splits["val"] = FaceSplit(data.splits["val"].images[:0], data.splits["val"].labels[:0])
    del data.splits["test"]
    dm = _module(data)
    assert [dm.has_split(name) for name in ("train", "val", "test")] == [True, False, False]


def test_a_degrade_config_from_before_degrade_seed_makes_the_views_of_seed_0():
    data = _data()
    old = _module(data, train=("x2+noise8",))
    old.degrade_cfg = OmegaConf.create({k: v for k, v in old.degrade_cfg.items() if k != "seed"})
    deg = parse_degradations(["x2+noise8"])[0]
    assert torch.equal(old.view("train", deg), _module(data, train=("x2+noise8",)).view("train", deg))


def test_batches_of_one_degradation_and_of_a_mix_match_per_sample_assembly():
    """Grouping rows by degradation per epoch gives exactly the per-sample images (no reordering)."""
    data = _data(n=64)
    degs = parse_degradations(["x1", "x3", "x4"])
    dm = _module(data, train=degs_labels(degs), hflip=0.0)
    for batch in dm.train_batches(degs, seed=2):
        for i in range(len(batch["index"])):
            one = dm.make_batch(
                "train", batch["index"][i : i + 1], batch["degradation"][i : i + 1], degs, augment=False
            )
            assert torch.equal(one["image"][0], batch["image"][i])


def test_channels_last_batches_come_straight_from_the_normalisation():
    data = _data()
    dm = _module(data, train=["x1", "x2"], hflip=0.5)
    degs = parse_degradations(["x1", "x2"])
    plain = next(dm.train_batches(degs, seed=0, need_hr=True))
    dm.memory_format = torch.channels_last
    cl = next(dm.train_batches(degs, seed=0, need_hr=True))
    for key in ("image", "image_hr"):
        assert cl[key].is_contiguous(memory_format=torch.channels_last)
        assert torch.equal(cl[key], plain[key])


def test_carved_validation_shares_the_training_images():
    data = _data()
    del data.splits["val"]
    carved = carve_validation(data, 0.25, seed=0)
    train, val = carved.splits["train"], carved.splits["val"]
    assert train.base is val.base is data.splits["train"].images  # selected by index, not copied
    assert torch.equal(val.images, data.splits["train"].images[val.rows])
    dm = _module(carved, train=["x2"], hflip=0.0)
    assert dm.splits["train"].base is dm.splits["val"].base
    x2 = parse_degradations(["x2"])[0]
    assert dm.view("train", x2) is dm.view("val", x2)  # one view for both
    batch = next(dm.eval_batches("val", x2))
    direct = dm_resized(dm.view("val", x2)[val.rows[: len(batch["index"])]].float() / 255, 24)
    assert torch.allclose(batch["image"] * 0.25 + 0.5, direct, atol=1e-5)
    assert torch.equal(batch["label"], val.labels[: len(batch["index"])])


@pytest.mark.parametrize(
    "overrides",
    [[], ["degrade.input_size=20"], ["degrade.resize_back=false", "degrade.train=[x4]"]],
    ids=["native", "input_size", "small_face"],
)
def test_the_method_is_told_the_size_of_the_images_it_is_given(overrides):
    cfg = compose_cfg("dataset.image_size=24", *overrides)
    dm = _module(
        _data(size=24),
        train=tuple(cfg.degrade.train),
        input_size=cfg.degrade.input_size,
        resize_back=cfg.degrade.resize_back,
    )
    batch = next(dm.train_batches(parse_degradations(list(cfg.degrade.train)), seed=0))
    assert method_context(cfg).input_size == batch["image"].shape[-1]


@pytest.mark.parametrize("world", [2, 4])
def test_the_ranks_shares_of_a_global_batch_are_the_one_process_batch(world):
    """Rank r's share of global batch b is its contiguous slice: concatenated in rank order, the shares
    are the one-process batch (same samples, same degradations, same labels)."""
    data = _data(n=70)
    degs = parse_degradations(["x1", "x2", "x4"])
    one = list(_module(data, train=degs_labels(degs), batch_size=16).train_batches(degs, seed=5))
    shares = [
        list(
            _module(
                data, train=degs_labels(degs), batch_size=16, placement={"rank": r, "world_size": world}
            ).train_batches(degs, seed=5)
        )
        for r in range(world)
    ]
    assert all(len(s) == len(one) == 4 for s in shares)
    for b, whole in enumerate(one):
        for key in ("index", "degradation", "label", "factor"):
            assert torch.equal(torch.cat([s[b][key] for s in shares]), whole[key]), key
        assert torch.equal(whole["label"], data.splits["train"].labels[whole["index"]])


def test_an_epoch_is_a_fresh_shuffle_of_the_training_set_for_every_seed():
    dm = _module(_data(n=64), batch_size=16)
    degs = parse_degradations(["x1"])

    def order(seed):
        return torch.cat([b["index"] for b in dm.train_batches(degs, seed=seed)])

    first, again, other = order(0), order(0), order(1)
    assert sorted(first.tolist()) == list(range(64))  # every sample once
    assert torch.equal(first, again) and not torch.equal(first, other)
    assert not torch.equal(first, torch.arange(64))


def test_a_random_mix_of_degradations_is_drawn_per_sample_and_per_seed():
    data = _data(n=96)
    degs = parse_degradations(["x1", "x2", "x3"])
    dm = _module(data, train=degs_labels(degs), batch_size=96)
    which = [next(dm.train_batches(degs, seed=s))["degradation"] for s in (0, 1)]
    assert not torch.equal(which[0], which[1])
    assert all(set(w.tolist()) == {0, 1, 2} for w in which)
    assert all(torch.bincount(w, minlength=3).min() > 16 for w in which)  # about 32 each


def test_the_incomplete_last_batch_is_dropped_and_a_split_smaller_than_a_batch_is_one_batch():
    degs = parse_degradations(["x1"])
    sizes = [len(b["index"]) for b in _module(_data(n=60), batch_size=16).train_batches(degs, seed=0)]
    assert sizes == [16, 16, 16]
    small = [b["index"] for b in _module(_data(n=10), batch_size=16).train_batches(degs, seed=0)]
    assert len(small) == 1 and sorted(small[0].tolist()) == list(range(10))
    exact = [len(b["index"]) for b in _module(_data(n=64), batch_size=16).train_batches(degs, seed=0)]
    assert exact == [16, 16, 16, 16]


def test_eval_shards_of_the_ranks_cover_the_split_once_in_order():
    data = _data(n=70)
    deg = parse_degradations(["x1"])[0]
    seen = []
    for rank in range(3):
        dm = _module(data, batch_size=12, placement={"rank": rank, "world_size": 3})
        batches = list(dm.eval_batches("test", deg))
        assert all(len(b["index"]) <= 32 for b in batches)
        seen.append(torch.cat([b["index"] for b in batches]))
    assert [len(s) for s in seen] == [24, 23, 23]
    assert torch.equal(torch.cat(seen), torch.arange(70))


def test_shard_ranges_are_contiguous_disjoint_and_as_even_as_possible():
    from lrfer.data.pipeline import shard_range

    assert [shard_range(10, r, 3) for r in range(3)] == [(0, 4), (4, 7), (7, 10)]
    assert [shard_range(2, r, 3) for r in range(3)] == [(0, 1), (1, 2), (2, 2)]
    assert shard_range(9, 0, 1) == (0, 9)


def test_a_batch_size_the_processes_cannot_share_is_refused():
    # A global batch not divisible by the processes is refused once, by resolve (tests/test_resolve.py).
    with pytest.raises(UserError, match="cannot be shared by 4 processes"):
        next(
            _module(_data(n=2), batch_size=4, placement={"rank": 3, "world_size": 4}).train_batches(
                parse_degradations(["x1"]), seed=0
            )
        )


@pytest.mark.parametrize("prefetch", [False, True])
def test_labels_and_soft_targets_travel_with_their_samples_also_in_carved_splits(prefetch):
    """``index`` is the row in the split; a split carved from another (the validation split) reads its
    images through ``rows`` but its labels and targets by ``index``."""
    base = _data(n=40)
    targets = torch.rand(40, 3, generator=torch.Generator().manual_seed(0))
    split = FaceSplit(base.splits["train"].images, torch.randint(0, 3, (40,)), targets)
    data = carve_validation(FaceData("toy", base.class_names, {"train": split, "test": split}), 0.25, seed=0)
    dm = _module(data, train=["x1", "x2"], batch_size=8, placement={"prefetch": prefetch})
    for name, batches in {
        "train": dm.train_batches(parse_degradations(["x1", "x2"]), seed=0),
        "val": dm.eval_batches("val", parse_degradations(["x2"])[0]),
        "test": dm.eval_batches("test", parse_degradations(["x2"])[0]),
    }.items():
        own = data.splits[name]
        for batch in batches:
            assert torch.equal(batch["label"], own.labels[batch["index"]]), name
            assert torch.equal(batch["target"], own.targets[batch["index"]]), name
    assert "target" not in next(_module(base).train_batches(parse_degradations(["x1"]), seed=0))


def test_the_factor_of_an_absolute_size_is_relative_to_the_native_side():
    degs = parse_degradations(["x1", "12px", "8px"])
    dm = _module(_data(size=24), train=degs_labels(degs), batch_size=60)
    batch = next(dm.train_batches(degs, seed=0))
    assert torch.equal(batch["factor"], torch.tensor([1.0, 2.0, 3.0])[batch["degradation"]])


def test_training_batches_are_augmented_and_evaluation_batches_are_not():
    data = _data(n=32)
    deg = parse_degradations(["x1"])
    dm = _module(data, batch_size=32, hflip=1.0)
    train = next(dm.train_batches(deg, seed=0))
    raw = data.splits["train"].images[train["index"]].float() / 255
    assert torch.allclose(train["image"] * 0.25 + 0.5, raw.flip(-1), atol=1e-6)
    test = next(dm.eval_batches("test", deg[0]))
    assert torch.allclose(test["image"] * 0.25 + 0.5, data.splits["test"].images.float() / 255, atol=1e-6)


def test_a_one_off_batch_brings_its_native_partner_when_asked():
    data = _data(n=20)
    degs = parse_degradations(["x1", "x4"])
    dm = _module(data, train=degs_labels(degs))
    index, which = torch.tensor([3, 7, 11]), torch.tensor([1, 0, 1])
    batch = dm.make_batch("train", index, which, degs, augment=False, need_hr=True)
    native = data.splits["train"].images[index].float() / 255
    assert torch.allclose(batch["image_hr"] * 0.25 + 0.5, native, atol=1e-6)
    assert "image_hr" not in dm.make_batch("train", index, which, degs, augment=False)


def test_every_epoch_draws_new_augmentations():
    """With every face the same image, the order of samples cannot matter: epoch seeds 3 and 4 must still
    augment differently (the augmentation stream follows the epoch's seed, not only the rank)."""
    same = torch.randint(
        0, 256, (1, 3, 24, 24), dtype=torch.uint8, generator=torch.Generator().manual_seed(0)
    )
    split = FaceSplit(same.expand(16, -1, -1, -1).contiguous(), torch.arange(16) % 2)
    data = FaceData("toy", ["a", "b"], {"train": split, "val": split, "test": split})
    dm = _module(data, batch_size=16, translate=0.1, rotate=10.0)
    degs = parse_degradations(["x1"])
    epochs = [next(dm.train_batches(degs, seed=s))["image"] for s in (3, 4, 3)]
    assert torch.equal(epochs[0], epochs[2]) and not torch.allclose(epochs[0], epochs[1])

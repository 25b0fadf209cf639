"""The papers' data protocols: no validation split (``dataset.val_fraction=0``), train + val
(``dataset.merge_val=true``), and KDEF's image-level or subject-independent folds (``dataset.fold_mode``)."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import compose_cfg, tiny
from dataset_fixtures import write_kdef

from lrfer.core.errors import UserError
from lrfer.data.datasets import build_adapter
from lrfer.data.faces import FaceData, FaceSplit, merge_validation
from lrfer.engine.loading import load_method_weights
from lrfer.engine.run import build_parts, load_data, run_training


@pytest.fixture(autouse=True)
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_val_fraction_zero_trains_on_every_face_and_keeps_the_last_epoch(tmp_path):
    """No validation split: no best.pt, the last epoch is tested, metrics.json says so. (DA: its GRL
    schedule still learns the epoch length without a validation pass.)"""
    cfg = compose_cfg(
        *tiny(tmp_path, "method=da", "method.factors=[x1,x4]", "method.epochs=2", "method.disc_hidden=16"),
        "dataset.val_fraction=0",
        "degrade.test=[x1]",
    )
    run_dir = tmp_path / "run"
    metrics = run_training(cfg, run_dir)
    selection = metrics["model_selection"]
    assert selection["mode"] == "last_epoch" and "val_fraction=0" in selection["reason"]
    assert selection["train_faces"] == 140 and selection["val_faces"] == 0  # all of num_train
    assert "official validation split, 56 faces, is not used" in selection["reason"]  # synthetic has one
    assert metrics["val"] == {}
    stage = metrics["train"]["stages"]["train"]
    assert stage["epochs"] == 2 and stage["best_epoch"] is None
    assert 0.0 < stage["grl_coeff"] < 1.0  # epoch 2 knew the length of epoch 1
    assert (
        not (run_dir / "checkpoints" / "best.pt").exists() and (run_dir / "checkpoints" / "last.pt").exists()
    )
    on_disk = json.loads((run_dir / "metrics.json").read_text())
    assert on_disk["model_selection"]["mode"] == "last_epoch"
    # re-evaluation falls back to last.pt, and reproduces the test accuracy of the last epoch
    parts = build_parts(cfg)
    meta = load_method_weights(parts.method, run_dir, "best")
    assert meta["epoch"] == 2


def test_a_run_with_validation_says_best_val(tmp_path):
    cfg = compose_cfg(*tiny(tmp_path, "trainer.max_epochs=1", "degrade.test=[x1]"))
    selection = run_training(cfg, None)["model_selection"]
    assert selection["mode"] == "best_val" and selection["val_faces"] == 56


def test_val_fraction_zero_refuses_a_plateau_schedule_on_validation_accuracy(tmp_path):
    cfg = compose_cfg(
        *tiny(tmp_path, "trainer.max_epochs=1"),
        "dataset.val_fraction=0",
        "trainer.scheduler.name=plateau",
        "trainer.scheduler.monitor=val_acc",
    )
    with pytest.raises(UserError, match="monitor=train_acc"):
        run_training(cfg, None)


def test_val_fraction_zero_on_a_dataset_without_val_carves_nothing(tmp_path):
    cfg = compose_cfg(*tiny(tmp_path, "dataset.num_val=0", "dataset.val_fraction=0"))
    data = load_data(cfg)
    assert set(data.splits) == {"train", "test"} and len(data.splits["train"]) == 140
    carved = load_data(compose_cfg(*tiny(tmp_path, "dataset.num_val=0", "dataset.val_fraction=0.25")))
    assert len(carved.splits["val"]) == 35 and len(carved.splits["train"]) == 105


def test_merge_val_folds_the_official_validation_split_into_training(tmp_path):
    cfg = compose_cfg(*tiny(tmp_path, "dataset.merge_val=true", "trainer.max_epochs=1", "degrade.test=[x1]"))
    data = load_data(cfg)
    assert set(data.splits) == {"train", "test"} and len(data.splits["train"]) == 140 + 56
    metrics = run_training(cfg, None)
    selection = metrics["model_selection"]
    assert selection["mode"] == "last_epoch" and "merge_val=true" in selection["reason"]
    assert selection["train_faces"] == 196 and metrics["val"] == {}


def test_merge_val_needs_an_official_validation_split(tmp_path):
    cfg = compose_cfg(*tiny(tmp_path, "dataset.num_val=0", "dataset.merge_val=true"))
    with pytest.raises(UserError, match="no official validation split"):
        load_data(cfg)


def test_merge_validation_keeps_soft_targets():
    img = torch.zeros(2, 3, 4, 4, dtype=torch.uint8)
    train = FaceSplit(img, torch.tensor([0, 1]), torch.tensor([[0.5, 0.5, 0.0], [0.0, 1.0, 0.0]]))
    val = FaceSplit(img, torch.tensor([2, 0]))
    test = FaceSplit(img, torch.tensor([0, 0]))
    merged = merge_validation(FaceData("x", ["a", "b", "c"], {"train": train, "val": val, "test": test}))
    assert list(merged.splits) == ["train", "test"]
    assert merged.splits["train"].labels.tolist() == [0, 1, 2, 0]
    assert merged.splits["train"].targets[2:].tolist() == [[0.0, 0.0, 1.0], [1.0, 0.0, 0.0]]
    assert merged.info["val_merged_into_train"] == 2


def test_efc_ferplus_trains_on_train_plus_val_and_voting_final_has_no_validation():
    assert compose_cfg("experiment=efc/ferplus").dataset.merge_val is True
    for name in ("voting/affectnet_final", "voting/rafdb_final", "efc/kdef", "efc/rafdb"):
        assert compose_cfg(f"experiment={name}").dataset.val_fraction == 0.0


# -- KDEF folds --------
def _kdef_faces(root, tmp_path, mode: str, fold: int):
    cfg = compose_cfg(
        "dataset=kdef",
        f"dataset.root={root}",
        f"paths.cache_dir={tmp_path / 'cache'}",
        "dataset.num_folds=4",
        f"dataset.fold={fold}",
        f"dataset.fold_mode={mode}",
    )
    adapter = build_adapter(cfg.dataset)
    return adapter.faces(*adapter.layout())


def test_kdef_image_folds_are_stratified_and_mix_people(tmp_path):
    root = write_kdef(tmp_path / "data")  # 4 subjects x 2 sessions x 7 expressions x 2 angles = 112 images
    seen: dict[str, int] = {}
    for fold in range(4):
        faces, info = _kdef_faces(root, tmp_path, "image", fold)
        assert info["folds"]["mode"] == "image"
        test = faces["test"]
        assert len(test) == 28 and len(faces["train"]) == 84
        assert torch.bincount(torch.tensor([f.label for f in test]), minlength=7).tolist() == [4] * 7
        for face in test:
            assert face.source.name not in seen
            seen[face.source.name] = fold
        train_people = {f.source.parent.name[1:] for f in faces["train"]}
        assert {f.source.parent.name[1:] for f in test} & train_people  # a person in train and test
    assert len(seen) == 112


def test_kdef_subject_folds_keep_each_person_in_one_fold(tmp_path):
    root = write_kdef(tmp_path / "data")
    for fold in range(4):
        faces, info = _kdef_faces(root, tmp_path, "subject", fold)
        test_people = {f.source.parent.name[1:] for f in faces["test"]}
        train_people = {f.source.parent.name[1:] for f in faces["train"]}
        assert len(test_people) == 1 and not test_people & train_people
        assert info["folds"]["mode"] == "subject"
    with pytest.raises(UserError, match="fold_mode"):
        _kdef_faces(root, tmp_path, "session", 0)


def test_efc_kdef_uses_image_folds():
    assert compose_cfg("experiment=efc/kdef").dataset.fold_mode == "image"
    assert compose_cfg("dataset=kdef").dataset.fold_mode == "subject"

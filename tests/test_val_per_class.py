"""``dataset.val_per_class=N``: a balanced validation split, exactly N faces per class carved from train."""

from __future__ import annotations

import pytest
import torch
from conftest import compose_cfg, tiny

from lrfer.core.errors import UserError
from lrfer.data.faces import FaceData, FaceSplit, carve_validation, per_class_split
from lrfer.engine.run import load_data

#: An imbalanced toy label set: 40 / 12 / 25 / 6 faces of classes 0..3, interleaved.
COUNTS = [40, 12, 25, 6]


def _labels() -> torch.Tensor:
    labels = torch.cat([torch.full((n,), c) for c, n in enumerate(COUNTS)])
    return labels[torch.randperm(len(labels), generator=torch.Generator().manual_seed(1))]


def test_exactly_n_per_class_held_out_disjoint_from_train_and_seeded():
    labels = _labels()
    keep, held = per_class_split(labels, 5, seed=3)
    assert torch.bincount(labels[held]).tolist() == [5, 5, 5, 5]
    assert torch.bincount(labels[keep]).tolist() == [n - 5 for n in COUNTS]
    assert not set(keep.tolist()) & set(held.tolist())
    assert sorted(keep.tolist() + held.tolist()) == list(range(len(labels)))
    again_keep, again_held = per_class_split(labels, 5, seed=3)
    assert torch.equal(again_held, held) and torch.equal(again_keep, keep)
    _, other = per_class_split(labels, 5, seed=4)
    assert not torch.equal(other, held)


def test_a_class_without_enough_faces_stops_with_its_name():
    with pytest.raises(UserError, match=r"val_per_class=6.*fear \(6\)"):
        per_class_split(_labels(), 6, seed=0, class_names=["neutral", "happy", "sad", "fear"])


def test_carve_validation_with_per_class_records_it():
    labels = _labels()
    images = torch.zeros(len(labels), 3, 4, 4, dtype=torch.uint8)
    data = FaceData(
        "toy", ["a", "b", "c", "d"], {"train": FaceSplit(images, labels), "test": FaceSplit(images, labels)}
    )
    carved = carve_validation(data, fraction=0.0, seed=0, per_class=3)
    assert torch.bincount(carved.splits["val"].labels).tolist() == [3, 3, 3, 3]
    assert len(carved.splits["train"]) == len(labels) - 12
    assert carved.info["val_carved_from_train"] == {"per_class": 3, "seed": 0}


def test_dataset_val_per_class_wins_over_val_fraction_in_a_run(tmp_path):
    """load_data: val_per_class=N carves N of every class (val_fraction is not used), the same faces for
    the same split_seed; train keeps the rest."""
    base = tiny(tmp_path, "dataset.num_train=140", "dataset.num_val=0", "dataset.val_fraction=0.0")
    data = load_data(compose_cfg(*base, "dataset.val_per_class=4"))
    k = data.num_classes
    assert torch.bincount(data.splits["val"].labels, minlength=k).tolist() == [4] * k
    assert len(data.splits["train"]) + len(data.splits["val"]) == 140
    again = load_data(compose_cfg(*base, "dataset.val_per_class=4"))
    assert torch.equal(again.splits["val"].images, data.splits["val"].images)


def test_voting_affectnet_uses_500_per_class_and_the_final_model_none():
    assert compose_cfg("experiment=voting/affectnet").dataset.val_per_class == 500
    final = compose_cfg("experiment=voting/affectnet_final").dataset
    assert final.val_per_class is None and final.val_fraction == 0.0


def test_report_shows_balanced_acc_beside_acc(tmp_path):
    """scripts/report.py --split val --extra balanced_acc: the accuracy row and a balanced-accuracy line."""
    import json

    from lrfer.report.tables import collect_runs, markdown_table

    run = tmp_path / "run"
    run.mkdir()
    entry = {"acc": 0.62, "balanced_acc": 0.48, "n": 3500, "confusion": [[1]]}
    (run / "metrics.json").write_text(
        json.dumps({"method": "voting", "dataset": "affectnet", "val": {"x1": entry}})
    )
    rows = collect_runs([tmp_path], split="val")
    assert rows[0].values == {"x1": 0.62} and rows[0].extras == {"balanced_acc": {"x1": 0.48}}
    table = markdown_table(rows, ["x1"], extra="balanced_acc")
    assert "62.0" in table and "↳ balanced_acc | 48.0" in table

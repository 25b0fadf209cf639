"""Dataset adapters on tiny fixtures written in each dataset's official layout (tests/dataset_fixtures.py).

Every fixture face encodes its class in its grey level (FERPlus faces: their CSV row), so the tests check
not only split and class counts but that each decoded image carries its own label and was cropped right.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from dataset_fixtures import (
    corrupt,
    ferplus_row_of,
    label_of,
    write_affectnet,
    write_affectnet_npy,
    write_expw,
    write_fer2013,
    write_ferplus_csv,
    write_ferplus_folders,
    write_kdef,
    write_rafdb_basic,
    write_rafdb_folders,
)
from PIL import Image

from lrfer.config import compose_config
from lrfer.core.errors import UserError
from lrfer.data.datasets import build_adapter
from lrfer.data.datasets.ferplus import process_votes
from lrfer.engine.run import load_data, run_training

REPO = Path(__file__).resolve().parents[1]
DATASETS = ("rafdb", "fer2013", "ferplus", "affectnet", "kdef", "expw")
RAFDB_COUNTS = {"train": [2, 3, 2, 2, 2, 2, 2], "test": [1, 1, 1, 2, 1, 1, 1]}
FER_COUNTS = {"train": [2, 3, 2, 2, 2, 2, 2], "val": [1] * 7, "test": [1, 1, 1, 2, 1, 1, 1]}
AFFECTNET_CODES = {
    "train": [0, 0, 1, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5, 6, 6, 7, 7, 8, 9, 10, 10],
    "val": [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10],
}
EXPW_PHOTOS = [[0, 1], [2], [3, 4, 5], [6, 0], [1, 2, 3], [4, 5, 6], [0, 1, 2, 3], [4, 5, 6]]


def compose_cfg(name: str, root, cache_dir, *overrides: str):
    overrides = [f"dataset={name}", f"dataset.root={root}", f"paths.cache_dir={cache_dir}", *overrides]
    return compose_config(overrides, hydra_errors=True)


def load(name: str, root, tmp_path: Path, *overrides: str):
    return load_data(compose_cfg(name, root, tmp_path / "cache", *overrides))


def counts(data, split: str) -> list[int]:
    return data.splits[split].per_class(data.num_classes)


def assert_faces_match_labels(data) -> None:
    for name, split in data.splits.items():
        assert split.images.dtype == torch.uint8 and split.images.shape[1] == 3
        decoded = [label_of(image) for image in split.images]
        assert decoded == split.labels.tolist(), name


@pytest.mark.parametrize("name", DATASETS)
def test_an_adapter_names_the_classes_as_its_config_does(name, tmp_path):
    """dataset.class_names is the one list of a dataset's class names: no adapter keeps its own (KDEF's file
    codes and FERPlus's vote columns map to the classes by position and by name)."""
    cfg = compose_cfg(name, tmp_path, tmp_path / "cache")
    renamed = [f"class{i}" for i in range(len(cfg.dataset.class_names))]
    cfg = compose_cfg(name, tmp_path, tmp_path / "cache", f"dataset.class_names=[{','.join(renamed)}]")
    assert build_adapter(cfg.dataset).names() == renamed[: cfg.dataset.num_classes]


# -- RAF-DB --------
@pytest.mark.parametrize("writer", [write_rafdb_basic, write_rafdb_folders], ids=["basic", "DATASET"])
def test_rafdb_layouts(writer, tmp_path):
    data = load("rafdb", writer(tmp_path / "raf", RAFDB_COUNTS), tmp_path, "dataset.image_size=20")
    assert data.class_names[0] == "surprise" and data.class_names[6] == "neutral"
    assert counts(data, "test") == RAFDB_COUNTS["test"]
    # no official val: lrfer carves one class-stratified from train
    train_plus_val = [a + b for a, b in zip(counts(data, "train"), counts(data, "val"))]
    assert train_plus_val == RAFDB_COUNTS["train"] and counts(data, "val") == [1] * 7
    assert data.image_size == (20, 20)
    assert_faces_match_labels(data)


# -- FER2013 --------
@pytest.mark.parametrize("kaggle", [False, True], ids=["fer2013.csv", "icml_face_data.csv"])
def test_fer2013(kaggle, tmp_path):
    data = load("fer2013", write_fer2013(tmp_path / "fer", FER_COUNTS, kaggle=kaggle), tmp_path)
    for split, expected in FER_COUNTS.items():
        assert counts(data, split) == expected
    assert data.image_size == (48, 48) and "val_carved_from_train" not in data.info
    assert_faces_match_labels(data)


# -- FERPlus --------
V = 0  # a vote count of zero, for readability
# (split, image name, votes: neutral happiness surprise sadness anger disgust fear contempt unknown NF)
# Names are shifted and duplicated on purpose: only the row pairs votes with pixels.
FERPLUS_ROWS = [
    ("train", "fer0000003.png", [8, 2, V, V, V, V, V, V, V, V]),  # 0: neutral
    ("train", "fer0000003.png", [V, 9, 1, V, V, V, V, V, V, V]),  # 1: happiness (duplicate name)
    ("train", "", [10, V, V, V, V, V, V, V, V, V]),  # 2: empty name -> dropped whatever the votes
    ("train", "fer0000001.png", [5, 1, 1, 1, 1, 1, V, V, V, V]),  # 3: single votes zeroed -> 5/5 neutral
    ("train", "fer0000007.png", [4, 3, 3, V, V, V, V, V, V, V]),  # 4: no majority
    ("train", "fer0000008.png", [V, V, V, V, V, V, V, V, V, 10]),  # 5: not a face
    ("train", "fer0000009.png", [V, V, 6, V, V, V, V, V, 4, V]),  # 6: surprise (+ unknown votes)
    ("train", "fer0000010.png", [5, 5, V, V, V, V, V, V, V, V]),  # 7: a tie
    ("train", "fer0000002.png", [V, V, V, V, V, V, V, 8, 2, V]),  # 8: contempt
    ("train", "fer0000011.png", [3, 3, 2, 2, V, V, V, V, V, V]),  # 9: too spread for probability
    ("val", "fer0000012.png", [V, V, V, 10, V, V, V, V, V, V]),  # 10: sadness
    ("val", "fer0000013.png", [5, 5, V, V, V, V, V, V, V, V]),  # 11: val is always majority -> dropped
    ("val", "", [V, V, V, V, V, V, V, V, V, 10]),  # 12: empty name
    ("test", "fer0000014.png", [V, V, V, V, 9, 1, V, V, V, V]),  # 13: anger
    ("test", "fer0000014.png", [V, V, V, V, V, V, 8, V, 2, V]),  # 14: fear (duplicate name)
    ("test", "fer0000015.png", [V, V, V, V, V, V, V, V, 7, 3]),  # 15: unknown
]
ONE_HOT = {0: 0, 1: 1, 3: 0, 6: 2, 8: 7}
SOFT = {
    **ONE_HOT,
    4: {0: 0.4, 1: 0.3, 2: 0.3},
    7: {0: 0.5, 1: 0.5},
}
MULTI = {**SOFT, 4: {0: 1 / 3, 1: 1 / 3, 2: 1 / 3}, 9: {0: 0.5, 1: 0.5}}
EXPECTED_TRAIN = {"majority": ONE_HOT, "probability": SOFT, "crossentropy": SOFT, "multi_target": MULTI}


def as_vector(expected) -> list[float]:
    vec = [0.0] * 8
    for cls, p in ({expected: 1.0} if isinstance(expected, int) else expected).items():
        vec[cls] = p
    return vec


def test_ferplus_vote_rules():
    assert process_votes([5, 1, 1, 1, 1, 1, 0, 0, 0, 0], "majority") == as_vector(0)  # <= 1 zeroed first
    assert process_votes([5, 2, 2, 1, 0, 0, 0, 0, 0, 0], "majority") == as_vector(0)  # 5 of the 9 left
    assert process_votes([5, 5, 0, 0, 0, 0, 0, 0, 0, 0], "majority") is None  # exactly 50%: unknown
    assert process_votes([0, 0, 0, 0, 0, 0, 0, 0, 0, 10], "majority") is None  # not a face
    assert process_votes([2, 0, 0, 0, 0, 0, 0, 0, 8, 0], "majority") is None  # unknown wins
    assert process_votes([4, 3, 3, 0, 0, 0, 0, 0, 0, 0], "crossentropy") == pytest.approx(
        [0.4, 0.3, 0.3, *[0] * 5]
    )
    assert process_votes([4, 2, 2, 2, 0, 0, 0, 0, 0, 0], "probability") is None  # more than 3 emotions
    # unknown ties in after an emotion: the emotion is kept, unknown dropped
    assert process_votes([6, 0, 0, 0, 0, 0, 0, 0, 3, 1], "crossentropy") == as_vector(0)
    assert process_votes([3, 3, 2, 2, 0, 0, 0, 0, 0, 0], "multi_target") == pytest.approx(
        as_vector({0: 0.5, 1: 0.5})
    )
    assert process_votes([4, 2, 2, 2, 0, 0, 0, 0, 0, 0], "multi_target") is None  # only 40% at >= 30%


@pytest.mark.parametrize("mode", ["majority", "probability", "crossentropy", "multi_target"])
def test_ferplus_csv_layout_label_modes(mode, tmp_path):
    root = write_ferplus_csv(tmp_path / "ferplus", FERPLUS_ROWS, fer2013_dir=tmp_path / "ferplus" / "fer2013")
    data = load("ferplus", root, tmp_path, f"dataset.label_mode={mode}")
    expected = EXPECTED_TRAIN[mode]
    train = data.splits["train"]
    rows = [ferplus_row_of(image) for image in train.images]
    assert rows == sorted(expected)  # rows 2 (empty name), 5 (NF) and the unknowns are gone
    targets = [as_vector(expected[r]) for r in rows]
    assert train.labels.tolist() == [int(np.argmax(t)) for t in targets]
    if mode == "majority":
        assert train.targets is None
    else:
        assert train.targets.dtype == torch.float32
        assert torch.allclose(train.targets, torch.tensor(targets), atol=1e-6)
        assert torch.allclose(train.targets.sum(1), torch.ones(len(rows)))
    # val and test always use majority
    assert [ferplus_row_of(i) for i in data.splits["val"].images] == [10]
    assert data.splits["val"].labels.tolist() == [3] and data.splits["val"].targets is None
    assert [ferplus_row_of(i) for i in data.splits["test"].images] == [13, 14]
    assert data.splits["test"].labels.tolist() == [4, 6]
    assert data.info["dropped_empty_name"] == 2


def test_ferplus_folders_layout_and_pairing_errors(tmp_path):
    named = [(s, f"fer{i:07d}.png", v) for i, (s, n, v) in enumerate(FERPLUS_ROWS) if n]
    data = load(
        "ferplus", write_ferplus_folders(tmp_path / "fp", named), tmp_path, "dataset.label_mode=crossentropy"
    )
    row_of_named = [i for i, (_, n, _) in enumerate(FERPLUS_ROWS) if n]
    rows = [row_of_named[ferplus_row_of(image)] for image in data.splits["train"].images]
    assert rows == sorted(SOFT)
    assert torch.allclose(data.splits["train"].targets, torch.tensor([as_vector(SOFT[r]) for r in rows]))
    assert data.splits["test"].labels.tolist() == [4, 6]

    # fer2013.csv given explicitly, but with one row more than fer2013new.csv: refused
    root = write_ferplus_csv(tmp_path / "bad", FERPLUS_ROWS)
    pixels = root / "fer2013.csv"
    lines = pixels.read_text().splitlines()
    (tmp_path / "other.csv").write_text("\n".join([*lines, lines[-1]]) + "\n")
    pixels.unlink()
    with pytest.raises(UserError, match="rows"):
        load("ferplus", root, tmp_path, f"dataset.fer2013_csv={tmp_path / 'other.csv'}")


# -- AffectNet --------
@pytest.mark.parametrize("val_header", [False, True], ids=["headerless", "header"])
@pytest.mark.parametrize("k", [7, 8])
def test_affectnet_csv_layout(val_header, k, tmp_path):
    root = write_affectnet(tmp_path / "an", AFFECTNET_CODES, val_header=val_header)
    cfg = compose_cfg("affectnet", root, tmp_path / "cache", f"dataset.num_classes={k}")
    assert cfg.dataset.sampler == "balanced"
    data = load_data(cfg)
    assert data.num_classes == k and data.class_names[-1] == ("contempt" if k == 8 else "anger")
    assert counts(data, "test") == [1] * k  # the official validation set; codes 8-10 (and 7 for k=7) dropped
    train = [a + b for a, b in zip(counts(data, "train"), counts(data, "val"))]
    assert train == [2, 3, 2, 2, 2, 2, 2, 2][:k]
    assert_faces_match_labels(data)  # would fail without the face-box crop (white background)


def test_affectnet_npy_layout(tmp_path):
    codes = {"train": [0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5, 6, 6, 7, 7, 7], "val": [0, 1, 2, 3, 4, 5, 6, 7]}
    root = write_affectnet_npy(tmp_path / "an8", codes)
    data8 = load("affectnet", root, tmp_path)
    assert counts(data8, "test") == [1] * 8
    assert [a + b for a, b in zip(counts(data8, "train"), counts(data8, "val"))] == [2] * 7 + [3]
    data7 = load("affectnet", root, tmp_path, "dataset.num_classes=7")
    assert counts(data7, "test") == [1] * 7 and len(data7.splits["train"]) + len(data7.splits["val"]) == 14
    assert_faces_match_labels(data7)


# -- KDEF --------
def test_kdef_folds_group_subjects(tmp_path):
    root = write_kdef(tmp_path)
    Image.new("RGB", (28, 38)).save(root / "KDEF" / "BM02" / "BM02SUHL.JPG")  # solid-black placeholder
    seen: dict[str, int] = {}
    for fold in range(4):
        cfg = compose_cfg("kdef", root, tmp_path / "cache", "dataset.num_folds=4", f"dataset.fold={fold}")
        adapter = build_adapter(cfg.dataset)
        faces, info = adapter.faces(*adapter.layout())
        assert info["misnamed_skipped"] == 1  # AF01V.JPG
        test_files = [f.source for f in faces["test"]]
        for path in test_files:
            assert path.name not in seen, "folds overlap"
            seen[path.name] = fold
        test_subjects = {p.parent.name[1:] for p in test_files}
        assert test_subjects == set(info["test_subjects"]) and len(test_subjects) == 1
        assert {p.parent.name[0] for p in test_files} == {"A", "B"}  # both sessions of the subject
        assert not {p.parent.name[1:] for p in (f.source for f in faces["train"])} & test_subjects
    assert len(seen) == 4 * 2 * 7 * 2  # every image is in exactly one test fold
    assert {len(n) for n in seen} == {len("AF01AFS.JPG"), len("AF01AFHL.JPG")}  # 7- and 8-char stems
    # session A and B pictures of one subject share a fold
    assert seen["AF01HAS.JPG"] == seen["BF01HAS.JPG"]

    data = load("kdef", root, tmp_path, "dataset.num_folds=2", "dataset.fold=1", "dataset.image_size=16")
    assert data.info["placeholders_skipped"] == 1 and data.info["misnamed_skipped"] == 1
    assert len(data.splits["test"]) + len(data.splits["train"]) + len(data.splits["val"]) == 111
    assert counts(data, "test") in ([8] * 7, [8] * 6 + [7])
    assert_faces_match_labels(data)
    with pytest.raises(UserError, match=r"fewer than dataset\.num_folds"):
        load("kdef", root, tmp_path)  # 4 subjects, 10 folds
    with pytest.raises(UserError, match=r"dataset\.crop_box"):
        load("kdef", root, tmp_path, "dataset.num_folds=2", "dataset.crop_box=[0.5,0,0.6,1]")


# -- ExpW --------
def test_expw_faces_duplicates_and_test_split(tmp_path):
    root = write_expw(tmp_path / "expw", EXPW_PHOTOS, duplicate=[0, 3])
    data = load("expw", root, tmp_path)
    assert data.info["duplicate_lines_removed"] == 2
    assert sum(len(s) for s in data.splits.values()) == 21  # 3 faces per class, duplicates removed
    assert counts(data, "test") == [1] * 7  # seeded stratified test split (test_fraction 0.1, at least 1)
    assert_faces_match_labels(data)  # each face cropped from a photo holding several
    again = load("expw", root, tmp_path / "other")
    assert torch.equal(again.splits["test"].images, data.splits["test"].images)


# -- errors --------
def test_corrupt_and_zero_byte_images(tmp_path):
    root = write_rafdb_basic(tmp_path / "raf", RAFDB_COUNTS)
    aligned = root / "basic" / "Image" / "aligned"
    cache = tmp_path / "cache"
    corrupt(aligned / "test_0003_aligned.jpg", zero_bytes=True)
    with pytest.raises(UserError, match=r"test_0003_aligned\.jpg: the file is empty") as err:
        load_data(compose_cfg("rafdb", root, cache))
    assert "skip_corrupt" in str(err.value) and "\n" not in str(err.value)
    assert not cache.exists() or not any(cache.rglob("*")), "a failed build left a cache behind"
    bad = corrupt(aligned / "train_00002_aligned.jpg")
    with pytest.raises(UserError, match=r"train_00002_aligned\.jpg"):
        load_data(compose_cfg("rafdb", root, cache, "dataset.skip_corrupt=false"))
    assert not cache.exists() or not any(cache.rglob("*"))
    data = load_data(compose_cfg("rafdb", root, cache, "dataset.skip_corrupt=true"))
    assert data.info["skipped_corrupt"] == 2 and str(bad) in data.info["skipped_corrupt_files"]
    assert len(data.splits["test"]) == sum(RAFDB_COUNTS["test"]) - 1
    assert_faces_match_labels(data)
    assert len(list(cache.rglob("manifest.json"))) == 1


def test_corrupt_fer2013_pixels(tmp_path):
    root = write_fer2013(tmp_path / "fer", FER_COUNTS)
    lines = (root / "fer2013.csv").read_text().splitlines()
    lines[4] = "3,1 2 3,Training"
    (root / "fer2013.csv").write_text("\n".join(lines) + "\n")
    with pytest.raises(UserError, match=r"fer2013\.csv:5\b"):
        load("fer2013", root, tmp_path)


def _append_bad_label(name: str, tmp_path: Path) -> tuple[Path, str]:
    """A fixture of ``name`` with one label outside its table; returns (root, "file:line")."""
    if name == "rafdb":
        root = write_rafdb_basic(tmp_path / name, RAFDB_COUNTS)
        path, line = root / "basic" / "EmoLabel" / "list_patition_label.txt", "train_00099.jpg 8"
    elif name == "fer2013":
        root = write_fer2013(tmp_path / name, FER_COUNTS)
        path, line = root / "fer2013.csv", "7,1 2 3 4,Training"
    elif name == "affectnet":
        root = write_affectnet(tmp_path / name, AFFECTNET_CODES)
        path, line = root / "Manually_Annotated_file_lists" / "validation.csv", "1/x.jpg,1,1,5,5,1;2,11,0,0"
    else:
        root = write_expw(tmp_path / name, EXPW_PHOTOS)
        path, line = root / "label" / "label.lst", "photo_0.jpg 0 3 3 13 13 50.0 7"
    lines = path.read_text().splitlines()
    path.write_text("\n".join([*lines[:2], line, *lines[2:]]) + "\n")
    return root, f"{path.name}:3"


@pytest.mark.parametrize("name", ["rafdb", "fer2013", "affectnet", "expw"])
def test_label_outside_table(name, tmp_path):
    root, where = _append_bad_label(name, tmp_path)
    with pytest.raises(UserError, match=rf"{where}: label .* not in the label table") as err:
        load(name, root, tmp_path)
    assert "\n" not in str(err.value)
    assert not (tmp_path / "cache").exists()


@pytest.mark.parametrize("name", DATASETS)
def test_missing_root_or_layout(name, tmp_path):
    with pytest.raises(UserError, match="does not exist") as err:
        load(name, tmp_path / "nowhere", tmp_path)
    assert "\n" not in str(err.value)
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match=r"not found under dataset\.root.*expected") as err:
        load(name, tmp_path / "empty", tmp_path)
    assert "\n" not in str(err.value)
    with pytest.raises(UserError, match=r"dataset\.root is not set"):
        load_data(compose_cfg(name, "null", tmp_path / "cache"))


def test_cache_follows_label_file(tmp_path):
    root = write_rafdb_basic(tmp_path / "raf", RAFDB_COUNTS)
    cfg = compose_cfg("rafdb", root, tmp_path / "cache")
    adapter = build_adapter(cfg.dataset)
    label_file = root / "basic" / "EmoLabel" / "list_patition_label.txt"
    assert adapter.source_files() == [label_file]
    before = adapter.fingerprint()
    label_file.write_text(label_file.read_text().replace("train_00001.jpg 1", "train_00001.jpg 2") + "\n")
    assert adapter.fingerprint() != before


# -- command line --------
def test_prepare_data_script(tmp_path, capsys):
    root = write_rafdb_folders(tmp_path / "raf", RAFDB_COUNTS)
    script = REPO / "scripts" / "prepare_data.py"
    cache = f"paths.cache_dir={tmp_path / 'cache'}"
    ok = subprocess.run(
        [sys.executable, str(script), "dataset=rafdb", f"dataset.root={root}", cache],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert ok.returncode == 0, ok.stderr
    summary = json.loads(ok.stdout.strip().splitlines()[-1])
    assert summary["dataset"] == "rafdb" and set(summary["splits"]) == {"train", "val", "test"}
    assert summary["splits"]["test"]["n"] == 8 and summary["splits"]["test"]["per_class"]["happiness"] == 2
    assert summary["splits"]["train"]["n"] + summary["splits"]["val"]["n"] == 15

    # user errors: one "error: ..." line on stderr, exit status 2 (in-process, to save a Python start-up)
    spec = importlib.util.spec_from_file_location("prepare_data", script)
    prepare_data = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(prepare_data)
    capsys.readouterr()
    for args in (
        ["dataset=rafdb", f"dataset.root={tmp_path / 'missing'}", cache],
        ["dataset=rafdb", f"dataset.root={root}", "dataset.fold=3", cache],  # not a rafdb option
        ["dataset=nope"],
    ):
        with pytest.raises(SystemExit) as exit_:
            prepare_data.main(args)
        out = capsys.readouterr()
        assert exit_.value.code == 2 and out.out == ""
        assert out.err.startswith("error: ") and out.err.strip().count("\n") == 0, out.err


@pytest.mark.parametrize("name", ["rafdb", "ferplus"])
def test_training_runs_on_adapter_data(name, tmp_path):
    """One short in-process epoch: rafdb (hard labels) and FERPlus cross-entropy (soft targets in batches)."""
    if name == "rafdb":
        root, extra = write_rafdb_basic(tmp_path / "raf", {"train": [3] * 7, "test": [2] * 7}, size=32), []
    else:
        root, extra = write_ferplus_csv(tmp_path / "fp", FERPLUS_ROWS), ["dataset.label_mode=crossentropy"]
    cfg = compose_cfg(
        name,
        root,
        tmp_path / "cache",
        "dataset.image_size=32",
        "trainer.max_epochs=1",
        "trainer.batch_size=8",
        "logger=none",
        "degrade.test=[x1,x2]",
        "trainer.num_threads=1",  # steadier on a shared 2-core machine
        *extra,
    )
    threads = torch.get_num_threads()
    try:
        metrics = run_training(cfg, tmp_path / "run")
    finally:
        torch.set_num_threads(threads)  # run_training sets it for the whole process
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["dataset"] == name
    assert metrics["test"]["x2"]["n"] == (14 if name == "rafdb" else 2)
    assert np.isfinite(metrics["train"]["loss"])


@pytest.mark.slow  # about 30 s on 2 CPU cores
def test_train_cli_smoke_on_rafdb_fixture(tmp_path):
    root = write_rafdb_basic(tmp_path / "raf", {"train": [10] * 7, "test": [3] * 7}, size=100)
    run = subprocess.run(
        [
            sys.executable,
            str(REPO / "train.py"),
            "dataset=rafdb",
            f"dataset.root={root}",
            "trainer.max_epochs=1",
            "trainer.batch_size=8",
            f"paths.cache_dir={tmp_path / 'cache'}",
            f"hydra.run.dir={tmp_path / 'run'}",
            "logger=none",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["dataset"] == "rafdb" and metrics["test"]["x1"]["n"] == 21
    assert sorted(metrics["test"]) == ["x1", "x2", "x4", "x6", "x8"]

"""RAF-DB (basic subset, 7 classes): the official ``basic/`` folder or the ``DATASET/`` re-distribution.

Official layout (``dataset.root`` = the folder holding ``basic/``, or ``basic/`` itself)::

    basic/EmoLabel/list_patition_label.txt     "train_00001.jpg 5" (no header; the name's prefix is the split)
    basic/Image/aligned/train_00001_aligned.jpg

Re-distribution (``dataset.root`` = the folder holding ``DATASET/`` and the CSVs)::

    DATASET/{train,test}/<1..7>/train_00001_aligned.jpg
    {train,test}_labels.csv                    header "image,label"  (also accepted inside DATASET/)

Labels 1..7 = surprise, fear, disgust, happiness, sadness, anger, neutral. No official validation split:
lrfer carves a seeded, stratified one from train (``dataset.val_fraction``).
"""

from __future__ import annotations

from pathlib import Path

from lrfer.core.errors import UserError
from lrfer.data.datasets.common import (
    Face,
    Faces,
    FileDataset,
    LabelTable,
    find_path,
    find_set,
    labelled_rows,
    need_fields,
    read_rows,
)

#: RAF-DB's labels are 1..7, in the order of ``dataset.class_names`` (configs/dataset/rafdb.yaml).
FIRST_LABEL = 1

BASIC_LABELS = ("basic/EmoLabel/list_patition_label.txt", "EmoLabel/list_patition_label.txt")
CSV_DIRS = (".", "DATASET")
IMAGE_DIRS = ("DATASET", ".")
LAYOUT = (
    "basic/EmoLabel/list_patition_label.txt with basic/Image/aligned/, or DATASET/{train,test}/<label>/ "
    "with {train,test}_labels.csv"
)


class RafDb(FileDataset):
    """RAF-DB basic: train / test from the official split (the image name's prefix)."""

    name = "rafdb"
    layout_help = LAYOUT

    def labels(self) -> LabelTable:
        return LabelTable.consecutive(FIRST_LABEL, self.names())

    def layout(self) -> tuple[str, list[Path]]:
        """("basic", [label file]) or ("folders", [train csv, test csv])."""
        root = self.root()
        label_file = find_path(root, BASIC_LABELS, "file")
        if label_file is not None:
            return "basic", [label_file]
        csvs = find_set(root, CSV_DIRS, [f"{split}_labels.csv" for split in ("train", "test")])
        if csvs is None:
            raise self.missing("the RAF-DB label file")
        return "folders", csvs

    def faces(self, layout: str, files: list[Path]) -> tuple[Faces, dict]:
        return (self._basic(files[0]) if layout == "basic" else self._folders(files)), {}

    def _basic(self, label_file: Path) -> Faces:
        image_dir = label_file.parent.parent / "Image" / "aligned"
        self.folder(image_dir, "the folder basic/Image/aligned")
        faces: Faces = {"train": [], "test": []}
        for lineno, row in read_rows(label_file, delimiter=None):
            need_fields(row, 2, label_file, lineno, "'<image name> <label>'")
            name, raw = row[0], row[1]
            split = name.split("_", 1)[0]
            if split not in faces:
                raise UserError(
                    f"{label_file}:{lineno}: cannot tell the split of {name!r} "
                    "(expected a name starting with train_ or test_)"
                )
            label = self.labels().lookup(raw, f"{label_file}:{lineno}")
            faces[split].append(Face(image_dir / f"{Path(name).stem}_aligned.jpg", label))
        return faces

    def _folders(self, csvs: list[Path]) -> Faces:
        image_root = self.find([f"{d}/train" for d in IMAGE_DIRS], "the image folder DATASET/train", "dir")
        faces: Faces = {}
        for split, csv_file in zip(("train", "test"), csvs):
            faces[split] = [
                Face(image_root.parent / split / row["label"] / row["image"], label)
                for _, row, label in labelled_rows(csv_file, ("image", "label"), self.labels(), "label")
            ]
        return faces

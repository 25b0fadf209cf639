"""AffectNet, manually annotated part: 8 classes (``dataset.num_classes=8``) or 7 without contempt.

Two layouts (``dataset.root`` = the folder you unpacked):

- the original release: ``Manually_Annotated_file_lists/{training,validation}.csv`` (columns
  ``subDirectory_filePath,face_x,face_y,face_width,face_height,facial_landmarks,expression,valence,arousal``;
  validation.csv comes with or without the header line) and the images under
  ``Manually_Annotated_Images/`` (also found inside ``Manually_Annotated_compressed/`` or
  ``Manually_Annotated/``). The face box of each row is cropped.
- "AffectNet-8Labels": ``{train_set,val_set}/images/<id>.jpg`` (already cropped faces) with
  ``annotations/<id>_exp.npy`` (a 0-d array holding the code 0..7).

Codes 0..10 = neutral, happy, sad, surprise, fear, disgust, anger, contempt, none, uncertain, no-face;
codes >= ``num_classes`` are dropped. The official validation set (500 faces per class) is the test split,
as in the papers; lrfer carves the validation split from train. Training is very imbalanced: the yaml
defaults to ``dataset.sampler=balanced``. The release holds some zero-byte / broken JPEGs, so the yaml also
defaults to ``dataset.skip_corrupt=true`` (their count is logged and kept in the cache manifest).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from omegaconf import MISSING

from lrfer.config.schema import DatasetConfig
from lrfer.core.errors import UserError
from lrfer.data.datasets.common import (
    Box,
    Face,
    Faces,
    FileDataset,
    LabelTable,
    find_set,
    labelled_rows,
    one_line,
    to_number,
)

#: Expression codes 0..7 are the eight emotions (``dataset.class_names``); 8..10 are dropped.
NUM_EMOTIONS = 8
DROPPED_CODES = {8: "none", 9: "uncertain", 10: "no-face"}
COLUMNS = (
    "subDirectory_filePath",
    "face_x",
    "face_y",
    "face_width",
    "face_height",
    "facial_landmarks",
    "expression",
)
LIST_DIRS = ("Manually_Annotated_file_lists", ".")
IMAGE_DIRS = (
    "Manually_Annotated_Images",
    "Manually_Annotated_compressed/Manually_Annotated_Images",
    "Manually_Annotated/Manually_Annotated_Images",
    "Manually_Annotated_compressed",
)
NPY_SPLITS = {"train": "train_set", "test": "val_set"}
LAYOUT = (
    "Manually_Annotated_file_lists/{training,validation}.csv with Manually_Annotated_Images/, "
    "or {train_set,val_set}/{images,annotations}/"
)


@dataclass
class AffectNetConfig(DatasetConfig):
    """AffectNet: ``num_classes`` 8 (codes 0..7) or 7 (0..6); codes up to 10 are dropped, not errors.

    Training is very imbalanced (class-balanced ``sampler``) and the release holds broken JPEGs
    (``skip_corrupt``).
    """

    sampler: str = MISSING
    skip_corrupt: bool = MISSING


class AffectNet(FileDataset):
    """AffectNet: train = training set, test = the official validation set (val carved from train)."""

    name = "affectnet"
    layout_help = LAYOUT

    def names(self) -> list[str]:
        k = int(self.cfg.num_classes)
        if k not in (7, 8):
            raise UserError(f"affectnet: dataset.num_classes must be 7 or 8, got {k}")
        return list(self.cfg.class_names)[:k]

    def label_table(self, max_code: int) -> LabelTable:
        """Codes 0..num_classes-1 kept, num_classes..max_code dropped."""
        k = len(self.names())
        return LabelTable.consecutive(0, self.names(), dropped=range(k, max_code + 1))

    def layout(self) -> tuple[str, list[Path]]:
        """("csv", [training.csv, validation.csv]) or ("npy", [the two annotations folders])."""
        root = self.root()
        lists = find_set(root, LIST_DIRS, ("training.csv", "validation.csv"))
        if lists is not None:
            return "csv", lists
        annotations = [root / d / "annotations" for d in NPY_SPLITS.values()]
        if all(p.is_dir() for p in annotations):
            return "npy", annotations
        raise self.missing("the AffectNet file lists")

    def faces(self, layout: str, files: list[Path]) -> tuple[Faces, dict]:
        return (self._csv(files) if layout == "csv" else self._npy(files)), {}

    def _csv(self, lists: list[Path]) -> Faces:
        images = self.find(IMAGE_DIRS, "the image folder Manually_Annotated_Images", "dir")
        table = self.label_table(max(DROPPED_CODES))
        faces: Faces = {}
        for split, path in zip(("train", "test"), lists):
            faces[split] = []
            for lineno, row, label in labelled_rows(path, COLUMNS, table, "expression"):
                x, y, w, h = (to_number(row[c], path, lineno, c, float) for c in COLUMNS[1:5])
                box = Box(y, x, y + h, x + w)
                faces[split].append(Face(images / row["subDirectory_filePath"], label, box))
        return faces

    def _npy(self, annotation_dirs: list[Path]) -> Faces:
        table = self.label_table(NUM_EMOTIONS - 1)
        faces: Faces = {}
        for split, label_dir in zip(NPY_SPLITS, annotation_dirs):
            image_dir = self.folder(label_dir.parent / "images", f"the folder {label_dir.parent.name}/images")
            images = {Path(e.name).stem: Path(e.path) for e in os.scandir(image_dir) if e.is_file()}
            ids = [e.name[: -len("_exp.npy")] for e in os.scandir(label_dir) if e.name.endswith("_exp.npy")]
            ids.sort(key=lambda s: (not s.isdigit(), int(s) if s.isdigit() else 0, s))
            faces[split] = []
            for sample in ids:
                path = label_dir / f"{sample}_exp.npy"
                try:
                    code = np.load(path, allow_pickle=False).item()
                except (OSError, ValueError) as err:
                    raise UserError(f"affectnet: cannot read label file {path}: {one_line(err)}") from None
                label = table.lookup(code, str(path))
                if label is not None:
                    faces[split].append(Face(images.get(sample, image_dir / f"{sample}.jpg"), label))
        return faces

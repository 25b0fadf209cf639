"""ExpW, Expression in-the-Wild (7 classes): face boxes in web photos, several faces per photo.

``dataset.root`` = the folder holding ``label/label.lst`` and ``image/origin/`` (or the ``data/`` folder above
them). One line per face: ``image_name face_id top left right bottom confidence label``; the face is
``image[top:bottom, left:right]``. Exact duplicate lines are removed (their count is kept in the manifest).
Labels 0..6 = angry, disgust, fear, happy, sad, surprise, neutral.

``dataset.crop``: ``fixed`` (default) crops the labelled box as it is; ``detect`` crops a square around the
face a detector finds in and around the labelled box (faces it does not find are skipped and counted; see
:mod:`lrfer.data.datasets.detect_crop`).

There is no official split: a seeded, stratified ``dataset.test_fraction`` (default 0.1) of the faces is the
test split (``dataset.test_seed``), and lrfer carves the validation split from the rest.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from omegaconf import MISSING

from lrfer.config.schema import DatasetConfig
from lrfer.data.datasets.common import (
    Box,
    Face,
    Faces,
    FileDataset,
    LabelTable,
    need_fields,
    read_rows,
    stratified_holdout,
    to_number,
)
from lrfer.data.datasets.detect_crop import DetectCrop
from lrfer.detect.detectors import DetectorConfig

LABEL_FILES = ("label/label.lst", "data/label/label.lst")
LAYOUT = "label/label.lst and image/origin/<image_name>"


@dataclass
class ExpwConfig(DatasetConfig):
    """``test_fraction`` of every class (seeded by ``test_seed``) is held out as the test split; ``crop`` is
    ``fixed`` (the labelled boxes) or ``detect`` (the ``detector``'s face in and around each box)."""

    test_fraction: float = MISSING
    test_seed: int = MISSING
    crop: str = MISSING
    detector: DetectorConfig = field(default_factory=DetectorConfig)  # values: configs/detector/dataset.yaml


class Expw(DetectCrop, FileDataset):
    """ExpW: a seeded stratified test split of the faces; the rest is train."""

    name = "expw"
    use_label_box = True
    layout_help = LAYOUT

    def layout(self) -> tuple[str, list[Path]]:
        return "label.lst", [self.find(LABEL_FILES, "label/label.lst")]

    def faces(self, layout: str, files: list[Path]) -> tuple[Faces, dict]:
        label_file = files[0]
        image_dir = self.folder(label_file.parent.parent / "image" / "origin", "the folder image/origin")
        seen: set[tuple[str, ...]] = set()
        faces: list[Face] = []
        duplicates = 0
        labels = LabelTable.consecutive(0, self.names())  # labels 0..6 in the order of dataset.class_names
        for lineno, row in read_rows(label_file, delimiter=None):
            need_fields(row, 8, label_file, lineno, "'image face_id top left right bottom confidence label'")
            key = tuple(row[:8])
            if key in seen:
                duplicates += 1
                continue
            seen.add(key)
            label = labels.lookup(row[7], f"{label_file}:{lineno}")
            top, left, right, bottom = (to_number(v, label_file, lineno, "face box value") for v in row[2:6])
            where = f"{image_dir / row[0]} ({label_file}:{lineno})"
            faces.append(Face(image_dir / row[0], label, Box(top, left, bottom, right), where=where))
        fraction, seed = float(self.cfg.test_fraction), int(self.cfg.test_seed)
        train, test = stratified_holdout([f.label for f in faces], fraction, seed)
        info = {"duplicate_lines_removed": duplicates, "test_split": {"fraction": fraction, "seed": seed}}
        return self.crop_faces({"train": [faces[i] for i in train], "test": [faces[i] for i in test]}, info)

"""FER2013 (7 classes): one CSV of 48x48 grey faces, ``fer2013.csv`` or Kaggle's ``icml_face_data.csv``.

``dataset.root`` = the folder holding ``fer2013.csv`` (header ``emotion,pixels,Usage``; also found inside
``fer2013/``, as the original tarball unpacks) or ``icml_face_data.csv`` (columns ``emotion, Usage, pixels``
with leading spaces). ``pixels`` = 2,304 space-separated grey levels, row-major. Classes 0..6 = angry,
disgust, fear, happy, sad, surprise, neutral. Usage Training / PublicTest / PrivateTest = train / val / test.

:func:`read_fer2013` is shared with FERPlus, whose votes pair with this file row by row.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from lrfer.core.errors import UserError
from lrfer.data.datasets.common import (
    CorruptImage,
    Face,
    Faces,
    FileDataset,
    LabelTable,
    find_path,
    read_table,
)

USAGE_SPLITS = {"training": "train", "publictest": "val", "privatetest": "test"}
CSV_CANDIDATES = ("fer2013.csv", "fer2013/fer2013.csv", "icml_face_data.csv", "fer2013/icml_face_data.csv")
LAYOUT = "fer2013.csv (header emotion,pixels,Usage) or icml_face_data.csv in that folder"


@dataclass
class FerRow:
    """One row of fer2013.csv: its line number, split, raw emotion code and a loader of its pixels."""

    lineno: int
    split: str
    emotion: str
    pixels: Callable[[], np.ndarray]


def pixel_loader(text: str) -> Callable[[], np.ndarray]:
    """A function decoding a ``pixels`` field (square image, space-separated 0..255) into a uint8 array."""

    def load() -> np.ndarray:
        try:
            values = np.array(text.split(), dtype=np.int64)
        except ValueError:
            raise CorruptImage("the pixels field holds a value that is not an integer") from None
        side = math.isqrt(values.size)
        if values.size == 0 or side * side != values.size or values.min() < 0 or values.max() > 255:
            raise CorruptImage(f"expected a square image of grey levels 0..255, got {values.size} values")
        return values.astype(np.uint8).reshape(side, side)

    return load


def find_fer2013_csv(root: Path) -> Path | None:
    return find_path(root, CSV_CANDIDATES, "file")


def read_fer2013(path: Path) -> list[FerRow]:
    """Every row of fer2013.csv / icml_face_data.csv, in file order."""
    rows = []
    for lineno, row in read_table(path, ("emotion", "pixels", "Usage")):
        split = USAGE_SPLITS.get(row["Usage"].lower())
        if split is None:
            raise UserError(
                f"{path}:{lineno}: unknown Usage {row['Usage']!r} "
                "(expected Training, PublicTest or PrivateTest)"
            )
        rows.append(FerRow(lineno, split, row["emotion"], pixel_loader(row["pixels"])))
    return rows


class Fer2013(FileDataset):
    """FER2013: train / val / test = Usage Training / PublicTest / PrivateTest."""

    name = "fer2013"
    layout_help = LAYOUT

    def layout(self) -> tuple[str, list[Path]]:
        path = self.find(CSV_CANDIDATES, "fer2013.csv")
        return path.name, [path]

    def faces(self, layout: str, files: list[Path]) -> tuple[Faces, dict]:
        path = files[0]
        faces: Faces = {"train": [], "val": [], "test": []}
        labels = LabelTable.consecutive(0, self.names())  # codes 0..6 in the order of dataset.class_names
        for row in read_fer2013(path):
            label = labels.lookup(row.emotion, f"{path}:{row.lineno}")
            faces[row.split].append(Face(row.pixels, label, where=f"{path}:{row.lineno}"))
        return faces, {}

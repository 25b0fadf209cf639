"""KDEF (7 classes): 70 people x 7 expressions x 5 angles x 2 sessions of 562x762 portraits.

``dataset.root`` = the folder holding ``KDEF/`` (e.g. ``KDEF_and_AKDEF/``) or ``KDEF/`` itself; images are
``KDEF/<folder>/<stem>.JPG`` with folder = session (A/B) + gender (F/M) + id (01..35) and stem = folder +
expression (AF AN DI HA NE SA SU) + angle (FL HL S HR FR), so stems are 7 or 8 characters. Files whose
name does not follow this pattern (e.g. ``AF31V.JPG``) are skipped and counted, and so are solid-colour
placeholder images.

There is no official split: lrfer makes k-fold cross-validation folds (``dataset.num_folds``, default 10),
``dataset.fold_mode``:

* ``subject`` (default): subject-independent folds. A subject is gender + id, so both sessions of a person
  (AF01 and BF01) are always in the same fold; subjects are dealt to folds in an order shuffled by
  ``dataset.fold_seed``;
* ``image``: stratified image-level folds: per expression, the images are shuffled by ``fold_seed`` and dealt
  round-robin, so the same person appears in training and test folds (a subject-dependent protocol).

``dataset.fold`` (0..k-1) is the test fold, the other folds are train (lrfer carves val from them unless
``dataset.val_fraction=0``).
Faces are cropped (``dataset.crop``) with the fixed box ``dataset.crop_box`` = [top, left, height, width] as
fractions of the portrait (``fixed``, the default: a square around the face of a frontal picture, the same
for all five camera angles) or where a face detector finds the face (``detect``: profile views included,
pictures without a found face skipped and counted; see :mod:`lrfer.data.datasets.detect_crop`), then
resized to ``dataset.image_size``.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from omegaconf import MISSING

from lrfer.config.schema import DatasetConfig
from lrfer.core.errors import UserError
from lrfer.data.datasets.common import Box, Face, Faces, FileDataset, missing
from lrfer.data.datasets.detect_crop import DetectCrop
from lrfer.detect.detectors import DetectorConfig

#: The expression codes of the file names, in the order of the classes (their names: dataset.class_names).
EXPRESSION_CODES = ("AF", "AN", "DI", "HA", "NE", "SA", "SU")
ANGLES = ("FL", "HL", "S", "HR", "FR")
STEM = re.compile(
    r"^(?P<folder>(?P<session>[AB])(?P<subject>[FM]\d\d))(?P<expr>AF|AN|DI|HA|NE|SA|SU)"
    r"(?P<angle>FL|HL|S|HR|FR)$"
)
FOLDER = re.compile(r"^[AB][FM]\d\d$")
log = logging.getLogger(__name__)

LAYOUT = "KDEF/<folder>/<stem>.JPG, e.g. KDEF/AF01/AF01AFS.JPG"
#: Grey-level spread below which a decoded face counts as a blank placeholder.
PLACEHOLDER_SPREAD = 8


@dataclass
class KdefConfig(DatasetConfig):
    """Cross-validation (``num_folds``, test ``fold``, ``fold_seed``), the face ``crop`` (``fixed``: the box
    ``crop_box`` as fractions [top, left, height, width] of the portrait; ``detect``: found by the
    ``detector``) and the camera ``angles`` kept."""

    num_folds: int = MISSING
    fold: int = MISSING
    fold_seed: int = MISSING
    fold_mode: str = MISSING
    crop: str = MISSING
    crop_box: list[float] = MISSING
    detector: DetectorConfig = field(default_factory=DetectorConfig)  # values: configs/detector/dataset.yaml
    angles: list[str] = MISSING


FOLD_MODES = ("subject", "image")


def image_folds(labels: list[int], num_folds: int, seed: int) -> list[int]:
    """Stratified image-level folds: per class, the images (in the given order) are shuffled by ``seed``
    and dealt round-robin, so every fold holds ~1/k of every class. A person's pictures spread over folds."""
    gen = torch.Generator().manual_seed(seed)
    folds = [0] * len(labels)
    for cls in sorted(set(labels)):
        idx = [i for i, y in enumerate(labels) if y == cls]
        for j, p in enumerate(torch.randperm(len(idx), generator=gen).tolist()):
            folds[idx[p]] = j % num_folds
    return folds


def subject_folds(subjects: list[str], num_folds: int, seed: int) -> dict[str, int]:
    """Fold of every subject: subjects sorted, shuffled by ``seed``, then dealt round-robin."""
    ordered = sorted(set(subjects))
    perm = torch.randperm(len(ordered), generator=torch.Generator().manual_seed(seed)).tolist()
    return {ordered[j]: i % num_folds for i, j in enumerate(perm)}


class Kdef(DetectCrop, FileDataset):
    """KDEF: one subject-independent cross-validation fold as test, the rest as train."""

    name = "kdef"
    rejected_as = "placeholders_skipped"

    def layout(self) -> tuple[str, list[Path]]:
        """("folders", the person folders): their modification time changes when files come and go."""
        root = self.root()
        for candidate in (root / "KDEF", root):
            folders = sorted(p for p in candidate.glob("*") if p.is_dir() and FOLDER.match(p.name.upper()))
            if folders:
                return "folders", folders
        raise missing(self.name, "the KDEF person folders", root, LAYOUT)

    def keep(self, face: np.ndarray) -> bool:
        """False for solid-colour placeholder pictures."""
        return int(face.max()) - int(face.min()) >= PLACEHOLDER_SPREAD

    def crop_box(self) -> Box:
        crop = [float(v) for v in self.cfg.crop_box]
        if len(crop) != 4 or min(crop) < 0 or crop[0] + crop[2] > 1 or crop[1] + crop[3] > 1 or 0 in crop[2:]:
            raise UserError(
                f"kdef: dataset.crop_box={crop} must be [top, left, height, width] as fractions of the "
                "portrait, with top + height <= 1 and left + width <= 1"
            )
        top, left, height, width = crop
        return Box(top, left, top + height, left + width, relative=True)

    def faces(self, layout: str, files: list[Path]) -> tuple[Faces, dict]:
        cfg = self.cfg
        k, fold, seed = int(cfg.num_folds), int(cfg.fold), int(cfg.fold_seed)
        if k < 2 or not 0 <= fold < k:
            raise UserError(
                f"kdef: need dataset.num_folds >= 2 and 0 <= dataset.fold < num_folds, got {fold}/{k}"
            )
        angles = {str(a).upper() for a in cfg.angles}
        if not angles or angles - set(ANGLES):
            raise UserError(f"kdef: dataset.angles={list(cfg.angles)} must be a subset of {list(ANGLES)}")
        box = self.crop_box()
        found, misnamed = [], []
        for folder in files:
            for path in sorted(folder.iterdir()):
                if path.suffix.lower() not in (".jpg", ".jpeg"):
                    continue
                match = STEM.match(path.stem.upper())
                if match is None or match["folder"] != folder.name.upper():
                    misnamed.append(path.name)
                elif match["angle"] in angles:
                    found.append((match["subject"], path, EXPRESSION_CODES.index(match["expr"])))
        if misnamed:
            log.warning("kdef: skipped %d files not named like KDEF's (e.g. %s)", len(misnamed), misnamed[0])
        mode = str(cfg.get("fold_mode", "subject"))
        if mode not in FOLD_MODES:
            raise UserError(f"kdef: dataset.fold_mode={mode!r}: choose subject or image")
        faces: Faces = {"train": [], "test": []}
        if mode == "image":
            found.sort(key=lambda f: f[1].name)
            per_image = image_folds([label for _, _, label in found], k, seed)
            if len(found) < k:
                raise UserError(f"kdef: found {len(found)} images, fewer than dataset.num_folds={k}")
            for (_, path, label), f in zip(found, per_image):
                faces["test" if f == fold else "train"].append(Face(path, label, box))
            test_subjects = sorted({s for (s, _, _), f in zip(found, per_image) if f == fold})
        else:
            folds = subject_folds([s for s, _, _ in found], k, seed)
            if len(folds) < k:
                raise UserError(
                    f"kdef: found {len(folds)} subjects under {self.root()}, fewer than dataset.num_folds={k}"
                )
            for subject, path, label in found:
                faces["test" if folds[subject] == fold else "train"].append(Face(path, label, box))
            test_subjects = sorted(s for s, f in folds.items() if f == fold)
        info = {
            "misnamed_skipped": len(misnamed),
            "misnamed_files": misnamed[:20],
            "folds": {"num_folds": k, "fold": fold, "seed": seed, "mode": mode},
            "test_subjects": test_subjects,
        }
        return self.crop_faces(faces, info)

"""``dataset.crop=detect``: crop dataset faces where a face detector finds them, once, at cache build.

An adapter lists its faces as usual (:class:`~lrfer.data.datasets.common.Face` records), then
:func:`detect_crops` replaces each face's crop box by a square around the detected face (``margin`` of the
face box on every side, as ``lrfer-predict --detect`` crops faces in photos) and drops the faces the detector
does not find. Nothing is ever cropped by guess: a face not found is listed and skipped, with a count in the
cache manifest (``info.crop``) and in ``scripts/prepare_data.py``'s JSON.

Where to look and at what size:

* a whole picture (KDEF portraits: ``region=None``): the highest-scoring face of the picture;
* a labelled box (ExpW): the search covers the box with one box size of context on every side, and the
  detected face must overlap the labelled box (IoU >= :data:`MATCH_IOU`);

the searched picture is resized so that its short side is :data:`WORK_SIDE` px (a KDEF face is then about
110 px tall, an ExpW face about 85 px), so the detector works at one size whatever the source resolution.

Every crop (or miss) is written beside the cache as ``crop_boxes.csv``: split, file, class, status
(``detected`` / ``not_found``), the crop box in px of the source image and the detector's score.
"""

from __future__ import annotations

import csv
import io
import logging
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from lrfer.data.datasets.common import Box, Face, Faces, check_choice, one_line
from lrfer.detect.detectors import box_iou, build_detector, crop_box

log = logging.getLogger(__name__)

#: Short side (px) the searched picture or region is resized to before detection.
WORK_SIDE = 256
#: A detection matches a labelled face box when their IoU is at least this.
MATCH_IOU = 0.3
#: Name of the file written beside the cache arrays.
BOXES_FILE = "crop_boxes.csv"
CROP_MODES = ("fixed", "detect")


def crop_mode(cfg) -> str:
    return check_choice(str(cfg.crop), CROP_MODES, f"dataset.crop (dataset {cfg.name})")


def _open_rgb(source) -> np.ndarray:
    """The picture as the dataset decoder sees it (no EXIF rotation: label boxes are in stored pixels)."""
    with Image.open(source) as im:
        return np.asarray(im.convert("RGB"))


def find_face(detector, image: np.ndarray, region: Box | None = None) -> tuple[np.ndarray, float] | None:
    """The face box ``[left, top, width, height]`` (px of ``image``) and score: the best face of the whole
    image, or the face that matches the labelled ``region`` best; None when there is none."""
    h, w = image.shape[:2]
    if region is None:
        left, top, right, bottom = 0, 0, w, h
    else:
        rl, rt, rr, rb = region.pixels(w, h)
        bw, bh = rr - rl, rb - rt
        if bw <= 0 or bh <= 0:
            return None
        left, top = max(0, rl - bw), max(0, rt - bh)
        right, bottom = min(w, rr + bw), min(h, rb + bh)
    sub = image[top:bottom, left:right]
    scale = WORK_SIDE / min(sub.shape[:2])
    size = (max(1, round(sub.shape[1] * scale)), max(1, round(sub.shape[0] * scale)))
    work = np.asarray(Image.fromarray(np.ascontiguousarray(sub)).resize(size, Image.Resampling.BILINEAR))
    boxes, scores = detector.detect(work)
    if not len(boxes):
        return None
    boxes = boxes / scale + np.array([left, top, 0, 0])
    if region is None:
        best = int(np.argmax(scores))
    else:
        label = np.array([[rl, rt, bw, bh]], dtype=np.float64)
        iou = box_iou(boxes, label)[:, 0]
        best = int(np.argmax(iou))
        if iou[best] < MATCH_IOU:
            return None
    return boxes[best], float(scores[best])


def detect_crops(
    faces: Faces, detector_cfg, dataset: str, *, use_label_box: bool, opener: Callable = _open_rgb
) -> tuple[Faces, dict, str]:
    """Faces cropped where the detector finds them, the ``info["crop"]`` report and ``crop_boxes.csv``.

    ``use_label_box``: search around each face's current crop box (ExpW's labelled boxes) instead of the
    whole picture (KDEF). Unreadable files keep their record, so the decoder reports them as usual.
    """
    detector = build_detector(detector_cfg)
    margin = float(detector_cfg.margin)
    table = io.StringIO()
    writer = csv.writer(table)
    writer.writerow(["split", "file", "label", "status", "left", "top", "right", "bottom", "score"])
    kept: Faces = {}
    missed: list[str] = []
    unreadable = 0
    total = sum(len(v) for v in faces.values())
    bar = tqdm(total=total, desc=f"{dataset} detect", unit="img", disable=not sys.stderr.isatty())
    for split, records in faces.items():
        kept[split] = []
        for face in records:
            bar.update(1)
            try:
                image = opener(face.source)
            except Exception as err:  # unreadable: left to the decoder, which names it or skips it
                log.debug("%s: %s", face.describe(), one_line(err))
                kept[split].append(face)
                unreadable += 1
                continue
            found = find_face(detector, image, face.crop if use_label_box else None)
            if found is None:
                missed.append(face.describe())
                writer.writerow([split, face.describe(), face.label, "not_found", "", "", "", "", ""])
                continue
            box, score = found
            left, top, right, bottom = crop_box(box, margin, image.shape[1], image.shape[0])
            writer.writerow([split, face.describe(), face.label, "detected", left, top, right, bottom, score])
            kept[split].append(
                Face(face.source, face.label, Box(top, left, bottom, right), face.target, face.where)
            )
    bar.close()
    if missed:
        log.warning(
            "%s: no face found in %d of %d images, skipped (e.g. %s)", dataset, len(missed), total, missed[0]
        )
    info = {
        "mode": "detect",
        "detector": "yunet" if detector_cfg.get("model") else "haar",
        "margin": margin,
        "detected": total - len(missed) - unreadable,
        "not_found": len(missed),
        "not_found_files": missed[:20],
        "unreadable": unreadable,
        "boxes_file": BOXES_FILE,
    }
    return kept, info, table.getvalue()


class DetectCrop:
    """Mixin for a :class:`~lrfer.data.datasets.common.FileDataset` with ``dataset.crop`` = ``fixed`` (the
    adapter's own boxes) or ``detect``, and ``dataset.detector``. The adapter's :meth:`faces` ends with
    ``return self.crop_faces(faces, info)``."""

    #: Search around each face's own box (ExpW's labelled boxes) rather than the whole picture (KDEF).
    use_label_box: bool = False

    def crop_faces(self, faces: Faces, info: dict) -> tuple[Faces, dict]:
        if crop_mode(self.cfg) == "fixed":
            return faces, {**info, "crop": {"mode": "fixed"}}
        faces, report, table = detect_crops(
            faces, self.cfg.detector, self.name, use_label_box=self.use_label_box
        )
        self._crop_files = {BOXES_FILE: table}
        return faces, {**info, "crop": report}

    def load(self):
        self._crop_files = {}
        data = super().load()
        data.files.update(self._crop_files)
        return data

    def source_files(self):
        files = super().source_files()
        model = self.cfg.get("detector", {}).get("model") if crop_mode(self.cfg) == "detect" else None
        return (
            [*files, Path(str(model)).expanduser()]
            if model and Path(str(model)).expanduser().is_file()
            else files
        )

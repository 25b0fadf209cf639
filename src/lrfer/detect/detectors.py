"""Face detectors behind one small interface: ``detect(image) -> (boxes, scores)``.

* :class:`HaarDetector` — OpenCV's Haar cascades, shipped inside the ``opencv-python-headless`` wheel
  (``cv2.data.haarcascades``): the frontal cascade ``haarcascade_frontalface_alt2`` plus, with
  ``profile=true``, ``haarcascade_profileface`` on the image and on its mirror (the cascade only knows faces
  turned one way). Nothing is downloaded. Small faces are the point of lrfer, so faces smaller than
  :data:`SMALL_FACE` px are looked for in a second pass on the image upsampled (bilinear) until
  ``min_face`` px becomes :data:`SMALL_FACE` px; the large-face pass runs on the image as it is.
  A box's score is the number of raw cascade hits OpenCV merged into it (``detectMultiScale2``'s
  ``numDetections``): higher is surer; it is not a probability.
* :class:`YuNetDetector` — OpenCV's YuNet CNN (``cv2.FaceDetectorYN``) from an ONNX file the user supplies
  (``detector.model=PATH``, e.g. ``face_detection_yunet_2023mar.onnx`` from the OpenCV model zoo). Its
  score is the network's face probability. Small faces are handled by the same upsampling.

A new detector only needs a ``detect`` method returning boxes and scores; :func:`build_detector` picks one
from a :class:`DetectorConfig`, whose values (defaults included) are ``configs/detector/default.yaml``
(lrfer-predict, :func:`lrfer.tools.photos.detector_config`) and ``configs/detector/dataset.yaml`` (a
dataset's ``crop=detect``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np
from omegaconf import MISSING, DictConfig

from lrfer.core.errors import UserError

#: Face height (px) below which the Haar / YuNet detectors search an upsampled copy of the image.
SMALL_FACE = 48
#: The profile cascade fires more often on non-faces: it needs this many more raw hits than the frontal one.
PROFILE_STRICTER = 2
#: Two boxes overlapping more than this (IoU) are one face; the surer one is kept.
NMS_IOU = 0.3


@dataclass
class DetectorConfig:
    """How faces are detected (``detector.*`` in a dataset config, ``--detector-*`` in lrfer-predict): types
    only; the values are ``configs/detector/*.yaml``.

    ``model``: an ONNX file for OpenCV's YuNet (``cv2.FaceDetectorYN``); None = the Haar cascades shipped
    with OpenCV. ``min_face``: the smallest face height looked for, in px of the original image.
    ``scale_factor``, ``min_neighbors``: the Haar cascade's pyramid step and the raw hits a frontal face
    needs (a profile face needs :data:`PROFILE_STRICTER` more).
    ``profile``: also run the profile cascade (both directions). ``score_threshold``: YuNet's minimum face
    probability. ``margin``: the crop around a detected face grows by this fraction of the face box on every
    side (0.2: a square 1.4 times the box).
    """

    model: str | None = MISSING
    min_face: int = MISSING
    scale_factor: float = MISSING
    min_neighbors: int = MISSING
    profile: bool = MISSING
    score_threshold: float = MISSING
    margin: float = MISSING


@runtime_checkable
class FaceDetector(Protocol):
    """Anything that finds faces: ``detect`` takes an RGB uint8 (H, W, 3) array and returns ``boxes``, a
    float (N, 4) array of ``[left, top, width, height]`` in px of that image, and ``scores`` (N,), higher =
    surer, sorted best first."""

    def detect(self, image: np.ndarray) -> tuple[np.ndarray, np.ndarray]: ...


def import_cv2():
    """OpenCV, or the one-line :class:`UserError` that says how to install it."""
    try:
        import cv2
    except ImportError:
        raise UserError(
            "face detection needs OpenCV: pip install 'lrfer[faces]' (opencv-python-headless<5)"
        ) from None
    if not hasattr(cv2, "CascadeClassifier"):
        raise UserError(
            f"OpenCV {cv2.__version__} has no CascadeClassifier (OpenCV 5 dropped it): "
            "pip install 'opencv-python-headless<5'"
        )
    return cv2


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of every box of ``a`` (N, 4) with every box of ``b`` (M, 4), as ``[left, top, width, height]``."""
    a, b = np.asarray(a, np.float64).reshape(-1, 4), np.asarray(b, np.float64).reshape(-1, 4)
    left = np.maximum(a[:, None, 0], b[None, :, 0])
    top = np.maximum(a[:, None, 1], b[None, :, 1])
    right = np.minimum(a[:, None, 0] + a[:, None, 2], b[None, :, 0] + b[None, :, 2])
    bottom = np.minimum(a[:, None, 1] + a[:, None, 3], b[None, :, 1] + b[None, :, 3])
    inter = np.clip(right - left, 0, None) * np.clip(bottom - top, 0, None)
    union = (a[:, 2] * a[:, 3])[:, None] + (b[:, 2] * b[:, 3])[None, :] - inter
    return np.where(union > 0, inter / np.maximum(union, 1e-12), 0.0)


def suppress(boxes: np.ndarray, scores: np.ndarray, iou: float = NMS_IOU) -> tuple[np.ndarray, np.ndarray]:
    """Greedy non-maximum suppression: best first; a box overlapping a kept one by more than ``iou``, or
    lying mostly (> 70 %) inside it, is dropped."""
    boxes, scores = np.asarray(boxes, np.float64).reshape(-1, 4), np.asarray(scores, np.float64).reshape(-1)
    order = np.argsort(-scores, kind="stable")
    kept: list[int] = []
    for i in order:
        if kept:
            overlap = box_iou(boxes[i : i + 1], boxes[kept])[0]
            inside = _intersection(boxes[i], boxes[kept]) / max(boxes[i, 2] * boxes[i, 3], 1e-12)
            if (overlap > iou).any() or (inside > 0.7).any():
                continue
        kept.append(int(i))
    return boxes[kept], scores[kept]


def _intersection(box: np.ndarray, others: np.ndarray) -> np.ndarray:
    w = np.minimum(box[0] + box[2], others[:, 0] + others[:, 2]) - np.maximum(box[0], others[:, 0])
    h = np.minimum(box[1] + box[3], others[:, 1] + others[:, 3]) - np.maximum(box[1], others[:, 1])
    return np.clip(w, 0, None) * np.clip(h, 0, None)


def _upsampling(min_face: int) -> float:
    """The factor that makes a ``min_face`` px face :data:`SMALL_FACE` px tall (1 = no small-face pass)."""
    return max(1.0, SMALL_FACE / max(1, min_face))


class HaarDetector:
    """OpenCV's Haar cascades: frontal (alt2) and, optionally, profile in both directions.

    Two passes when ``min_face`` < :data:`SMALL_FACE`: faces of :data:`SMALL_FACE` px and more on the image
    itself, smaller ones on a copy upsampled by ``SMALL_FACE / min_face``. Both run on the histogram-
    equalised grey image. Frontal boxes win over overlapping profile boxes.
    """

    FRONTAL = "haarcascade_frontalface_alt2.xml"
    PROFILE = "haarcascade_profileface.xml"

    def __init__(self, min_face: int, scale_factor: float, min_neighbors: int, profile: bool) -> None:
        cv2 = import_cv2()
        if min_face < 8 or scale_factor <= 1.0 or min_neighbors < 0:
            raise UserError(
                f"detector: need min_face >= 8, scale_factor > 1 and min_neighbors >= 0, got {min_face}, "
                f"{scale_factor}, {min_neighbors}"
            )
        self.cv2 = cv2
        self.min_face, self.scale_factor, self.min_neighbors = (
            int(min_face),
            float(scale_factor),
            min_neighbors,
        )
        self.frontal = self._load(self.FRONTAL)
        self.profile = self._load(self.PROFILE) if profile else None

    def _load(self, name: str):
        path = Path(self.cv2.data.haarcascades) / name
        cascade = self.cv2.CascadeClassifier(str(path))
        if cascade.empty():
            raise UserError(
                f"detector: cannot load OpenCV's cascade {path}; reinstall opencv-python-headless"
            )
        return cascade

    def _run(self, cascade, grey, scale: float, lo: float, hi: float | None, mirror: bool, strict: int = 0):
        """Boxes (in px of the original image) of faces ``lo`` .. ``hi`` px tall found in ``grey`` / scale."""
        min_size = max(cascade.getOriginalWindowSize()[0], math.floor(lo * scale))
        max_size = (0, 0) if hi is None else (math.ceil(hi * scale),) * 2
        img = grey[:, ::-1].copy() if mirror else grey
        found, hits = cascade.detectMultiScale2(
            img,
            self.scale_factor,
            self.min_neighbors + strict,
            minSize=(min_size, min_size),
            maxSize=max_size,
        )
        boxes = np.asarray(found, np.float64).reshape(-1, 4)
        if mirror and len(boxes):
            boxes[:, 0] = img.shape[1] - boxes[:, 0] - boxes[:, 2]
        return boxes / scale, np.asarray(hits, np.float64).reshape(-1)

    def detect(self, image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        cv2 = self.cv2
        grey = cv2.equalizeHist(cv2.cvtColor(np.ascontiguousarray(image), cv2.COLOR_RGB2GRAY))
        up = _upsampling(self.min_face)
        passes = [(grey, 1.0, SMALL_FACE if up > 1 else self.min_face, None)]
        if up > 1:
            big = cv2.resize(grey, None, fx=up, fy=up, interpolation=cv2.INTER_LINEAR)
            passes.append((big, up, self.min_face, SMALL_FACE * 1.25))
        frontal = [self._run(self.frontal, g, s, lo, hi, False) for g, s, lo, hi in passes]
        boxes, scores = suppress(*_concat(frontal))
        if self.profile is not None:
            side = [
                self._run(self.profile, g, s, lo, hi, m, PROFILE_STRICTER)
                for g, s, lo, hi in passes
                for m in (False, True)
            ]
            pboxes, pscores = suppress(*_concat(side))
            if len(pboxes) and len(boxes):
                covered = box_iou(pboxes, boxes).max(axis=1) > NMS_IOU
                pboxes, pscores = pboxes[~covered], pscores[~covered]
            boxes, scores = np.concatenate([boxes, pboxes]), np.concatenate([scores, pscores])
        order = np.argsort(-scores, kind="stable")
        return boxes[order], scores[order]


def _concat(results: list[tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray]:
    return np.concatenate([b for b, _ in results]), np.concatenate([s for _, s in results])


class YuNetDetector:
    """OpenCV's YuNet face detector (``cv2.FaceDetectorYN``) from a user-supplied ONNX file.

    Images are upsampled by ``SMALL_FACE / min_face`` (at most to 4096 px on the long side) when
    ``min_face`` < :data:`SMALL_FACE`; YuNet then sees small faces at a size it was trained on.
    """

    def __init__(self, model: str | Path, min_face: int, score_threshold: float) -> None:
        cv2 = import_cv2()
        path = Path(model).expanduser()
        if not path.is_file():
            raise UserError(f"detector.model={model} is not a file: give YuNet's .onnx (cv2.FaceDetectorYN)")
        if not hasattr(cv2, "FaceDetectorYN"):
            raise UserError(
                f"OpenCV {cv2.__version__} has no FaceDetectorYN: "
                "pip install 'opencv-python-headless>=4.8,<5'"
            )
        try:
            self.net = cv2.FaceDetectorYN.create(
                str(path), "", (320, 320), float(score_threshold), NMS_IOU, 5000
            )
        except cv2.error as err:
            raise UserError(
                f"detector.model={model}: OpenCV cannot load it as YuNet ({str(err).strip()[:120]})"
            ) from None
        self.cv2, self.min_face = cv2, int(min_face)

    def detect(self, image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        cv2 = self.cv2
        h, w = image.shape[:2]
        up = min(_upsampling(self.min_face), max(1.0, 4096 / max(h, w)))
        bgr = cv2.cvtColor(np.ascontiguousarray(image), cv2.COLOR_RGB2BGR)
        if up > 1:
            bgr = cv2.resize(bgr, None, fx=up, fy=up, interpolation=cv2.INTER_LINEAR)
        self.net.setInputSize((bgr.shape[1], bgr.shape[0]))
        _, faces = self.net.detect(bgr)
        faces = np.zeros((0, 15)) if faces is None else np.asarray(faces, np.float64).reshape(-1, 15)
        boxes, scores = faces[:, :4] / up, faces[:, 14]
        keep = boxes[:, 3] >= self.min_face * 0.8
        boxes, scores = boxes[keep], scores[keep]
        order = np.argsort(-scores, kind="stable")
        return boxes[order], scores[order]


def build_detector(cfg: DetectorConfig | DictConfig) -> FaceDetector:
    """YuNet when ``cfg.model`` names an ONNX file, else the Haar cascades."""
    if cfg.model:
        return YuNetDetector(cfg.model, int(cfg.min_face), float(cfg.score_threshold))
    return HaarDetector(int(cfg.min_face), float(cfg.scale_factor), int(cfg.min_neighbors), bool(cfg.profile))


def crop_box(box: np.ndarray | tuple, margin: float, width: int, height: int) -> tuple[int, int, int, int]:
    """The square crop around a face box ``[left, top, width, height]``: side = max(w, h) * (1 + 2 margin),
    centred on the box, shifted to lie inside the ``width`` x ``height`` image where it fits (clipped where
    it does not). Returns (left, top, right, bottom) in px, PIL's crop order."""
    x, y, w, h = (float(v) for v in box)
    side = max(w, h) * (1 + 2 * margin)
    cx, cy = x + w / 2, y + h / 2
    left = min(max(cx - side / 2, 0.0), max(width - side, 0.0))
    top = min(max(cy - side / 2, 0.0), max(height - side, 0.0))
    right, bottom = min(left + side, width), min(top + side, height)
    return round(left), round(top), round(right), round(bottom)

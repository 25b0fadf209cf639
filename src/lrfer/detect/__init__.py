"""Face detection (OpenCV, the optional ``faces`` extra) and face tracking over video frames.

What is built on them (``lrfer-predict --detect`` on photos and videos) is in :mod:`lrfer.tools.photos` and
:mod:`lrfer.tools.video`; the dataset adapters use the detectors to crop faces at cache build.

OpenCV is imported only when a detector is built, so ``import lrfer.detect`` works without it.
"""

from lrfer.detect.detectors import (
    DetectorConfig,
    FaceDetector,
    HaarDetector,
    YuNetDetector,
    box_iou,
    build_detector,
    crop_box,
)

__all__ = [
    "DetectorConfig",
    "FaceDetector",
    "HaarDetector",
    "YuNetDetector",
    "box_iou",
    "build_detector",
    "crop_box",
]

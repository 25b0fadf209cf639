"""Face detection (OpenCV, the optional ``faces`` extra) and the photo workflow of ``lrfer-predict --detect``.

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

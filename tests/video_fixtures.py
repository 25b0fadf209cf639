"""Generated video clips with known face tracks, written with ``cv2.VideoWriter`` (tests/test_video.py).

:func:`write_clip` paints faces moving in straight lines across a soft background; each face is a patch
(a synthetic face from :mod:`lrfer.data.synthetic`, or the astronaut's real head from photo_fixtures for the
Haar detector) and the clip's ground truth is every face's box on every frame. :class:`ScriptedDetector`
stands in for a detector: it returns the true boxes of the frame it is given (plus any false boxes asked
for), so tracking is tested apart from the Haar cascade, which does not fire on cartoon faces.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from photo_fixtures import background

cv2 = __import__("pytest").importorskip("cv2")


@dataclass
class Mover:
    """A face patch (RGB uint8) whose face box (in the patch) is ``box``, moving from ``start`` to ``end``
    (top-left corner of the patch, px) between frames ``first`` and ``last``."""

    patch: np.ndarray
    box: tuple[float, float, float, float]
    start: tuple[float, float]
    end: tuple[float, float]
    first: int
    last: int

    def corner(self, frame: int) -> tuple[int, int]:
        a = (frame - self.first) / max(1, self.last - self.first)
        return round(self.start[0] + a * (self.end[0] - self.start[0])), round(
            self.start[1] + a * (self.end[1] - self.start[1])
        )


def synthetic_patch(side: int, label: int, seed: int) -> np.ndarray:
    """A synthetic face of class ``label`` (drawn until one of that class comes out), ``side`` px square."""
    from lrfer.data.synthetic import make_synthetic_faces

    images, labels = make_synthetic_faces(32, side, seed=seed)
    i = int((labels == label).nonzero()[0, 0])
    return images[i].permute(1, 2, 0).contiguous().numpy()  # uint8 RGB


def render(movers: list[Mover], frames: int, size=(160, 120)) -> tuple[list[np.ndarray], list[dict]]:
    """RGB frames and, per frame, {mover: face box [left, top, width, height]} of the faces fully in view."""
    width, height = size
    base = background(width, height)
    images, truth = [], []
    for f in range(frames):
        image, boxes = base.copy(), {}
        for m, mover in enumerate(movers):
            if not mover.first <= f <= mover.last:
                continue
            x, y = mover.corner(f)
            ph, pw = mover.patch.shape[:2]
            x0, y0, x1, y1 = max(0, x), max(0, y), min(width, x + pw), min(height, y + ph)
            if x1 <= x0 or y1 <= y0:
                continue
            image[y0:y1, x0:x1] = mover.patch[y0 - y : y1 - y, x0 - x : x1 - x]
            bx, by, bw, bh = mover.box
            if x + bx >= 0 and y + by >= 0 and x + bx + bw <= width and y + by + bh <= height:
                boxes[m] = np.array([x + bx, y + by, bw, bh], np.float64)
        images.append(image)
        truth.append(boxes)
    return images, truth


def write_clip(path: Path, images: list[np.ndarray], fps: float = 25.0, fourcc: str = "MJPG") -> Path:
    """Encode RGB frames with ``cv2.VideoWriter`` (MJPG in .avi: near-lossless and fast)."""
    h, w = images[0].shape[:2]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*fourcc), fps, (w, h))
    assert writer.isOpened(), path
    for image in images:
        writer.write(cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
    writer.release()
    return path


class ScriptedDetector:
    """Returns the true face boxes of each detection frame, in call order (frame 0, N, 2N, ...), plus
    ``false_boxes`` {frame: [box, ...]}; faces listed in ``hidden`` {frame: {mover, ...}} are missed."""

    def __init__(self, truth: list[dict], every: int, false_boxes=None, hidden=None) -> None:
        self.truth, self.every, self.calls = truth, every, 0
        self.false_boxes, self.hidden = false_boxes or {}, hidden or {}

    def detect(self, image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        frame = self.calls * self.every
        self.calls += 1
        boxes = [b for m, b in self.truth[frame].items() if m not in self.hidden.get(frame, set())]
        boxes += [np.asarray(b, np.float64) for b in self.false_boxes.get(frame, [])]
        boxes = np.array(boxes, np.float64).reshape(-1, 4)
        return boxes, np.ones(len(boxes))

"""Generated video clips with real faces, for scripts/bench_video.py and scripts/video_demo.py.

The face is scikit-image's ``astronaut`` photograph (shipped in its wheel: ``pip install scikit-image``, in
the ``dev`` extra): her head is pasted on a soft background and moves along a smooth path, so OpenCV's Haar
detector finds a real face. Nothing is downloaded.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from PIL import Image

#: (top, left, bottom, right) of the astronaut's face in skimage.data.astronaut() (marked by hand).
FACE = (70, 178, 170, 272)


def head(face_px: int, mirror: bool = False) -> np.ndarray:
    """The astronaut's head (with some hair, neck and wall) scaled so that her face is ``face_px`` tall."""
    from skimage import data

    photo = np.asarray(data.astronaut())[..., :3]
    top, left, bottom, right = FACE
    fh = bottom - top
    patch = photo[top - fh // 2 : bottom + 2 * fh // 5, left - fh // 2 : right + fh // 2]
    k = face_px / fh
    size = (round(patch.shape[1] * k), round(patch.shape[0] * k))
    patch = np.asarray(Image.fromarray(patch).resize(size, Image.Resampling.LANCZOS))
    return np.ascontiguousarray(patch[:, ::-1] if mirror else patch)


def background(width: int, height: int, seed: int = 0) -> np.ndarray:
    """A soft gradient with a few blurred blobs (a room's out-of-focus background)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width] / max(width, height)
    image = np.stack([140 + 50 * xx, 150 + 40 * yy, 165 - 30 * xx], axis=-1)
    for _ in range(6):
        cx, cy, r = rng.uniform(0, width), rng.uniform(0, height), rng.uniform(0.05, 0.2) * width
        blob = np.exp(-(((xx * max(width, height) - cx) ** 2 + (yy * max(width, height) - cy) ** 2) / r**2))
        image += blob[..., None] * rng.uniform(-40, 40, 3)
    return np.clip(image, 0, 255).astype(np.uint8)


#: One face crossing the frame (face height px, mirrored, start and end of its head's top-left corner as
#: fractions of the free width and height).
ONE_FACE = ((90, False, (0.2, 0.5), (0.8, 0.5)),)
#: Two faces passing each other, one along the top and one along the bottom.
TWO_FACES = ((64, False, (0.05, 0.05), (0.95, 0.1)), (56, True, (0.95, 0.95), (0.1, 0.9)))


def write_clip(
    path: Path,
    size: tuple[int, int] = (640, 360),
    frames: int = 150,
    fps: float = 25.0,
    faces: tuple = ONE_FACE,
) -> Path:
    """A clip of ``frames`` frames with one head per ``faces`` entry (face height px, mirrored, start, end),
    moving in a straight line and bobbing up and down a little. mp4v in .mp4, MJPG in .avi."""
    import cv2

    width, height = size
    base = background(width, height)
    heads = [(head(px, mirror), start, end) for px, mirror, start, end in faces]
    fourcc = "MJPG" if Path(path).suffix.lower() == ".avi" else "mp4v"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*fourcc), fps, (width, height))
    if not writer.isOpened():
        raise SystemExit(f"cannot write {path}")
    for f in range(frames):
        image = base.copy()
        a = f / max(1, frames - 1)
        for patch, (x0, y0), (x1, y1) in heads:
            ph, pw = patch.shape[:2]
            free_x, free_y = max(0, width - pw), max(0, height - ph)
            bob = 0.03 * height * math.sin(2 * math.pi * 2 * a)
            x = round((x0 + a * (x1 - x0)) * free_x)
            y = min(max(0, round((y0 + a * (y1 - y0)) * free_y + bob)), free_y)
            image[y : y + ph, x : x + pw] = patch
        writer.write(cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
    writer.release()
    return Path(path)

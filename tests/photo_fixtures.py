"""Real faces for the detector tests: scikit-image's ``astronaut.png`` (a photograph, shipped in its wheel).

:func:`group_photo` pastes the astronaut's head into a larger canvas at several sizes, so a test knows
where every face is and how tall. :data:`FACE` is the face in the 512x512 photograph, marked by hand
(forehead at the hairline to chin, cheek to cheek), not by a detector.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pytest
from PIL import Image

#: (top, left, bottom, right) of the astronaut's face in skimage.data.astronaut(): 100 px tall, 94 wide.
FACE = (70, 178, 170, 272)
#: How much of the photograph around the face a pasted head keeps, in face heights (hair, neck, wall).
CONTEXT = (0.5, 0.5, 0.4, 0.5)  # above, left, below, right


def astronaut() -> np.ndarray:
    data = pytest.importorskip("skimage.data")
    return np.asarray(data.astronaut())[..., :3]


def head(height: int, mirror: bool = False) -> tuple[np.ndarray, tuple[float, float, float, float]]:
    """The astronaut's head scaled so that her face is ``height`` px tall, and the face box in it
    (left, top, width, height)."""
    photo = astronaut()
    top, left, bottom, right = FACE
    fh = bottom - top
    above, lft, below, rgt = (round(c * fh) for c in CONTEXT)
    pt, pl, pb, pr = top - above, left - lft, bottom + below, right + rgt
    k = height / fh
    size = (round((pr - pl) * k), round((pb - pt) * k))
    patch = np.asarray(Image.fromarray(photo[pt:pb, pl:pr]).resize(size, Image.Resampling.LANCZOS))
    box = ((left - pl) * k, (top - pt) * k, (right - left) * k, fh * k)
    if mirror:
        patch = patch[:, ::-1]
        box = (size[0] - box[0] - box[2], *box[1:])
    return np.ascontiguousarray(patch), box


def background(width: int, height: int) -> np.ndarray:
    """A soft colour gradient (no structure a detector could take for a face)."""
    yy, xx = np.mgrid[0:height, 0:width]
    return np.stack([150 + 40 * xx / width, 160 + 30 * yy / height, 170 - 20 * xx / width], axis=-1).astype(
        np.uint8
    )


def group_photo(sizes: Sequence[int] = (24, 48, 96), gap: int = 30) -> tuple[np.ndarray, np.ndarray]:
    """A "group photo": the astronaut's head pasted side by side with faces ``sizes`` px tall on a plain
    background. Returns the RGB uint8 (H, W, 3) canvas and the face boxes (N, 4), [left, top, width,
    height]."""
    heads = [head(s) for s in sizes]
    width = gap + sum(p.shape[1] + gap for p, _ in heads)
    height = max(p.shape[0] for p, _ in heads) + 2 * gap
    canvas = background(width, height)
    boxes, x = [], gap
    for patch, (bx, by, bw, bh) in heads:
        y = (height - patch.shape[0]) // 2
        canvas[y : y + patch.shape[0], x : x + patch.shape[1]] = patch
        boxes.append((x + bx, y + by, bw, bh))
        x += patch.shape[1] + gap
    return canvas, np.array(boxes)


def portrait(face_height: int, centre: tuple[int, int], mirror: bool = False, size=(562, 762)):
    """A KDEF-sized portrait (562x762) with the astronaut's head at ``centre`` (face centre, x, y); returns
    the RGB array and the face box [left, top, width, height]."""
    image = background(*size)
    rng = np.random.default_rng(face_height)
    image = np.clip(image + rng.normal(0, 4, image.shape), 0, 255).astype(np.uint8)
    if not face_height:
        return image, None
    patch, (bx, by, bw, bh) = head(face_height, mirror)
    x0, y0 = round(centre[0] - bx - bw / 2), round(centre[1] - by - bh / 2)
    ph, pw = patch.shape[:2]
    image[y0 : y0 + ph, x0 : x0 + pw] = patch
    return image, np.array([x0 + bx, y0 + by, bw, bh])


#: (angle, face height, centre, mirrored) of the KDEF-layout pictures; "FR" holds the mirrored face (the
#: only real face shipped is frontal: profile views are not real profiles here).
KDEF_VIEWS = (("S", 250, (281, 330), False), ("HL", 220, (250, 360), True), ("FR", 200, (300, 340), True))


def write_kdef_photos(root, subjects=("F01", "M01"), expressions=("AF", "HA", "NE"), empty: int = 2):
    """``root/KDEF/<A><subject>/<stem>.JPG`` portraits of the real face, plus ``empty`` pictures with no face
    (named as KDEF names them, angle S, expression SU). Returns (dataset.root, {file name: face box or
    None})."""
    from pathlib import Path

    truth: dict = {}
    for subject in subjects:
        folder = Path(root) / "KDEF" / f"A{subject}"
        folder.mkdir(parents=True, exist_ok=True)
        for expr in expressions:
            for angle, height, centre, mirror in KDEF_VIEWS:
                image, box = portrait(height, centre, mirror)
                name = f"A{subject}{expr}{angle}.JPG"
                Image.fromarray(image).save(folder / name, quality=92)
                truth[name] = box
    for i in range(empty):
        folder = Path(root) / "KDEF" / f"A{subjects[i % len(subjects)]}"
        name = f"A{subjects[i % len(subjects)]}SUS.JPG" if i < len(subjects) else f"A{subjects[0]}DIS.JPG"
        Image.fromarray(portrait(0, (0, 0))[0]).save(folder / name, quality=92)
        truth[name] = None
    return Path(root), truth

"""Writers of tiny datasets in each dataset's official on-disk layout (see docs/datasets.md).

Every face is a grey checkerboard whose mean grey level encodes its class (``BASE + STEP * class``), drawn
inside its face box on a white background, so a test can tell from a decoded image which class (or, for
FERPlus, which CSV row) it came from and whether the face box was cropped.
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image

BASE, STEP = 20, 28
SPLIT_USAGE = {"train": "Training", "val": "PublicTest", "test": "PrivateTest"}
FERPLUS_HEADER = "Usage,Image name,neutral,happiness,surprise,sadness,anger,disgust,fear,contempt,unknown,NF"


def value_of(label: int) -> int:
    return BASE + STEP * label


def label_of(image: torch.Tensor) -> int:
    """The class a decoded (3, S, S) fixture face encodes."""
    return round((float(image.float().mean()) - BASE) / STEP)


def face_array(value: int, size: tuple[int, int], box: tuple[int, int, int, int] | None = None) -> np.ndarray:
    """(H, W) uint8: white, with a +-8 checkerboard around ``value`` inside (top, left, bottom, right)."""
    w, h = size
    top, left, bottom, right = box or (0, 0, h, w)
    arr = np.full((h, w), 255, np.uint8)
    yy, xx = np.mgrid[top:bottom, left:right]
    arr[top:bottom, left:right] = value + np.where((yy // 2 + xx // 2) % 2 == 0, 8, -8)
    return arr


def save_face(path: Path, label: int, size=(12, 12), box=None, grey: bool = False) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.fromarray(face_array(value_of(label), size, box))
    (image if grey else image.convert("RGB")).save(
        path, **({"quality": 95} if path.suffix.lower() in (".jpg", ".jpeg") else {})
    )
    return path


def write_lines(path: Path, lines: Sequence[str]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(f"{line}\n" for line in lines))
    return path


# -- RAF-DB --------
def rafdb_stems(counts: dict[str, Sequence[int]]):
    """(split, stem, class) for ``counts[split][class]`` faces, named as RAF-DB names them."""
    for split, per_class in counts.items():
        index = 0
        for label, n in enumerate(per_class):
            for _ in range(n):
                index += 1
                yield split, (f"train_{index:05d}" if split == "train" else f"test_{index:04d}"), label


def write_rafdb_basic(root: Path, counts: dict[str, Sequence[int]], size: int = 12) -> Path:
    """``root/basic/{EmoLabel/list_patition_label.txt, Image/aligned/}``; returns the dataset.root to pass."""
    base = root / "basic"
    lines = []
    for _, stem, label in rafdb_stems(counts):
        save_face(base / "Image" / "aligned" / f"{stem}_aligned.jpg", label, (size, size))
        lines.append(f"{stem}.jpg {label + 1}")
    write_lines(base / "EmoLabel" / "list_patition_label.txt", lines)
    return root


def write_rafdb_folders(root: Path, counts: dict[str, Sequence[int]], size: int = 12) -> Path:
    """``root/DATASET/{train,test}/<1..7>/`` and ``root/{train,test}_labels.csv`` (one face stored grey)."""
    rows: dict[str, list[str]] = {split: ["image,label"] for split in counts}
    for i, (split, stem, label) in enumerate(rafdb_stems(counts)):
        name = f"{stem}_aligned.jpg"
        save_face(root / "DATASET" / split / str(label + 1) / name, label, (size, size), grey=i == 0)
        rows[split].append(f"{name},{label + 1}")
    for split, lines in rows.items():
        write_lines(root / f"{split}_labels.csv", lines)
    return root


# -- FER2013 / FERPlus --------
def pixels_text(arr: np.ndarray) -> str:
    return " ".join(map(str, arr.flatten().tolist()))


def write_fer2013(root: Path, counts: dict[str, Sequence[int]], kaggle: bool = False) -> Path:
    """``root/fer2013.csv`` (or Kaggle's ``icml_face_data.csv``, leading-space column names)."""
    header = "emotion, Usage, pixels" if kaggle else "emotion,pixels,Usage"
    lines = [header]
    for split, per_class in counts.items():
        for label, n in enumerate(per_class):
            for _ in range(n):
                pix = pixels_text(face_array(value_of(label), (48, 48)))
                usage = SPLIT_USAGE[split]
                lines.append(f"{label},{usage},{pix}" if kaggle else f"{label},{pix},{usage}")
    write_lines(root / ("icml_face_data.csv" if kaggle else "fer2013.csv"), lines)
    return root


def ferplus_row_value(row: int) -> int:
    """Grey level of FERPlus fixture row ``row`` (so a decoded face tells its row)."""
    return 4 + 6 * row


def ferplus_row_of(image: torch.Tensor) -> int:
    return round((float(image.float().mean()) - 4) / 6)


def write_ferplus_csv(
    root: Path, rows: Sequence[tuple[str, str, Sequence[int]]], fer2013_dir: Path | None = None
):
    """``fer2013new.csv`` (rows = (split, image name, 10 votes)) and the row-paired ``fer2013.csv``.

    Row i's pixels are the uniform grey :func:`ferplus_row_value` (i); fer2013.csv goes to ``fer2013_dir``
    (default: ``root``). Returns root.
    """
    assert len(rows) <= 40
    votes_lines, pixel_lines = [FERPLUS_HEADER], ["emotion,pixels,Usage"]
    for i, (split, name, votes) in enumerate(rows):
        votes_lines.append(",".join([SPLIT_USAGE[split], name, *map(str, votes)]))
        pixel_lines.append(
            f"0,{pixels_text(np.full((48, 48), ferplus_row_value(i), np.uint8))},{SPLIT_USAGE[split]}"
        )
    write_lines(root / "fer2013new.csv", votes_lines)
    write_lines((fer2013_dir or root) / "fer2013.csv", pixel_lines)
    return root


def write_ferplus_folders(root: Path, rows: Sequence[tuple[str, str, Sequence[int]]]) -> Path:
    """``root/data/FER2013{Train,Valid,Test}/``: PNGs (grey :func:`ferplus_row_value` (i)) and label.csv."""
    folders = {"train": "FER2013Train", "val": "FER2013Valid", "test": "FER2013Test"}
    labels: dict[str, list[list[str]]] = {f: [] for f in folders.values()}
    for i, (split, name, votes) in enumerate(rows):
        folder = root / "data" / folders[split]
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.full((48, 48), ferplus_row_value(i), np.uint8)).save(folder / name)
        labels[folders[split]].append([name, "(0, 0, 48, 48)", *map(str, votes)])
    for folder, rows_ in labels.items():
        with open(root / "data" / folder / "label.csv", "w", newline="") as f:
            csv.writer(f).writerows(rows_)
    return root


# -- AffectNet --------
AFFECTNET_HEADER = (
    "subDirectory_filePath,face_x,face_y,face_width,face_height,facial_landmarks,expression,valence,arousal"
)
AFFECTNET_BOX = (4, 6, 14, 12)  # face_x, face_y, face_width, face_height inside a 24x30 picture


def write_affectnet(
    root: Path,
    codes: dict[str, Sequence[int]],
    val_header: bool = False,
    images_under: str = "Manually_Annotated_compressed",
) -> Path:
    """``Manually_Annotated_file_lists/{training,validation}.csv``, ``<under>/Manually_Annotated_Images``.

    ``codes[split]`` lists the expression code of every face (split train or val). Faces of codes >= 8 are
    drawn as class 0. Returns root.
    """
    images = root / images_under / "Manually_Annotated_Images"
    x, y, w, h = AFFECTNET_BOX
    landmarks = ";".join(["10.5"] * 136)
    exts = (".jpg", ".JPG", ".png")
    for split, file in (("train", "training.csv"), ("val", "validation.csv")):
        lines = [AFFECTNET_HEADER] if split == "train" or val_header else []
        for i, code in enumerate(codes[split]):
            rel = f"{i % 3 + 1}/{split}{i:04d}abc{exts[i % 3]}"
            save_face(images / rel, code if code < 8 else 0, (24, 30), (y, x, y + h, x + w))
            lines.append(f"{rel},{x},{y},{w},{h},{landmarks},{code},0.1,-0.2")
        write_lines(root / "Manually_Annotated_file_lists" / file, lines)
    return root


def write_affectnet_npy(root: Path, codes: dict[str, Sequence[int]]) -> Path:
    """AffectNet-8Labels: ``{train_set,val_set}/images/<id>.jpg`` + ``annotations/<id>_exp.npy``."""
    for split, folder in (("train", "train_set"), ("val", "val_set")):
        for i, code in enumerate(codes[split]):
            save_face(root / folder / "images" / f"{i}.jpg", code, (16, 16))
            (root / folder / "annotations").mkdir(parents=True, exist_ok=True)
            np.save(root / folder / "annotations" / f"{i}_exp.npy", np.array(str(code)))
            np.save(root / folder / "annotations" / f"{i}_val.npy", np.array("0.25"))
    return root


# -- KDEF --------
KDEF_EXPRESSIONS = ("AF", "AN", "DI", "HA", "NE", "SA", "SU")


def write_kdef(
    root: Path,
    subjects: Sequence[str] = ("F01", "F02", "M01", "M02"),
    angles: Sequence[str] = ("S", "HL"),
    size: tuple[int, int] = (28, 38),
) -> Path:
    """``root/KDEF_and_AKDEF/KDEF/<session><subject>/<stem>.JPG``, sessions A and B; returns dataset.root.

    Also writes a misnamed file ``AF01V.JPG`` in AF01 (skipped by the adapter).
    """
    kdef = root / "KDEF_and_AKDEF" / "KDEF"
    for session in "AB":
        for subject in subjects:
            folder = kdef / f"{session}{subject}"
            for label, expr in enumerate(KDEF_EXPRESSIONS):
                for angle in angles:
                    save_face(folder / f"{session}{subject}{expr}{angle}.JPG", label, size)
    save_face(kdef / f"A{subjects[0]}" / f"A{subjects[0]}V.JPG", 0, size)
    return root / "KDEF_and_AKDEF"


# -- ExpW --------
def write_expw(root: Path, photos: Sequence[Sequence[int]], duplicate: Sequence[int] = ()) -> Path:
    """``root/label/label.lst`` + ``root/image/origin/``: photo i holds one 10x10 face per label in
    ``photos[i]`` (side by side); the label lines of faces whose global index is in ``duplicate`` are written
    twice. Returns root."""
    lines = []
    index = 0
    for i, labels in enumerate(photos):
        width = 4 + 12 * len(labels)
        arr = np.full((16, width), 255, np.uint8)
        for j, label in enumerate(labels):
            top, left = 3, 3 + 12 * j
            box = (top, left, top + 10, left + 10)
            arr[top : top + 10, left : left + 10] = face_array(value_of(label), (10, 10))
            line = f"photo_{i}.jpg {j} {box[0]} {box[1]} {box[3]} {box[2]} 87.5 {label}"
            lines += [line] * (2 if index in duplicate else 1)
            index += 1
        path = root / "image" / "origin" / f"photo_{i}.jpg"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(arr).convert("RGB").save(path, quality=95)
    write_lines(root / "label" / "label.lst", lines)
    return root


def corrupt(path: Path, zero_bytes: bool = False) -> Path:
    """Overwrite an image with garbage (or truncate it to zero bytes)."""
    path.write_bytes(b"" if zero_bytes else b"\xff\xd8\xff\xe0 not really a JPEG" * 3)
    return path

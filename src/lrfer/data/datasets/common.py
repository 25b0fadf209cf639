"""Pieces every file-based dataset adapter shares: finding the layout, reading label files, checking label
codes and decoding faces into one uint8 array.

An adapter turns the dataset's label files into :class:`Face` records (where the image is, its class, an
optional crop box and soft target) per split, then calls :func:`build_face_data`, which decodes every face
with PIL (once: the result is cached), resizes it to ``dataset.image_size`` and stacks the splits. Every
error a user can cause ends as a one-line :class:`~lrfer.core.errors.UserError` naming the file (and line).
"""

from __future__ import annotations

import csv
import itertools
import logging
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from lrfer.core.errors import UserError
from lrfer.data.datasets.base import DatasetAdapter
from lrfer.data.faces import SPLITS, FaceData, FaceSplit, stratified_split
from lrfer.data.images import to_rgb8

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Box:
    """A crop box ``[top:bottom, left:right]``: pixels, or fractions of the image height/width."""

    top: float
    left: float
    bottom: float
    right: float
    relative: bool = False

    def pixels(self, width: int, height: int) -> tuple[int, int, int, int]:
        """(left, top, right, bottom) in pixels, clipped to the image (PIL's crop order)."""
        sx, sy = (width, height) if self.relative else (1, 1)
        left = min(max(round(self.left * sx), 0), width)
        top = min(max(round(self.top * sy), 0), height)
        right = min(max(round(self.right * sx), 0), width)
        bottom = min(max(round(self.bottom * sy), 0), height)
        return left, top, right, bottom


@dataclass
class Face:
    """One face to decode: an image file (or a function returning an H x W [x 3] uint8 array), its class
    index, an optional crop box and an optional soft target (a row of the split's ``targets``).

    ``where`` names it in error messages (default: the path).
    """

    source: Path | Callable[[], np.ndarray]
    label: int
    crop: Box | None = None
    target: Sequence[float] | None = None
    where: str = ""

    def describe(self) -> str:
        return self.where or str(self.source)


Faces = dict[str, list[Face]]


class CorruptImage(Exception):
    """An image file that is missing, empty or cannot be decoded."""


# -- layout --------
def find_path(root: Path, candidates: Sequence[str], kind: str = "any") -> Path | None:
    """The first of ``root / c`` that exists (``kind``: any, file or dir), or None."""
    for rel in candidates:
        path = root / rel
        ok = path.is_file() if kind == "file" else path.is_dir() if kind == "dir" else path.exists()
        if ok:
            return path
    return None


def missing(dataset: str, what: str, root: Path, layout: str) -> UserError:
    """The one-line error for a file or folder that is not where the dataset's layout puts it."""
    return UserError(
        f"{dataset}: {what} not found under dataset.root={root}; expected {layout} (see docs/datasets.md)"
    )


def find_set(root: Path, folders: Sequence[str], names: Sequence[str]) -> list[Path] | None:
    """``[root / folder / name for name in names]`` for the first of ``folders`` that holds every one of
    ``names`` as a file, or None."""
    for folder in folders:
        paths = [root / folder / name for name in names]
        if all(p.is_file() for p in paths):
            return paths
    return None


# -- label files --------
def read_rows(path: Path, delimiter: str | None = ",") -> Iterator[tuple[int, list[str]]]:
    """(line number, fields) of every non-blank line of a text table; ``delimiter=None`` splits on whitespace.

    Fields are stripped of surrounding spaces. An unreadable file is a :class:`UserError`.
    """
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            if delimiter is None:
                for lineno, line in enumerate(f, 1):
                    if line.strip():
                        yield lineno, line.split()
                return
            reader = csv.reader(f, delimiter=delimiter)
            for row in reader:
                if any(field.strip() for field in row):
                    yield reader.line_num, [field.strip() for field in row]
    except (OSError, UnicodeDecodeError, csv.Error) as err:
        raise UserError(f"cannot read {path}: {one_line(err)}") from None


def read_table(
    path: Path, columns: Sequence[str], *, header_required: bool = True
) -> Iterator[tuple[int, dict[str, str]]]:
    """(line number, {column: value}) of every row of a CSV file, by column name.

    The first line is a header when it names every one of ``columns`` (case and surrounding spaces ignored,
    in any order); otherwise, unless ``header_required``, the columns are taken in the given order and the
    first line is data.
    """
    rows = read_rows(path)
    first = next(rows, None)
    if first is None:
        return
    lineno, fields = first
    names = [f.lower() for f in fields]
    if all(c.lower() in names for c in columns):
        index = {c: names.index(c.lower()) for c in columns}
    elif header_required:
        raise UserError(f"{path}:{lineno}: expected a header line with the columns {','.join(columns)}")
    else:
        index = {c: i for i, c in enumerate(columns)}
        rows = itertools.chain([first], rows)
    width = max(index.values()) + 1
    for lineno, fields in rows:
        need_fields(fields, width, path, lineno, f"at least {width} comma-separated fields")
        yield lineno, {c: fields[i] for c, i in index.items()}


def labelled_rows(
    path: Path, columns: Sequence[str], table: LabelTable, label_column: str
) -> Iterator[tuple[int, dict[str, str], int]]:
    """(line number, {column: value}, class index) of every row of a CSV file (header line optional) whose
    ``label_column`` code ``table`` keeps; rows of dropped codes are left out."""
    for lineno, row in read_table(path, columns, header_required=False):
        label = table.lookup(row[label_column], f"{path}:{lineno}")
        if label is not None:
            yield lineno, row, label


def need_fields(row: Sequence[str], n: int, path: Path, lineno: int, expected: str) -> None:
    """A :class:`UserError` naming the line when it has fewer than ``n`` fields."""
    if len(row) < n:
        raise UserError(f"{path}:{lineno}: expected {expected}, got {','.join(row)!r}")


def to_number(text: str, path: Path, lineno: int, what: str, kind: type = int):
    """``kind(text)`` or a :class:`UserError` naming the file and line."""
    try:
        return kind(float(text)) if kind is int and "." in text else kind(text)
    except ValueError:
        raise UserError(f"{path}:{lineno}: {what} {text!r} is not a number") from None


class LabelTable:
    """A dataset's label codes: each maps to a class index, or to None (a known code that is dropped).

    :meth:`lookup` turns a raw code into a class index (None = drop the sample); any other value is a
    :class:`UserError` naming the file and line.
    """

    def __init__(self, codes: Mapping[int, int | None], description: str) -> None:
        self.codes = dict(codes)
        self.description = description

    @classmethod
    def consecutive(cls, first: int, class_names: Sequence[str], dropped: Sequence[int] = ()) -> LabelTable:
        """Codes ``first .. first+len-1`` for the classes in order, plus ``dropped`` codes mapped to None."""
        codes: dict[int, int | None] = {first + i: i for i in range(len(class_names))}
        codes.update({c: None for c in dropped})
        desc = ", ".join(f"{first + i}={n}" for i, n in enumerate(class_names))
        if dropped:
            desc += f"; dropped: {', '.join(map(str, dropped))}"
        return cls(codes, desc)

    def lookup(self, raw: object, where: str) -> int | None:
        try:
            code = int(str(raw).strip())
        except ValueError:
            code = None
        if code is None or code not in self.codes:
            raise UserError(f"{where}: label {raw!r} is not in the label table ({self.description})")
        return self.codes[code]


def check_choice(value: object, choices: Sequence[str], key: str) -> str:
    if value not in choices:
        raise UserError(f"{key}={value!r} is not valid: choose one of {', '.join(choices)}")
    return str(value)


def one_line(err: BaseException | str) -> str:
    text = str(err).strip() or type(err).__name__
    return " ".join(text.split())


# -- decoding --------
def to_face_array(image: Image.Image, size: int, crop: Box | None = None) -> np.ndarray:
    """RGB (3, size, size) uint8 from a PIL image: crop (clipped to the image), then bicubic resize."""
    if crop is not None:
        box = crop.pixels(*image.size)
        if box[2] <= box[0] or box[3] <= box[1]:
            raise CorruptImage(
                f"the face box {crop} is empty inside the {image.size[0]}x{image.size[1]} image"
            )
        image = image.crop(box)
    image = to_rgb8(image)  # 16-bit grey scaled to 8 bits, not clipped to white
    if image.size != (size, size):
        image = image.resize((size, size), Image.Resampling.BICUBIC)
    return np.asarray(image, dtype=np.uint8).transpose(2, 0, 1)


def decode_image(path: Path | str, size: int, crop: Box | None = None) -> np.ndarray:
    """Read an image file into an RGB (3, size, size) uint8 array (grey images become 3 equal channels).

    A missing, empty or undecodable file raises :class:`CorruptImage`.
    """
    path = Path(path)
    try:
        if path.stat().st_size == 0:
            raise CorruptImage("the file is empty (0 bytes)")
        with Image.open(path) as image:
            image.load()
            return to_face_array(image, size, crop)
    except FileNotFoundError:
        raise CorruptImage("the file does not exist") from None
    except CorruptImage:
        raise
    except Exception as err:  # PIL raises many types for broken files (OSError, SyntaxError, ValueError, ...)
        raise CorruptImage(one_line(err)) from None


def decode_array(array: np.ndarray, size: int, crop: Box | None = None) -> np.ndarray:
    """An H x W (grey) or H x W x 3 uint8 array -> RGB (3, size, size) uint8."""
    return to_face_array(Image.fromarray(np.ascontiguousarray(array, dtype=np.uint8)), size, crop)


def decode_faces(
    faces: Sequence[Face],
    size: int,
    *,
    skip_corrupt: bool,
    desc: str,
    keep: Callable[[np.ndarray], bool] | None = None,
) -> tuple[FaceSplit, list[str], list[str]]:
    """Decode ``faces`` into one split; returns (split, skipped corrupt, rejected by ``keep``).

    A corrupt face raises a :class:`UserError` naming it unless ``skip_corrupt``.
    """
    images = np.empty((len(faces), 3, size, size), dtype=np.uint8)
    kept: list[int] = []
    skipped: list[str] = []
    rejected: list[str] = []
    for i, face in enumerate(tqdm(faces, desc=desc, unit="img", disable=not sys.stderr.isatty())):
        try:
            if isinstance(face.source, Path):
                array = decode_image(face.source, size, face.crop)
            else:
                array = decode_array(face.source(), size, face.crop)
        except CorruptImage as err:
            if not skip_corrupt:
                raise UserError(
                    f"cannot read image {face.describe()}: {err}; fix or delete it, or pass "
                    "dataset.skip_corrupt=true to skip unreadable images"
                ) from None
            skipped.append(face.describe())
            continue
        if keep is not None and not keep(array):
            rejected.append(face.describe())
            continue
        images[len(kept)] = array
        kept.append(i)
    labels = torch.tensor([faces[i].label for i in kept], dtype=torch.int64)
    targets = None
    if faces and faces[0].target is not None:
        targets = torch.tensor(
            np.array([faces[i].target for i in kept], dtype=np.float32).reshape(len(kept), -1)
        )
    return FaceSplit(torch.from_numpy(images[: len(kept)]), labels, targets), skipped, rejected


def build_face_data(
    name: str,
    class_names: Sequence[str],
    split_faces: Mapping[str, Sequence[Face]],
    cfg,
    info: dict | None = None,
    keep: Callable[[np.ndarray], bool] | None = None,
    rejected_as: str = "rejected",
) -> FaceData:
    """Decode every split's faces at ``cfg.image_size`` and return the dataset.

    ``info`` gains ``skipped_corrupt`` (count, with the first few file names) and, with ``keep``, the count
    of decoded faces it rejected under ``rejected_as``.
    """
    size = int(cfg.image_size)
    if size <= 0:
        raise UserError(f"dataset.image_size must be positive, got {size}")
    info = dict(info or {})
    splits: dict[str, FaceSplit] = {}
    skipped: list[str] = []
    rejected: list[str] = []
    for split in SPLITS:
        if split not in split_faces:
            continue
        data, bad, odd = decode_faces(
            split_faces[split], size, skip_corrupt=bool(cfg.skip_corrupt), desc=f"{name} {split}", keep=keep
        )
        splits[split] = data
        skipped += bad
        rejected += odd
    if skipped:
        log.warning("%s: skipped %d unreadable images (e.g. %s)", name, len(skipped), ", ".join(skipped[:3]))
    if keep is not None:
        info[rejected_as] = len(rejected)
        if rejected:
            log.warning("%s: skipped %d %s (e.g. %s)", name, len(rejected), rejected_as, rejected[0])
    info["skipped_corrupt"] = len(skipped)
    info["skipped_corrupt_files"] = skipped[:20]
    return FaceData(name, list(class_names), splits, info)


def stratified_holdout(labels: Sequence[int], fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """Indices (keep, held out) with ``fraction`` of every class held out, reproducible from ``seed``."""
    if not 0.0 < fraction < 1.0:
        raise UserError(f"the held-out fraction must be between 0 and 1, got {fraction}")
    keep, held = stratified_split(torch.tensor(list(labels), dtype=torch.int64), fraction, seed)
    return keep.tolist(), held.tolist()


class FileDataset(DatasetAdapter):
    """An adapter over a dataset's distributed files.

    Subclasses implement :meth:`layout` (which accepted layout ``dataset.root`` holds, and its label files)
    and :meth:`faces` (the :class:`Face` records of every split); :meth:`load` decodes them.
    """

    #: Info key counting decoded faces that :meth:`keep` rejects ("" = keep every face).
    rejected_as: ClassVar[str] = ""
    #: The accepted layouts, as the error for a file or folder that is not found names them.
    layout_help: ClassVar[str] = ""

    def layout(self) -> tuple[str, list[Path]]:
        """(layout name, its label files), or a :class:`UserError` naming what is missing."""
        raise NotImplementedError

    def faces(self, layout: str, files: list[Path]) -> tuple[Faces, dict]:
        """The faces of each split (no ``val`` when the dataset has none) and info for the manifest."""
        raise NotImplementedError

    def missing(self, what: str) -> UserError:
        """The one-line error for ``what`` (a file or folder) not found under ``dataset.root``."""
        return missing(self.name, what, self.root(), self.layout_help)

    def find(self, candidates: Sequence[str], what: str, kind: str = "file") -> Path:
        """The first of ``candidates`` (paths under ``dataset.root``) that exists, or :meth:`missing`."""
        path = find_path(self.root(), candidates, kind)
        if path is None:
            raise self.missing(what)
        return path

    def folder(self, path: Path, what: str) -> Path:
        """``path`` when it is a folder, else :meth:`missing` naming ``what``."""
        if not path.is_dir():
            raise self.missing(what)
        return path

    def names(self) -> list[str]:
        """The class names, in the order of the class indices: ``dataset.class_names``, their one place."""
        return list(self.cfg.class_names)

    def keep(self, face: np.ndarray) -> bool:
        return True

    def source_files(self) -> list[Path]:
        return self.layout()[1]

    def load(self) -> FaceData:
        layout, files = self.layout()
        faces, info = self.faces(layout, files)
        return build_face_data(
            self.name,
            self.names(),
            faces,
            self.cfg,
            {"layout": layout, **info},
            keep=self.keep if self.rejected_as else None,
            rejected_as=self.rejected_as,
        )

"""FERPlus (8 classes): FER2013's faces relabelled by 10 annotators each.

Two layouts (``dataset.root`` = the FERPlus checkout):

- ``fer2013new.csv`` (header ``Usage,Image name,neutral,...,contempt,unknown,NF``, vote counts) with the
  original ``fer2013.csv`` next to it, in ``fer2013/``, or wherever ``dataset.fer2013_csv`` points. The two
  files pair **row by row**: the image name is never used (names are shifted from row 59 on and four occur
  twice). Rows with an empty image name (not faces) are dropped.
- the per-split folders made by the FERPlus scripts, ``[data/]FER2013{Train,Valid,Test}/`` with PNGs and a
  header-less ``label.csv`` (``name,"(left, top, right, bottom)",<10 votes>``).

Labels follow the official FERPlus code (``dataset.label_mode``, train split only; val and test always
use majority): every vote count <= 1 is zeroed first, then

- ``majority``: the top emotion if it holds more than half of the remaining votes, else unknown;
- ``probability`` / ``crossentropy``: the top emotions (ties together) until 75% of the votes, at most 3, as a
  distribution (unknown when they hold <= 50%); both become the soft target (the expected loss of the
  paper's per-epoch sampling in ``probability`` mode is this cross-entropy);
- ``multi_target``: every emotion with >= 30% of the votes, equally weighted (unknown when they hold <= 50%).

Samples whose result is unknown or not-a-face are dropped. Soft targets go to ``FaceSplit.targets``
(rows sum to 1), ``labels`` are their argmax.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from omegaconf import MISSING

from lrfer.config.schema import DatasetConfig
from lrfer.core.errors import UserError
from lrfer.data.datasets.common import (
    Box,
    Face,
    Faces,
    FileDataset,
    check_choice,
    find_path,
    missing,
    need_fields,
    read_rows,
    read_table,
    to_number,
)
from lrfer.data.datasets.fer2013 import USAGE_SPLITS, find_fer2013_csv, read_fer2013

#: The vote columns after the emotions' (which are named as the classes, ``dataset.class_names``).
NOT_EMOTIONS = ("unknown", "NF")
LABEL_MODES = ("majority", "probability", "crossentropy", "multi_target")
FOLDERS = {"train": "FER2013Train", "val": "FER2013Valid", "test": "FER2013Test"}
LAYOUT = (
    "fer2013new.csv plus fer2013.csv (or dataset.fer2013_csv=<path>), or the folders "
    "[data/]FER2013Train, FER2013Valid, FER2013Test each with label.csv and PNGs"
)


@dataclass
class FerPlusConfig(DatasetConfig):
    """``label_mode`` builds the train labels (see the module doc); ``fer2013_csv`` overrides where the
    pixels CSV is looked for."""

    label_mode: str = MISSING
    fer2013_csv: str | None = MISSING


def process_votes(votes: Sequence[float], mode: str) -> list[float] | None:
    """The official FERPlus label processing of 10 vote counts (8 emotions, unknown, NF).

    Returns the 8-emotion target (sums to 1) or None when the result is unknown or not a face.
    """
    emotions = len(votes) - len(NOT_EMOTIONS)
    raw = [0.0 if v <= 1 else float(v) for v in votes]  # outlier removal: single votes are noise
    total = sum(raw)
    size = len(raw)
    emotion = [0.0] * size
    if mode == "majority":
        peak = max(raw)
        if peak <= 0.5 * total:
            return None
        emotion[raw.index(peak)] = peak
    elif mode in ("probability", "crossentropy"):
        part, count, valid = 0.0, 0, True
        while part < 0.75 * total and count < 3 and valid:
            peak = max(raw)
            for i in range(size):
                if raw[i] != peak:
                    continue
                emotion[i], raw[i] = peak, 0.0
                part += peak
                count += 1
                if i >= emotions:  # unknown or not-a-face ties with the current top emotions
                    valid = False
                    if sum(emotion) > peak:  # emotions came before it: keep them, drop unknown / NF
                        emotion[i] = 0.0
                        count -= 1
                    break
        if sum(emotion) <= 0.5 * total or count > 3:
            return None
    elif mode == "multi_target":
        emotion = [v if v >= 0.3 * total else 0.0 for v in raw]
        if sum(emotion) <= 0.5 * total:
            return None
        emotion = [1.0 if v > 0 else 0.0 for v in emotion]  # every selected emotion counts the same
    else:
        raise ValueError(f"unknown FERPlus label mode {mode!r}")
    if emotion.index(max(emotion)) >= emotions:
        return None
    kept = emotion[:emotions]
    return [v / sum(kept) for v in kept]


Voted = dict[str, list[tuple[Face, list[float]]]]


class FerPlus(FileDataset):
    """FERPlus: train / val / test = FER2013 Training / PublicTest / PrivateTest, relabelled by votes."""

    name = "ferplus"

    def vote_columns(self) -> tuple[str, ...]:
        """fer2013new.csv's vote columns: one per class, named as the class (``dataset.class_names``), then
        unknown and NF."""
        return (*self.cfg.class_names, *NOT_EMOTIONS)

    def layout(self) -> tuple[str, list[Path]]:
        """("csv", [fer2013new.csv, fer2013.csv]) or ("folders", [the three label.csv])."""
        root = self.root()
        votes = find_path(root, ("fer2013new.csv",), "file")
        if votes is not None:
            pixels = Path(str(self.cfg.fer2013_csv)).expanduser() if self.cfg.fer2013_csv else None
            if pixels is not None and not pixels.is_file():
                raise UserError(f"ferplus: dataset.fer2013_csv={pixels} does not exist")
            pixels = pixels or find_fer2013_csv(root)
            if pixels is not None:
                return "csv", [votes, pixels]
        for parent in (".", "data"):
            labels = [root / parent / folder / "label.csv" for folder in FOLDERS.values()]
            if all(p.is_file() for p in labels):
                return "folders", labels
        what = "fer2013.csv (needed with fer2013new.csv)" if votes is not None else "fer2013new.csv"
        raise missing(self.name, what, root, LAYOUT)

    def faces(self, layout: str, files: list[Path]) -> tuple[Faces, dict]:
        mode = check_choice(self.cfg.label_mode, LABEL_MODES, "dataset.label_mode")
        voted, no_name = self._csv(*files) if layout == "csv" else (self._folders(files), 0)
        faces: Faces = {}
        dropped = {}
        for split, rows in voted.items():
            split_mode = mode if split == "train" else "majority"
            faces[split] = []
            for face, votes in rows:
                target = process_votes(votes, split_mode)
                if target is None:
                    continue
                face.label = target.index(max(target))
                face.target = target if split_mode != "majority" else None
                faces[split].append(face)
            dropped[split] = len(rows) - len(faces[split])
        info = {"label_mode": mode, "dropped_unknown_or_nf": dropped, "dropped_empty_name": no_name}
        return faces, info

    def _votes(self, fields: Sequence[str], path: Path, lineno: int) -> list[float]:
        votes = [to_number(v, path, lineno, "vote count", float) for v in fields]
        if any(v < 0 for v in votes):
            raise UserError(f"{path}:{lineno}: vote counts must not be negative, got {','.join(fields)}")
        return votes

    def _csv(self, votes_csv: Path, pixels_csv: Path) -> tuple[Voted, int]:
        """Faces and votes per split from the row-paired CSVs, and how many rows had no image name."""
        pixel_rows = read_fer2013(pixels_csv)
        columns = self.vote_columns()
        vote_rows = list(read_table(votes_csv, ("Usage", "Image name", *columns)))
        if len(vote_rows) != len(pixel_rows):
            raise UserError(
                f"ferplus: {votes_csv} has {len(vote_rows)} rows but {pixels_csv} has {len(pixel_rows)}: "
                "they must be the matching FERPlus and FER2013 files (35,887 rows each)"
            )
        voted: Voted = {"train": [], "val": [], "test": []}
        no_name = 0
        for (lineno, row), pix in zip(vote_rows, pixel_rows):
            if USAGE_SPLITS.get(row["Usage"].lower()) != pix.split:
                raise UserError(
                    f"ferplus: {votes_csv}:{lineno} is {row['Usage']} but the same row of {pixels_csv} "
                    f"(line {pix.lineno}) is in {pix.split}: the files do not pair row by row"
                )
            if row["Image name"] == "":
                no_name += 1
                continue
            votes = self._votes([row[c] for c in columns], votes_csv, lineno)
            face = Face(pix.pixels, -1, where=f"{pixels_csv}:{pix.lineno} ({votes_csv}:{lineno})")
            voted[pix.split].append((face, votes))
        return voted, no_name

    def _folders(self, label_files: list[Path]) -> Voted:
        voted: Voted = {}
        for split, path in zip(FOLDERS, label_files):
            voted[split] = []
            for lineno, row in read_rows(path):
                need_fields(row, 12, path, lineno, "'name,\"(left, top, right, bottom)\",<10 vote counts>'")
                box = [to_number(v, path, lineno, "face box value") for v in row[1].strip("()[] ").split(",")]
                if len(box) != 4:
                    raise UserError(
                        f"{path}:{lineno}: expected a face box (left, top, right, bottom), got {row[1]}"
                    )
                left, top, right, bottom = box
                face = Face(path.parent / row[0], -1, crop=Box(top, left, bottom, right))
                voted[split].append((face, self._votes(row[2:12], path, lineno)))
        return voted

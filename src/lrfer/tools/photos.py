"""Faces in the wild: detect every face of a photo, crop it, classify it with a trained run, draw the result.

Used by ``lrfer-predict RUN photo.jpg --detect [--annotate DIR]``. Each face is cropped from the photo at its
real pixel size (a square ``margin`` wider than the detector's box), then resized once (MATLAB bicubic, the
run's ``degrade.resize_kernel``) to the network input, exactly as a low-resolution face is resized back in
training. So DRGFER's resolution-recognition network sees a 24 px face as a 24 px face and routes it by its
real resolution; methods that take a factor get ``native side / crop side``, as ``lrfer-predict`` gives
them for face crops.

One CSV row per face: ``path, face, left, top, width, height`` (the detector's box, px of the photo),
``face_px`` (its height), ``score`` (the detector's), ``crop_px`` (side of the crop classified), ``factor``,
``prediction``, ``confidence`` and ``p_<class>`` per class. A photo that cannot be read, is too large or
holds no face gets one line on stderr, and the other photos go on.
"""

from __future__ import annotations

import argparse
import csv
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from omegaconf import OmegaConf
from PIL import Image, ImageDraw, ImageFont

from lrfer.config.tree import CONFIG_DIR
from lrfer.core.errors import UserError, make_output_folder, writing
from lrfer.data.degrade import resize_to
from lrfer.data.images import upright_rgb8
from lrfer.detect.detectors import DetectorConfig, FaceDetector, build_detector, crop_box

log = logging.getLogger(__name__)

#: Default largest photo, in pixels (50 MP); larger ones are skipped with a line saying so.
MAX_PIXELS = 50_000_000
#: Box colours, one per class (matplotlib's tab10).
PALETTE = [
    (31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189),
    (140, 86, 75), (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207),
]  # fmt: skip


class PhotoError(Exception):
    """A photo that is skipped (unreadable, too large); the message says why."""


@dataclass
class FaceClassifier:
    """A trained run's method with what it needs to classify face crops of any size."""

    method: torch.nn.Module
    class_names: list[str]
    input_size: int
    native_size: int
    resize_kernel: str
    mean: Sequence[float]
    std: Sequence[float]
    device: torch.device

    @torch.inference_mode()
    def classify(
        self, crops: Sequence[torch.Tensor], batch_size: int = 128
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Class probabilities (N, K) and factors (N,) of uint8 (3, h, w) crops at their real sizes."""
        mean = torch.tensor(list(self.mean), device=self.device).view(1, -1, 1, 1)
        std = torch.tensor(list(self.std), device=self.device).view(1, -1, 1, 1)
        probs, factors = [], []
        for start in range(0, len(crops), batch_size):
            chunk = crops[start : start + batch_size]
            images = torch.cat(
                [
                    resize_to(c.float()[None].to(self.device) / 255.0, self.input_size, self.resize_kernel)
                    for c in chunk
                ]
            ).clamp(0, 1)
            sides = torch.tensor([min(c.shape[-2:]) for c in chunk], dtype=torch.float32, device=self.device)
            factor = (self.native_size / sides).clamp(min=1.0)
            logits = self.method.predict((images - mean) / std, factor=factor)
            probs.append(logits.float().softmax(dim=1).cpu())
            factors.append(factor.cpu())
        k = len(self.class_names)
        if not probs:
            return torch.zeros(0, k), torch.zeros(0)
        return torch.cat(probs), torch.cat(factors)


def read_photo(path: Path, max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """RGB uint8 (H, W, 3) as shown: :func:`lrfer.data.images.upright_rgb8` (EXIF orientation, 16-bit scaled).

    A :class:`PhotoError` says why a file cannot be used.
    """
    try:
        with Image.open(path) as im:
            w, h = im.size
            if w * h > max_pixels:
                raise PhotoError(
                    f"{w}x{h} = {w * h / 1e6:.0f} MP is more than --max-pixels={max_pixels}; "
                    "downscale it (faces stay findable down to ~20 px) or raise --max-pixels"
                )
            return np.asarray(upright_rgb8(im)).copy()
    except PhotoError:
        raise
    except (Image.DecompressionBombError, OSError, SyntaxError, ValueError) as err:
        raise PhotoError(f"cannot read image: {' '.join(str(err).split()) or type(err).__name__}") from None


def face_crops(photo: np.ndarray, boxes: np.ndarray, margin: float) -> tuple[list[torch.Tensor], list[int]]:
    """uint8 (3, h, w) crops of every face (square, ``margin`` around the box) and their sides."""
    h, w = photo.shape[:2]
    crops, sides = [], []
    for box in boxes:
        left, top, right, bottom = crop_box(box, margin, w, h)
        crop = torch.from_numpy(np.ascontiguousarray(photo[top:bottom, left:right])).permute(2, 0, 1)
        crops.append(crop)
        sides.append(min(right - left, bottom - top))
    return crops, sides


def _font(size: int):
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1: one bitmap size
        return ImageFont.load_default()


def annotate(photo: np.ndarray, rows: Sequence[dict], class_names: Sequence[str]) -> Image.Image:
    """A copy of the photo with every face's box, number, label and confidence drawn on it.

    Boxes are drawn first, then each label in the first place next to its box (above, below, right, left)
    where it covers no other label or box; where every place is taken, above the box.
    """
    image = Image.fromarray(photo).convert("RGB")
    draw = ImageDraw.Draw(image)
    h, w = photo.shape[:2]
    font = _font(max(11, round(min(h, w) / 45)))
    width = max(2, round(min(h, w) / 300))
    boxes = [(r["left"], r["top"], r["left"] + r["width"], r["top"] + r["height"]) for r in rows]
    colours = [PALETTE[list(class_names).index(r["prediction"]) % len(PALETTE)] for r in rows]
    for box, colour in zip(boxes, colours):
        draw.rectangle(box, outline=colour, width=width)
    taken: list[tuple[int, int, int, int]] = list(boxes)
    for i, (row, (x, y, right, bottom), colour) in enumerate(zip(rows, boxes, colours)):
        text = f"{row['face']}: {row['prediction']} {row['confidence']:.2f}"
        x0, y0, x1, y1 = draw.textbbox((0, 0), text, font=font)
        tw, th = x1 - x0 + 6, y1 - y0 + 6
        places = [(x, y - th), (x, bottom), (right + 2, y), (x - tw - 2, y)]
        places = [(min(max(0, px), max(0, w - tw)), min(max(0, py), max(0, h - th))) for px, py in places]
        others = [t for j, t in enumerate(taken) if j != i]
        tx, ty = next((p for p in places if not any(_overlap(p, tw, th, t) for t in others)), places[0])
        taken.append((tx, ty, tx + tw, ty + th))
        draw.rectangle([tx, ty, tx + tw, ty + th], fill=colour)
        draw.text((tx + 3 - x0, ty + 3 - y0), text, fill=(255, 255, 255), font=font)
    return image


def _overlap(place: tuple[int, int], tw: int, th: int, rect: tuple[int, int, int, int]) -> bool:
    x, y = place
    return x < rect[2] and rect[0] < x + tw and y < rect[3] and rect[1] < y + th


def annotation_path(out_dir: Path, photo: Path, taken: set[Path]) -> Path:
    """``<out_dir>/<stem>_faces.png``, numbered when two inputs share a stem."""
    path, n = out_dir / f"{photo.stem}_faces.png", 1
    while path in taken or path.resolve() == photo.resolve():
        path, n = out_dir / f"{photo.stem}_faces_{n}.png", n + 1
    taken.add(path)
    return path


@dataclass
class PhotoReport:
    rows: list[dict]
    photos: int = 0
    without_face: int = 0
    skipped: int = 0
    annotated: int = 0


def classify_photos(
    paths: Sequence[Path],
    detector: FaceDetector,
    classifier: FaceClassifier,
    *,
    margin: float,
    max_pixels: int = MAX_PIXELS,
    annotate_dir: Path | None = None,
    batch_size: int = 128,
    say=None,
) -> PhotoReport:
    """Detect, crop and classify every face of every photo; one row per face.

    ``say`` receives one line per photo that is skipped or holds no face (default: a logged warning).
    """
    say = say or log.warning
    names = classifier.class_names
    report = PhotoReport(rows=[])
    taken: set[Path] = set()
    if annotate_dir is not None:
        make_output_folder(annotate_dir)
    for path in paths:
        try:
            photo = read_photo(path, max_pixels)
        except PhotoError as err:
            say(f"{path}: {err}; skipped")
            report.skipped += 1
            continue
        report.photos += 1
        boxes, scores = detector.detect(photo)
        order = np.lexsort((boxes[:, 1], boxes[:, 0])) if len(boxes) else np.zeros(0, int)
        boxes, scores = boxes[order], scores[order]  # faces numbered left to right
        crops, sides = face_crops(photo, boxes, margin)
        probs, factors = classifier.classify(crops, batch_size)
        rows = []
        for i, (box, score, side, p, f) in enumerate(zip(boxes, scores, sides, probs, factors)):
            x, y, w, h = (round(float(v)) for v in box)
            row = {
                "path": str(path), "face": i, "left": x, "top": y, "width": w, "height": h,
                "face_px": h, "score": round(float(score), 3), "crop_px": side,
                "factor": round(float(f), 3), "prediction": names[int(p.argmax())],
                "confidence": round(float(p.max()), 4),
            }  # fmt: skip
            row.update({f"p_{n}": round(float(v), 4) for n, v in zip(names, p)})
            rows.append(row)
        if not rows:
            report.without_face += 1
            say(f"{path}: no face found ({photo.shape[1]}x{photo.shape[0]} px)")
        if annotate_dir is not None:
            drawn = annotation_path(annotate_dir, path, taken)
            with writing(drawn):
                annotate(photo, rows, names).save(drawn)
            report.annotated += 1
        report.rows += rows
    return report


def write_rows(rows: Sequence[dict], out: Path, class_names: Sequence[str]) -> None:
    """The per-face CSV (a header only when no face was found)."""
    fields = ["path", "face", "left", "top", "width", "height", "face_px", "score", "crop_px", "factor",
              "prediction", "confidence", *(f"p_{n}" for n in class_names)]  # fmt: skip
    with writing(out):
        out.parent.mkdir(parents=True, exist_ok=True)
        with out.open("w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=fields)
            writer.writeheader()
            writer.writerows(rows)


# -- lrfer-predict --detect --------
#: The face detector settings lrfer-predict starts from (photos, videos): the one source of their defaults.
DETECTOR_CONFIG = CONFIG_DIR / "detector" / "default.yaml"


def detector_config(**values) -> DetectorConfig:
    """:data:`DETECTOR_CONFIG`, typed (:class:`DetectorConfig`), with ``values`` (the command line's) in place
    of its own."""
    cfg = OmegaConf.merge(OmegaConf.structured(DetectorConfig), OmegaConf.load(DETECTOR_CONFIG), values)
    return OmegaConf.to_object(cfg)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """lrfer-predict's photo options."""
    group = parser.add_argument_group("photos (--detect)")
    group.add_argument(
        "--detect", action="store_true", help="inputs are photos: detect, crop and classify every face"
    )
    group.add_argument("--annotate", type=Path, metavar="DIR", help="write each photo with its faces drawn")
    defaults = detector_config()
    group.add_argument("--detector-model", metavar="ONNX", help="OpenCV YuNet model (default: Haar cascades)")
    group.add_argument("--min-face", type=int, default=defaults.min_face, help="smallest face height, px")
    group.add_argument("--margin", type=float, default=defaults.margin, help="crop margin per side / box")
    group.add_argument(
        "--max-pixels", type=int, default=MAX_PIXELS, help="larger images are refused (--detect: skipped)"
    )


def check_arguments(args: argparse.Namespace) -> None:
    if args.annotate is not None and not args.detect:
        raise UserError("--annotate draws detected faces: add --detect")
    if args.margin < 0 or args.max_pixels <= 0:
        raise UserError(f"need --margin >= 0 and --max-pixels > 0, got {args.margin} and {args.max_pixels}")


def build_classifier(cfg, context, method, device) -> FaceClassifier:
    """A run's method (on ``device``, in eval mode) with its class names, sizes and normalisation."""
    return FaceClassifier(
        method, list(context.class_names), int(context.input_size), int(context.native_size),
        str(cfg.degrade.resize_kernel), list(cfg.dataset.mean), list(cfg.dataset.std), device,
    )  # fmt: skip


def predict_photos(
    args: argparse.Namespace, cfg, context, method, device, paths: Sequence[Path], say=None
) -> str:
    """``lrfer-predict --detect``: classify every face of the photos, write the CSV (and annotations).

    ``say`` receives the per-photo lines (see :func:`classify_photos`); returns the one-line summary.
    """
    detector = build_detector(
        detector_config(model=args.detector_model, min_face=args.min_face, margin=args.margin)
    )
    classifier = build_classifier(cfg, context, method, device)
    report = classify_photos(
        paths, detector, classifier, margin=args.margin, max_pixels=args.max_pixels,
        annotate_dir=args.annotate, batch_size=args.batch_size, say=say,
    )  # fmt: skip
    write_rows(report.rows, args.out, classifier.class_names)
    line = (
        f"found {len(report.rows)} faces in {report.photos} photo{'' if report.photos == 1 else 's'} "
        f"({report.without_face} without a face, "
        f"{report.skipped} skipped) -> {args.out}"
    )
    if args.annotate is not None:
        line += f"; {report.annotated} annotated photos -> {args.annotate}"
    return line

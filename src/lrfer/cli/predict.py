"""Classify face images of any size with a trained run; writes a CSV.

    lrfer-predict RUN_DIR IMAGE_OR_FOLDER... [--out predictions.csv] [--checkpoint best] [--skip-corrupt]

Each face is preprocessed as the run's method expects: decoded to 8-bit RGB (16-bit images are scaled, not
clipped), made square (``--square``: ``crop`` the centred square, the default; ``pad`` onto a black square;
``stretch`` squashes it), resized (MATLAB bicubic) to the network input size, normalised with the dataset's
mean and std. Faces shorter than 3 px get a warning. Its downsampling factor (native size / face side) is
passed to methods that use one; methods that infer the resolution themselves (DRGFER's router) ignore it.
Columns: path, width, height, factor, prediction, confidence, then one probability per class. An image of
more than ``--max-pixels`` pixels (a decompression bomb is one) is refused as unreadable; ``--skip-corrupt``
skips unreadable images, naming each on stderr.
Exit status: 0 success (results in the CSV and one summary line on stdout), 2 a user error.

With ``--detect`` the inputs are photos: every face is detected, cropped and classified, one CSV row per
face, and ``--annotate DIR`` draws them (:mod:`lrfer.tools.photos`; needs ``pip install 'lrfer[faces]'``).
A video file (``clip.mp4``) or ``--camera INDEX`` takes the video path: faces detected, tracked, classified
and smoothed over time (:mod:`lrfer.tools.video`; ``--annotate out.mp4``).
"""

from __future__ import annotations

import argparse
import csv
import logging
import sys
from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig
from PIL import Image, UnidentifiedImageError

from lrfer.config.validate import MIN_FACE_SIDE
from lrfer.core.errors import (
    UserError,
    check_folder_can_be_written,
    console_script,
    exit_on_user_error,
    writing,
)
from lrfer.data.degrade import resize_to
from lrfer.data.images import SQUARE_MODES, to_square, upright_rgb8
from lrfer.engine.loading import load_method_weights, load_run_config
from lrfer.engine.resolve import resolve_device
from lrfer.engine.run import build_method, method_context
from lrfer.methods.base import Method, MethodContext
from lrfer.tools import photos, video

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".gif"}


def list_images(inputs: list[Path]) -> list[Path]:
    files: list[Path] = []
    for p in inputs:
        if p.is_dir():
            files += sorted(f for f in p.rglob("*") if f.suffix.lower() in IMAGE_SUFFIXES and f.is_file())
        elif p.is_file():
            files.append(p)
        else:
            raise UserError(f"{p} does not exist: give image files or folders of images")
    if not files:
        raise UserError(
            f"no images ({', '.join(sorted(IMAGE_SUFFIXES))}) found in {', '.join(map(str, inputs))}"
        )
    return files


def read_rgb(path: Path, max_pixels: int = photos.MAX_PIXELS) -> torch.Tensor:
    """uint8 (3, H, W) (16-bit images scaled to 8 bits); a :class:`UserError` naming an unreadable file, or
    an image of more than ``max_pixels`` pixels (``--max-pixels``; a decompression bomb is one).

    A face shorter than :data:`~lrfer.config.validate.MIN_FACE_SIDE` px gets a warning.
    """
    try:
        with Image.open(path) as im:
            w, h = im.size
            if w * h > max_pixels:
                raise UserError(
                    f"cannot read image {path}: {w}x{h} = {w * h / 1e6:.0f} MP is more than "
                    f"--max-pixels={max_pixels}; crop the face out of it, or raise --max-pixels"
                )
            arr = np.asarray(upright_rgb8(im))
    except (UnidentifiedImageError, Image.DecompressionBombError, OSError, SyntaxError, ValueError) as err:
        reason = " ".join(str(err).split()) or type(err).__name__
        raise UserError(f"cannot read image {path}: {reason}") from None
    if min(arr.shape[:2]) < MIN_FACE_SIDE:
        log.warning(
            "%s is %dx%d px: below %d px a face carries no expression, its prediction means little",
            path,
            arr.shape[1],
            arr.shape[0],
            MIN_FACE_SIDE,
        )
    return torch.from_numpy(arr.copy()).permute(2, 0, 1)


def check_arguments(args: argparse.Namespace) -> None:
    """Refuse impossible options in one line before anything is loaded: a batch size below 1, an output
    CSV or ``--annotate`` folder that cannot be written (a file in the way, a read-only disk)."""
    photos.check_arguments(args)
    if args.batch_size < 1:
        raise UserError(f"--batch-size must be at least 1, got {args.batch_size}")
    if args.out.is_dir():
        raise UserError(f"--out {args.out} is a folder: give the CSV file to write")
    check_folder_can_be_written(args.out.parent, "write")
    if args.annotate is not None:
        check_folder_can_be_written(args.annotate, "write the annotated photos into")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Classify faces of any size with a trained lrfer run.")
    defaults = video.video_options()  # configs/video/default.yaml, read once
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("inputs", nargs="*", type=Path)
    parser.add_argument("--out", type=Path, default=Path("predictions.csv"))
    parser.add_argument("--checkpoint", default="best", choices=["best", "last"])
    parser.add_argument("--device", default="auto")
    parser.add_argument("--batch-size", type=int, default=defaults.batch_size, help="faces per forward pass")
    parser.add_argument(
        "--skip-corrupt", action="store_true", help="skip unreadable images instead of stopping"
    )
    parser.add_argument(
        "--square", default="crop", choices=SQUARE_MODES, help="non-square images: centre crop, pad, stretch"
    )
    photos.add_arguments(parser)
    video.add_arguments(parser, defaults)
    args = parser.parse_args(argv)
    if video.wants_video(args):
        video.check_arguments(args)
    elif not args.inputs:
        parser.error("give image files or folders, a video, or --camera INDEX")
    else:
        check_arguments(args)
    return args


@exit_on_user_error
def main(argv: list[str] | None = None) -> list[dict]:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    cfg = load_run_config(args.run_dir)
    device = resolve_device(args.device, "--device")
    context = method_context(cfg)
    method = build_method(cfg, context)
    load_method_weights(method, args.run_dir, args.checkpoint)
    method.to(device).eval()
    say = lambda line: print(line, file=sys.stderr, flush=True)  # noqa: E731
    if video.wants_video(args):
        print(video.predict_video(args, photos.build_classifier(cfg, context, method, device), say=say))
        return None
    if args.detect:
        print(photos.predict_photos(args, cfg, context, method, device, list_images(args.inputs), say=say))
        return None  # the console script exits 0 (sys.exit of a value would print it and exit 1)

    faces, skipped = read_faces(args)
    rows = classify(faces, args, cfg, context, method, device)
    with writing(args.out):
        args.out.parent.mkdir(parents=True, exist_ok=True)
        with args.out.open("w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(rows[0].keys()) if rows else ["path"])
            writer.writeheader()
            writer.writerows(rows)
    print(f"classified {len(rows)} faces ({skipped} unreadable skipped) -> {args.out}")
    return rows


def read_faces(args: argparse.Namespace) -> tuple[list[tuple[Path, torch.Tensor]], int]:
    """(path, image) of every input image, and how many unreadable ones ``--skip-corrupt`` skipped."""
    faces, skipped = [], 0
    for path in list_images(args.inputs):
        try:
            faces.append((path, read_rgb(path, args.max_pixels)))
        except UserError as err:
            if not args.skip_corrupt:
                raise
            print(f"skipped: {str(err).removeprefix('cannot read image ')}", file=sys.stderr, flush=True)
            skipped += 1
    return faces, skipped


def classify(
    faces: list[tuple[Path, torch.Tensor]],
    args: argparse.Namespace,
    cfg: DictConfig,
    context: MethodContext,
    method: Method,
    device: torch.device,
) -> list[dict]:
    """One CSV row per face: its size, the factor the method is given, the prediction and probabilities."""
    mean = torch.tensor(list(cfg.dataset.mean), device=device).view(1, -1, 1, 1)
    std = torch.tensor(list(cfg.dataset.std), device=device).view(1, -1, 1, 1)
    rows = []
    names = context.class_names
    with torch.inference_mode():
        for start in range(0, len(faces), args.batch_size):
            chunk = faces[start : start + args.batch_size]
            squares = [to_square(img, args.square) for _, img in chunk]
            images = torch.stack(
                [
                    resize_to(
                        sq.float()[None].to(device) / 255.0, context.input_size, cfg.degrade.resize_kernel
                    )[0]
                    for sq in squares
                ]
            ).clamp(0, 1)
            sides = torch.tensor([min(sq.shape[-2:]) for sq in squares], dtype=torch.float32, device=device)
            factor = (context.native_size / sides).clamp(min=1.0)
            probs = method.predict((images - mean) / std, factor=factor).float().softmax(dim=1).cpu()
            for (path, img), p, f in zip(chunk, probs, factor.cpu()):
                row = {
                    "path": str(path),
                    "width": img.shape[-1],
                    "height": img.shape[-2],
                    "factor": round(float(f), 3),
                    "prediction": names[int(p.argmax())],
                    "confidence": round(float(p.max()), 4),
                }
                row.update({f"p_{n}": round(float(v), 4) for n, v in zip(names, p)})
                rows.append(row)
    return rows


#: The ``lrfer-predict`` console script: exit status 0 on success (``main`` returns the rows).
cli = console_script(main)

if __name__ == "__main__":
    main()

"""Decoded images to 8-bit RGB: bit depth and aspect ratio, shared by dataset decoding and lrfer-predict.

PIL's ``convert("RGB")`` clips 16-bit grey images (modes ``I;16*`` and ``I``, e.g. 16-bit PNGs) at 255, so
nearly every pixel turns white; :func:`to_rgb8` scales them to 8 bits instead (``round(v / 257)``, so 65535
becomes 255). :func:`to_square` makes a non-square photo square by a centre crop or by padding, instead of
squashing it. :func:`upright_rgb8` also turns a photo as its EXIF orientation says (a phone stores the
sensor's pixels and a "rotate 90 degrees" tag): what lrfer-predict reads, faces and whole photos alike.
"""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image, ImageOps

#: How ``lrfer-predict --square`` makes a non-square image square.
SQUARE_MODES = ("crop", "pad", "stretch")
_SIXTEEN_BIT = ("I;16", "I;16L", "I;16B", "I;16N", "I")


def to_rgb8(image: Image.Image) -> Image.Image:
    """An 8-bit RGB copy of ``image``: 16-bit (and 32-bit) grey scaled from 0..65535, float from 0..1."""
    if image.mode in _SIXTEEN_BIT:
        values = np.asarray(image).astype(np.float64)
        grey = np.clip(np.rint(values / 257.0), 0, 255).astype(np.uint8)
        return Image.fromarray(grey).convert("RGB")
    if image.mode == "F":
        values = np.asarray(image).astype(np.float64)
        if np.nanmax(values, initial=0.0) <= 1.0:
            values = values * 255.0
        grey = np.clip(np.rint(np.nan_to_num(values)), 0, 255).astype(np.uint8)
        return Image.fromarray(grey).convert("RGB")
    return image if image.mode == "RGB" else image.convert("RGB")


def upright_rgb8(image: Image.Image) -> Image.Image:
    """``image`` as it is shown: turned by its EXIF orientation (none: unchanged), then :func:`to_rgb8`."""
    return to_rgb8(ImageOps.exif_transpose(image))


def to_square(image: torch.Tensor, mode: str = "crop") -> torch.Tensor:
    """A square view of a (C, H, W) image. ``crop``: the centred square of the shorter side; ``pad``: centred
    on a black square of the longer side; ``stretch``: unchanged (the resize that follows squashes it)."""
    if mode not in SQUARE_MODES:
        raise ValueError(f"unknown square mode {mode!r}: choose one of {', '.join(SQUARE_MODES)}")
    height, width = image.shape[-2:]
    if width == height or mode == "stretch":
        return image
    if mode == "crop":
        side = min(width, height)
        top, left = (height - side) // 2, (width - side) // 2
        return image[..., top : top + side, left : left + side]
    side = max(width, height)
    canvas = image.new_zeros((*image.shape[:-2], side, side))
    top, left = (side - height) // 2, (side - width) // 2
    canvas[..., top : top + height, left : left + width] = image
    return canvas

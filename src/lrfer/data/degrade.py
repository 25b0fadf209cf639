"""Low-resolution views of face images: parse degradation labels, downsample like MATLAB, resize back.

A degradation is written ``x<factor>`` (``x2``, ``x6``, ``x16``: MATLAB ``imresize(I, 1/factor, 'bicubic')``,
output side ``ceil(side / factor)``) or ``<size>px`` (``14px``: resized to an absolute side). ``x1`` is the
native image. Realistic operations can follow the size with ``+``: ``x4+blur1.5``, ``x4+noise8``,
``x4+jpeg30``, ``12px+blur1+jpeg40`` (:mod:`lrfer.data.realistic`). The network then sees the low-resolution
face resized back up to its input size, as in every paper lrfer implements.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

import torch

from lrfer.data.imresize import imresize, imresize_uint8
from lrfer.data.realistic import Operation, apply_operations, describe_operations, parse_operation
from lrfer.errors import UserError

__all__ = [
    "Degradation",
    "as_degradations",
    "degrade_uint8",
    "imresize",
    "parse_degradation",
    "parse_degradations",
    "resize_to",
]

_FACTOR = re.compile(r"^x(\d+(?:\.\d+)?)$")
_SIZE = re.compile(r"^(\d+)px$")
KERNELS = ("bicubic", "bilinear")


@dataclass(frozen=True)
class Degradation:
    """One low-resolution view: by ``factor`` (x4) or to an absolute ``size`` (14px), then ``operations``."""

    label: str
    factor: float | None = None
    size: int | None = None
    operations: tuple[Operation, ...] = ()

    def output_size(self, height: int, width: int) -> tuple[int, int]:
        """Side lengths of the low-resolution image made from a ``height`` x ``width`` one."""
        if self.size is not None:
            if self.size > min(height, width):
                raise UserError(
                    f"degradation {self.label} is larger than the {height}x{width} images: "
                    f"choose a size of at most {min(height, width)}px"
                )
            if height == width:
                return self.size, self.size
            scale = self.size / min(height, width)
            return math.ceil(height * scale), math.ceil(width * scale)
        assert self.factor is not None
        return math.ceil(height / self.factor), math.ceil(width / self.factor)

    def effective_factor(self, side: int) -> float:
        """Downsampling factor relative to a native side of ``side`` pixels (14px of 100 px = 7.14)."""
        return float(self.factor) if self.factor is not None else side / float(self.size)


def parse_degradation(label: str) -> Degradation:
    """Parse ``x4`` / ``x1.5`` / ``14px``, optionally followed by operations (``+blur1.5``, ``+jpeg30``, ...,
    :data:`lrfer.data.realistic.OPERATIONS`).

    Anything else is a :class:`UserError` saying what is accepted.
    """
    head, *tail = str(label).strip().lower().split("+")
    base = _parse_size(head.strip(), label)
    if not tail:
        return base
    operations = tuple(parse_operation(part.strip(), label) for part in tail)
    full = base.label + "".join(f"+{op.label}" for op in operations)
    return Degradation(label=full, factor=base.factor, size=base.size, operations=operations)


def _parse_size(text: str, label: str) -> Degradation:
    if m := _FACTOR.match(text):
        factor = float(m.group(1))
        if factor < 1.0:
            raise UserError(
                f"degradation {label!r}: the factor must be >= 1 (x1 is the native image, x4 shrinks 4 times)"
            )
        return Degradation(label=f"x{factor:g}", factor=factor)
    if m := _SIZE.match(text):
        size = int(m.group(1))
        if size <= 0:
            raise UserError(f"degradation {label!r}: the size must be a positive number of pixels, e.g. 14px")
        return Degradation(label=f"{size}px", size=size)
    raise UserError(
        f"cannot read degradation {label!r}: write x<factor> (x1, x2, x6, x16) or <size>px (14px), "
        f"optionally followed by any of {describe_operations()}"
    )


def parse_degradations(labels) -> list[Degradation]:
    """Parse a list of labels, refusing an empty list and duplicates."""
    if isinstance(labels, str):
        labels = [labels]
    degs = [parse_degradation(lbl) for lbl in labels]
    if not degs:
        raise UserError("the list of degradations is empty: give at least one, e.g. [x1]")
    seen = [d.label for d in degs]
    if len(set(seen)) != len(seen):
        raise UserError(f"degradation listed twice in {seen}")
    return degs


def as_degradations(items) -> list[Degradation]:
    """Parsed degradations as they are, labels parsed (:func:`parse_degradations`) - a list of either."""
    items = list(items)
    if all(isinstance(d, Degradation) for d in items) and items:
        return items
    return parse_degradations([d.label if isinstance(d, Degradation) else d for d in items])


def degrade_uint8(
    images: torch.Tensor,
    degradation: Degradation,
    kernel: str = "bicubic",
    antialias: bool = True,
    chunk: int = 1024,
    seed: int = 0,
    device: torch.device | None = None,
) -> torch.Tensor:
    """Low-resolution uint8 view of uint8 images (N, C, H, W), computed in chunks.

    The chunks are computed on ``device`` (default: the images' own) and the view is kept beside the
    images: host-resident images (a memory-mapped cache too large for the GPU) are resized on the GPU a
    chunk at a time and come back to the host. The uint8 result matches MATLAB's ``imresize`` on uint8
    images (rounded and clamped), so cached views are exactly the low-resolution files the papers wrote
    to disk. The degradation's realistic operations follow (noise of image ``i`` drawn from ``(seed, i)``,
    see :mod:`lrfer.data.realistic`).
    """
    if kernel not in KERNELS:
        raise UserError(f"unknown degradation kernel {kernel!r}: choose one of {', '.join(KERNELS)}")
    if images.dtype != torch.uint8 or images.dim() != 4:
        raise ValueError("degrade_uint8 expects uint8 images of shape (N, C, H, W)")
    height, width = images.shape[-2:]
    out = degradation.output_size(height, width)
    if out == (height, width) and not degradation.operations:
        return images
    # By factor, MATLAB derives the sampling grid from the scale itself (x6: samples 6 px apart), not from
    # the rounded output size (100/17 = 5.88 px apart): pass the scale, and the size only for <size>px.
    how = {"size": out} if degradation.size is not None else {"scale": 1.0 / degradation.factor}

    def make(start: int) -> torch.Tensor:
        part = images[start : start + chunk]
        if device is not None:
            part = part.to(device, non_blocking=True)
        if out != (height, width):
            part = imresize_uint8(part, kernel=kernel, antialias=antialias, **how)
        return apply_operations(part, degradation.operations, seed=seed, first_index=start)

    if device is not None and torch.device(device) != images.device:
        view = images.new_empty((images.shape[0], images.shape[1], *out))
        for i in range(0, images.shape[0], chunk):
            view[i : i + chunk] = make(i)
        return view
    parts = [make(i) for i in range(0, images.shape[0], chunk)]
    return torch.cat(parts) if parts else images.new_empty((0, images.shape[1], *out))


def resize_to(images: torch.Tensor, size: int, kernel: str = "bicubic") -> torch.Tensor:
    """Resize float images (N, C, h, w) to ``size`` x ``size`` with MATLAB semantics (no-op when equal)."""
    if kernel not in (*KERNELS, "nearest"):
        raise UserError(f"unknown resize kernel {kernel!r}: choose bicubic, bilinear or nearest")
    if tuple(images.shape[-2:]) == (size, size):
        return images
    if kernel == "nearest":
        return torch.nn.functional.interpolate(images, size=(size, size), mode="nearest-exact")
    return imresize(images, size=(size, size), kernel=kernel)

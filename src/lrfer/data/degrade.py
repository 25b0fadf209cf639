"""Low-resolution views of face images: downsample like MATLAB, apply the realistic operations, resize back.

The labels are parsed by :mod:`lrfer.core.degradation` (re-exported here): ``x<factor>`` (``x2``, ``x6``:
MATLAB ``imresize(I, 1/factor, 'bicubic')``, output side ``ceil(side / factor)``) or ``<size>px`` (``14px``),
optionally followed by realistic operations (``x4+blur1.5``, ``12px+blur1+jpeg40``). The network then sees
the low-resolution face resized back up to its input size, as in every paper lrfer implements.
"""

from __future__ import annotations

import torch

from lrfer.core.degradation import (
    Degradation,
    apply_operations,
    as_degradations,
    parse_degradation,
    parse_degradations,
)
from lrfer.core.errors import UserError
from lrfer.core.names import KERNELS, RESIZE_KERNELS
from lrfer.data.imresize import imresize, imresize_uint8

__all__ = [
    "KERNELS",
    "Degradation",
    "as_degradations",
    "degrade_uint8",
    "imresize",
    "parse_degradation",
    "parse_degradations",
    "resize_to",
]


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
    see :mod:`lrfer.core.degradation`).
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
    if kernel not in RESIZE_KERNELS:
        raise UserError(f"unknown resize kernel {kernel!r}: choose bicubic, bilinear or nearest")
    if tuple(images.shape[-2:]) == (size, size):
        return images
    if kernel == "nearest":
        return torch.nn.functional.interpolate(images, size=(size, size), mode="nearest-exact")
    return imresize(images, size=(size, size), kernel=kernel)

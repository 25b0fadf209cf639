"""Degradation labels and the realistic operations: the one place a degradation is named and described.

A degradation is written ``x<factor>`` (``x2``, ``x6``, ``x16``: MATLAB ``imresize(I, 1/factor, 'bicubic')``,
output side ``ceil(side / factor)``) or ``<size>px`` (``14px``: resized to an absolute side). ``x1`` is the
native image. Realistic operations chain after the size with ``+``, applied in order to the low-resolution
face: ``x4+blur1.5`` (Gaussian blur, sigma in low-resolution pixels), ``x4+noise8`` (additive Gaussian
noise, sigma in grey levels of 0..255), ``x4+jpeg30`` (JPEG at quality 30), ``12px+blur1+jpeg40``.

Real low-resolution faces are not only small: the camera blurs them, the sensor adds noise and the video
codec compresses them. Every operation maps uint8 images (N, C, h, w) to uint8 images of the same shape and
is deterministic: the noise of image ``i`` is a function of ``(seed, i)`` only (a counter-based hash,
identical on every device and for every chunking), so a split's view is the same in every run and for every
method.

The operations form one registry, :data:`OPERATIONS`: an :class:`OperationKind` holds an operation's name,
its parameter's range and meaning (the help of the error messages) and its function. Adding an operation is
one :func:`register_operation` call at the end of this file; nothing else in lrfer lists them. Labels are
parsed here, below the config validation (:mod:`lrfer.config.validate`); the resizing itself is
:func:`lrfer.data.degrade.degrade_uint8`.
"""

from __future__ import annotations

import io
import math
import re
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from lrfer.core.errors import UserError


@dataclass(frozen=True)
class OperationKind:
    """One realistic operation: everything a label, its check, its help and its effect need.

    ``apply(images, value, seed, first_index)`` maps uint8 images (N, C, h, w) to uint8 images of the same
    shape; image ``k`` is sample ``first_index + k`` of its split (what per-sample noise is drawn from).
    """

    name: str
    #: what the number after the name is, e.g. ``sigma`` (shown as ``+blur<sigma>``)
    parameter: str
    #: what the number means, with its unit (the help text of error messages)
    meaning: str
    low: float
    high: float
    apply: Callable[[torch.Tensor, float, int, int], torch.Tensor]
    #: the number must be a whole one (a JPEG quality)
    integer: bool = False

    def check(self, value: float, label: str) -> None:
        """A :class:`UserError` naming the range when ``value`` is outside it (or not whole)."""
        if not (self.low <= value <= self.high) or (self.integer and value != int(value)):
            kind = "a whole number" if self.integer else "a number"
            raise UserError(
                f"degradation {label!r}: {self.name} takes {kind} from {self.low:g} to {self.high:g} "
                f"({self.meaning})"
            )


#: Every realistic operation by name. Adding one (``+sharpen``) is one :func:`register_operation` call:
#: labels, their checks, the error messages and :func:`describe_operations` all read this registry.
OPERATIONS: dict[str, OperationKind] = {}


def register_operation(kind: OperationKind) -> OperationKind:
    """Add ``kind`` to :data:`OPERATIONS` (a name may be registered once)."""
    if kind.name in OPERATIONS:
        raise ValueError(f"degradation operation {kind.name!r} is registered twice")
    if not kind.name.isalpha():
        raise ValueError(f"degradation operation {kind.name!r}: a name is letters only (the number follows)")
    OPERATIONS[kind.name] = kind
    return kind


def describe_operations() -> str:
    """``+blur<sigma> (Gaussian sigma ..., 0 to 20), ...``: every registered operation, for messages."""
    return ", ".join(
        f"+{k.name}<{k.parameter}> ({k.meaning}, {k.low:g} to {k.high:g})" for k in OPERATIONS.values()
    )


@dataclass(frozen=True)
class Operation:
    """One operation after the resize: ``name`` in :data:`OPERATIONS` and its ``value``."""

    name: str
    value: float

    @property
    def label(self) -> str:
        return f"{self.name}{self.value:g}"


def parse_operation(text: str, label: str) -> Operation:
    """``blur1.5`` / ``noise8`` / ``jpeg30`` -> :class:`Operation`; anything else is a UserError."""
    # the longest name first: a registered ``blurry`` is not read as ``blur`` followed by ``ry``
    for name in sorted(OPERATIONS, key=len, reverse=True):
        if text.startswith(name):
            try:
                value = float(text[len(name) :])
            except ValueError:
                break
            OPERATIONS[name].check(value, label)
            return Operation(name, value)
    raise UserError(
        f"degradation {label!r}: cannot read {text!r}; after the size, chain any of "
        f"{describe_operations()}, e.g. x4+blur1.5+jpeg30"
    )


def apply_operations(
    images: torch.Tensor, operations: tuple[Operation, ...], seed: int = 0, first_index: int = 0
) -> torch.Tensor:
    """Apply ``operations`` in order to uint8 images; image ``k`` is sample ``first_index + k`` for noise."""
    for op in operations:
        images = OPERATIONS[op.name].apply(images, op.value, seed, first_index)
    return images


_FACTOR = re.compile(r"^x(\d+(?:\.\d+)?)$")
_SIZE = re.compile(r"^(\d+)px$")


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
    :data:`OPERATIONS`).

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


def gaussian_blur_uint8(images: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur (radius ceil(3 sigma), reflected borders), rounded back to uint8."""
    if sigma <= 0 or images.numel() == 0:
        return images
    radius = max(1, math.ceil(3 * sigma))
    radius = min(radius, min(images.shape[-2:]) - 1) if min(images.shape[-2:]) > 1 else 0
    if radius == 0:
        return images
    x = torch.arange(-radius, radius + 1, dtype=torch.float32, device=images.device)
    kernel = torch.exp(-0.5 * (x / sigma) ** 2)
    kernel = kernel / kernel.sum()
    n, c, h, w = images.shape
    flat = images.float().reshape(n * c, 1, h, w)
    flat = F.conv2d(F.pad(flat, (radius, radius, 0, 0), mode="reflect"), kernel.view(1, 1, 1, -1))
    flat = F.conv2d(F.pad(flat, (0, 0, radius, radius), mode="reflect"), kernel.view(1, 1, -1, 1))
    return flat.reshape(n, c, h, w).round().clamp(0, 255).to(torch.uint8)


_MASK32 = 0xFFFFFFFF


def _hash32(x: torch.Tensor) -> torch.Tensor:
    """A 32-bit integer hash (lowbias32, C. Wellons) of int64 tensors holding values in [0, 2**32)."""
    x = x ^ (x >> 16)
    x = (x * 0x7FEB352D) & _MASK32
    x = x ^ (x >> 15)
    x = (x * 0x846CA68B) & _MASK32
    return x ^ (x >> 16)


def hashed_normal(seed: int, samples: torch.Tensor, per_sample: int) -> torch.Tensor:
    """Standard normal numbers (len(samples), per_sample), a pure function of (seed, sample, position)."""
    position = torch.arange(per_sample, dtype=torch.int64, device=samples.device)
    sample_key = _hash32((samples.to(torch.int64) * 0x9E3779B1 + seed * 0x85EBCA77) & _MASK32)
    counters = _hash32((sample_key[:, None] + position[None, :] * 0x632BE5AB) & _MASK32)

    def uniform(stream: int) -> torch.Tensor:
        bits = _hash32(counters ^ stream * 0x27D4EB2F)
        return (bits.to(torch.float64) + 0.5) / 2.0**32  # in (0, 1)

    u1, u2 = uniform(1), uniform(2)
    return (torch.sqrt(-2.0 * torch.log(u1)) * torch.cos(2.0 * math.pi * u2)).to(torch.float32)


def gaussian_noise_uint8(images: torch.Tensor, sigma: float, seed: int, first_index: int = 0) -> torch.Tensor:
    """Add N(0, sigma^2) grey levels, the same noise for a sample whatever the batch, then round and clip."""
    if sigma <= 0 or images.numel() == 0:
        return images
    samples = torch.arange(first_index, first_index + images.shape[0], device=images.device)
    noise = hashed_normal(seed, samples, images[0].numel()).view_as(images)
    return (images.float() + sigma * noise).round().clamp(0, 255).to(torch.uint8)


def jpeg_uint8(images: torch.Tensor, quality: int) -> torch.Tensor:
    """Encode and decode every image with Pillow's JPEG codec (libjpeg) at ``quality`` (4:2:0 chroma).

    This runs once per split and degradation, when the view is built, never in the training loop.
    """
    from PIL import Image

    if images.numel() == 0:
        return images
    arrays = images.permute(0, 2, 3, 1).cpu().numpy()
    out = np.empty_like(arrays)
    for k, array in enumerate(arrays):
        mode_array = array[..., 0] if array.shape[-1] == 1 else array
        buffer = io.BytesIO()
        Image.fromarray(mode_array).save(buffer, format="JPEG", quality=int(quality))
        buffer.seek(0)
        decoded = np.asarray(Image.open(buffer).convert("L" if array.shape[-1] == 1 else "RGB"))
        out[k] = decoded.reshape(array.shape)
    return torch.from_numpy(out).permute(0, 3, 1, 2).contiguous().to(images.device)


register_operation(
    OperationKind(
        "blur",
        "sigma",
        "Gaussian sigma in low-resolution pixels",
        0.0,
        20.0,
        lambda images, value, seed, first: gaussian_blur_uint8(images, value),
    )
)
register_operation(
    OperationKind(
        "noise",
        "sigma",
        "Gaussian noise sigma in grey levels (0..255)",
        0.0,
        255.0,
        gaussian_noise_uint8,
    )
)
register_operation(
    OperationKind(
        "jpeg",
        "quality",
        "JPEG quality",
        1.0,
        100.0,
        lambda images, value, seed, first: jpeg_uint8(images, int(value)),
        integer=True,
    )
)

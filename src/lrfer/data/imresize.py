"""MATLAB-compatible ``imresize`` (bicubic / bilinear, with antialiasing) for torch tensors.

Low-resolution benchmarks in the literature are made with MATLAB's ``imresize(I, 1/s, 'bicubic')``. The
functions here reproduce its arithmetic, so that low-resolution views made in Python are the same images
the papers wrote to disk:

* ``scale`` has MATLAB's meaning (0.25 shrinks four times, 2.0 enlarges) and an output side is
  ``ceil(side * scale)``. With an absolute ``size=(h, w)`` the scale of each dimension is ``out / in``.
* The sampling grid comes from the scale itself, not from the rounded output size: output pixel ``x``
  (1-based) is centred at input coordinate ``u = x / scale + 0.5 * (1 - 1 / scale)``. Shrinking 100 px by
  6 gives 17 px whose centres are 6 input pixels apart (not 100 / 17 = 5.88).
* The kernel is Keys' cubic with ``a = -0.5`` (or the triangle for ``bilinear``). When shrinking with
  antialiasing it is widened by ``1 / scale`` (``h(x) = scale * cubic(scale * x)``), and the weights of
  every output pixel are renormalised to sum to 1.
* Borders use symmetric (mirror) index padding: ``... 3 2 1 | 1 2 3 ... n | n n-1 ...``.
* The two 1-D passes run in order of increasing scale (``sort(scale)`` in MATLAB's ``imresize.m``; rows
  first on a tie). For uint8 input MATLAB's ``imresizemex`` returns uint8 after *each* pass, so the
  intermediate image is rounded and clamped as well; :func:`imresize_uint8` does the same.

``torch.nn.functional.interpolate`` and PIL differ: they derive the grid from the output size
(``in / out`` instead of ``1 / scale``), clamp indices at the borders instead of mirroring them, and torch's
plain bicubic uses ``a = -0.75``. At x6 on 100 px faces the results differ by many grey levels.

GNU Octave (image package 2.14) implements the same grid, kernels and padding, with three differences
(see ``scripts/make_imresize_fixtures.py``): it always resizes columns before rows, it computes uint8
input in single precision without rounding the intermediate image, and it does not renormalise the
weights (identical for integer shrink factors and for enlarging, off by up to ~1e-3 relative otherwise).

Each dimension's resampling is a dense ``(out, in)`` matrix (computed on the CPU in float64, then cached on
every device and dtype it is used with), applied to the whole batch with two matrix products.
"""

from __future__ import annotations

import functools
import math

import torch

__all__ = ["imresize", "imresize_uint8", "output_size"]

_KERNEL_WIDTH = {"bicubic": 4.0, "bilinear": 2.0}


def _cubic(x: torch.Tensor) -> torch.Tensor:
    """Keys' cubic convolution kernel with a = -0.5 (MATLAB's ``cubic``)."""
    ax = x.abs()
    ax2 = ax * ax
    ax3 = ax2 * ax
    inner = (1.5 * ax3 - 2.5 * ax2 + 1.0) * (ax <= 1)
    outer = (-0.5 * ax3 + 2.5 * ax2 - 4.0 * ax + 2.0) * ((ax > 1) & (ax <= 2))
    return inner + outer


def _triangle(x: torch.Tensor) -> torch.Tensor:
    """Triangle kernel (MATLAB's ``triangle``, used by 'bilinear')."""
    return (1.0 - x.abs()).clamp(min=0.0)


_KERNELS = {"bicubic": _cubic, "bilinear": _triangle}


def _weight_matrix(
    in_len: int, out_len: int, scale: float, kernel: str, antialias: bool, normalize: bool = True
) -> torch.Tensor:
    """Dense (out_len, in_len) float64 resampling matrix of one dimension (MATLAB's ``contributions``).

    ``normalize=False`` skips the per-row renormalisation (what GNU Octave does); used by the tests only.
    """
    base = _KERNELS[kernel]
    width = _KERNEL_WIDTH[kernel]
    if scale < 1 and antialias:

        def h(x: torch.Tensor) -> torch.Tensor:
            return scale * base(scale * x)

        width = width / scale
    else:
        h = base
    x = torch.arange(1, out_len + 1, dtype=torch.float64)
    u = x / scale + 0.5 * (1.0 - 1.0 / scale)
    left = torch.floor(u - width / 2.0)
    taps = math.ceil(width) + 2
    indices = left[:, None] + torch.arange(taps, dtype=torch.float64)[None, :]
    weights = h(u[:, None] - indices)
    if normalize:
        weights = weights / weights.sum(dim=1, keepdim=True)
    # Symmetric padding: 1-based index i maps into [1:n, n:-1:1] periodically, then to 0-based.
    idx = indices.long() - 1
    period = 2 * in_len
    idx = torch.remainder(idx, period)
    idx = torch.where(idx >= in_len, period - 1 - idx, idx)
    matrix = torch.zeros(out_len, in_len, dtype=torch.float64)
    matrix.scatter_add_(1, idx, weights)
    return matrix


@functools.lru_cache(maxsize=256)
def _cached_weights(in_len: int, out_len: int, scale: float, kernel: str, antialias: bool) -> torch.Tensor:
    # Shared between calls: never modify the returned tensor in place.
    return _weight_matrix(in_len, out_len, scale, kernel, antialias)


@functools.lru_cache(maxsize=512)
def _device_weights(
    in_len: int, out_len: int, scale: float, kernel: str, antialias: bool, device: torch.device, dtype
) -> torch.Tensor:
    # Built once in float64 on the CPU, then kept on each (device, dtype) it is used with: the copy to a
    # GPU (a blocking transfer) happens once per run, not at every batch.
    weights = _cached_weights(in_len, out_len, scale, kernel, antialias)
    return weights.to(device=device, dtype=dtype)


def _weights_for(
    in_len: int, out_len: int, scale: float, kernel: str, antialias: bool, like: torch.Tensor
) -> torch.Tensor:
    return _device_weights(in_len, out_len, scale, kernel, antialias, like.device, like.dtype)


def _resolve(
    height: int, width: int, scale: float | None, size: tuple[int, int] | int | None
) -> tuple[tuple[int, int], tuple[float, float]]:
    """Output (h, w) and per-dimension scales, following MATLAB's rules; raises ValueError on bad args."""
    if (scale is None) == (size is None):
        raise ValueError("imresize needs exactly one of scale and size.")
    if scale is not None:
        if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not math.isfinite(scale):
            raise ValueError(f"imresize scale must be a positive finite number, got {scale!r}.")
        if scale <= 0:
            raise ValueError(f"imresize scale must be positive, got {scale!r}.")
        scale = float(scale)
        return (math.ceil(height * scale), math.ceil(width * scale)), (scale, scale)
    if isinstance(size, int) and not isinstance(size, bool):
        size = (size, size)
    if (
        not isinstance(size, (tuple, list))
        or len(size) != 2
        or not all(isinstance(s, int) and not isinstance(s, bool) for s in size)
    ):
        raise ValueError(f"imresize size must be an int or a pair of ints (height, width), got {size!r}.")
    if size[0] <= 0 or size[1] <= 0:
        raise ValueError(f"imresize size entries must be positive, got {tuple(size)!r}.")
    out_h, out_w = int(size[0]), int(size[1])
    return (out_h, out_w), (out_h / height, out_w / width)


def output_size(
    height: int, width: int, scale: float | None = None, size: tuple[int, int] | int | None = None
) -> tuple[int, int]:
    """Output (height, width) of :func:`imresize` for an input of ``height`` x ``width``."""
    return _resolve(height, width, scale, size)[0]


def _as_nchw(images: torch.Tensor) -> tuple[torch.Tensor, int]:
    if images.dim() not in (2, 3, 4):
        raise ValueError(
            f"imresize expects images of shape (H, W), (C, H, W) or (N, C, H, W), got {tuple(images.shape)}."
        )
    rank = images.dim()
    while images.dim() < 4:
        images = images.unsqueeze(0)
    return images, rank


def _from_nchw(images: torch.Tensor, rank: int) -> torch.Tensor:
    while images.dim() > rank:
        images = images.squeeze(0)
    return images


def _plan(
    height: int, width: int, scale: float | None, size: tuple[int, int] | int | None, kernel: str
) -> list[tuple[int, int, int, float]]:
    """The 1-D passes (dim, in, out, scale) in MATLAB's order; identity passes are left out."""
    if kernel not in _KERNELS:
        raise ValueError(f"imresize kernel must be one of {sorted(_KERNELS)}, got {kernel!r}.")
    (out_h, out_w), (scale_h, scale_w) = _resolve(height, width, scale, size)
    passes = [(-2, height, out_h, scale_h), (-1, width, out_w, scale_w)]
    # MATLAB: [~, order] = sort(scale) -- stable, so rows go first when the scales are equal.
    passes.sort(key=lambda p: p[3])
    return [p for p in passes if not (p[1] == p[2] and p[3] == 1.0)]


def _apply(images: torch.Tensor, dim: int, weights: torch.Tensor) -> torch.Tensor:
    if dim == -2:
        return torch.matmul(weights, images)  # (out, H) @ (N, C, H, W) -> (N, C, out, W)
    return torch.matmul(images, weights.transpose(0, 1))  # (N, C, H, W) @ (W, out) -> (N, C, H, out)


def imresize(
    images: torch.Tensor,
    scale: float | None = None,
    size: tuple[int, int] | int | None = None,
    kernel: str = "bicubic",
    antialias: bool = True,
) -> torch.Tensor:
    """Resize float images like MATLAB's ``imresize(I, scale, 'bicubic')`` (or ``imresize(I, [h w], ...)``).

    Args:
        images: float32/float64 tensor (N, C, H, W), (C, H, W) or (H, W), on any device, in any value
            range (0..1 or 0..255); the result has the same rank, dtype and device.
        scale: MATLAB's scale factor (0.25 shrinks 4 times, 2.0 enlarges twice); output sides are
            ``ceil(side * scale)`` and the sampling grid is derived from ``scale`` itself.
        size: absolute output size ``(h, w)`` (an int means square); each dimension's scale is out / in.
        kernel: ``"bicubic"`` (Keys, a = -0.5) or ``"bilinear"`` (triangle).
        antialias: widen the kernel by ``1 / scale`` when shrinking, as MATLAB does by default.

    Give exactly one of ``scale`` and ``size``. The result is not rounded or clamped (bicubic overshoots
    at edges); use :func:`imresize_uint8` for MATLAB's uint8 behaviour. See the module docstring for why
    ``torch.nn.functional.interpolate`` and PIL give different images.
    """
    if not isinstance(images, torch.Tensor) or not images.is_floating_point():
        dtype = getattr(images, "dtype", type(images).__name__)
        raise ValueError(
            f"imresize expects a floating-point tensor (use imresize_uint8 for uint8), got {dtype}."
        )
    x, rank = _as_nchw(images)
    for dim, n_in, n_out, s in _plan(x.shape[-2], x.shape[-1], scale, size, kernel):
        x = _apply(x, dim, _weights_for(n_in, n_out, s, kernel, antialias, x))
    return _from_nchw(x, rank)


def imresize_uint8(
    images: torch.Tensor,
    scale: float | None = None,
    size: tuple[int, int] | int | None = None,
    kernel: str = "bicubic",
    antialias: bool = True,
    round_intermediate: bool = True,
) -> torch.Tensor:
    """MATLAB's ``imresize`` on uint8 images: uint8 in, uint8 out, same shape rules as :func:`imresize`.

    The computation runs in float64 on the images' device. After each 1-D pass the result is clamped to
    [0, 255] and rounded half away from zero, because MATLAB's ``imresizemex`` returns the input class
    after every pass. ``round_intermediate=False`` rounds only the final image, which is what GNU Octave's
    image package does (it casts to single and back only once).
    """
    if not isinstance(images, torch.Tensor) or images.dtype != torch.uint8:
        dtype = getattr(images, "dtype", type(images).__name__)
        raise ValueError(f"imresize_uint8 expects a uint8 tensor, got {dtype}.")
    x, rank = _as_nchw(images)
    x = x.to(torch.float64)
    passes = _plan(x.shape[-2], x.shape[-1], scale, size, kernel)
    for i, (dim, n_in, n_out, s) in enumerate(passes):
        x = _apply(x, dim, _weights_for(n_in, n_out, s, kernel, antialias, x))
        if round_intermediate or i == len(passes) - 1:
            x = torch.floor(x.clamp(0.0, 255.0) + 0.5)
    return _from_nchw(x.to(torch.uint8), rank)

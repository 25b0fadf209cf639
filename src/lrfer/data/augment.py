"""Batched on-device augmentation: one affine warp + colour jitter + blur + random erasing per batch.

Every random draw is per sample but computed as tensor operations over the whole batch (no Python loop
over images), from an explicit ``torch.Generator`` so that runs repeat exactly.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from lrfer.config.schema import AugmentConfig


def _uniform(n: int, low: float, high: float, gen: torch.Generator, device) -> torch.Tensor:
    return torch.rand(n, generator=gen, device=device) * (high - low) + low


def _affine(images: torch.Tensor, cfg: AugmentConfig, gen: torch.Generator) -> torch.Tensor:
    n, device = images.shape[0], images.device
    angle = _uniform(n, -cfg.rotate, cfg.rotate, gen, device) * (math.pi / 180.0)
    scale = _uniform(n, cfg.scale_min, cfg.scale_max, gen, device)
    tx = _uniform(n, -cfg.translate, cfg.translate, gen, device) * 2.0
    ty = _uniform(n, -cfg.translate, cfg.translate, gen, device) * 2.0
    flip = torch.where(torch.rand(n, generator=gen, device=device) < cfg.hflip, -1.0, 1.0)
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    theta = torch.stack(
        [torch.stack([cos * flip, -sin, tx], 1), torch.stack([sin * flip, cos, ty], 1)], 1
    ).to(images.dtype)
    grid = F.affine_grid(theta, list(images.shape), align_corners=False)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="reflection", align_corners=False)


def _flip_only(images: torch.Tensor, p: float, gen: torch.Generator) -> torch.Tensor:
    mask = torch.rand(images.shape[0], generator=gen, device=images.device) < p
    return torch.where(mask[:, None, None, None], images.flip(-1), images)


def _colour(images: torch.Tensor, cfg: AugmentConfig, gen: torch.Generator) -> torch.Tensor:
    """Brightness, contrast and saturation jitter on images in [0, 1] (torchvision's definitions)."""
    n, device = images.shape[0], images.device
    shape = (n, 1, 1, 1)
    if cfg.brightness > 0:
        images = images * _uniform(n, 1 - cfg.brightness, 1 + cfg.brightness, gen, device).view(shape)
    grey = (
        (0.299 * images[:, 0:1] + 0.587 * images[:, 1:2] + 0.114 * images[:, 2:3])
        if images.shape[1] == 3
        else images
    )
    if cfg.contrast > 0:
        mean = grey.mean(dim=(1, 2, 3), keepdim=True)
        factor = _uniform(n, 1 - cfg.contrast, 1 + cfg.contrast, gen, device).view(shape)
        images = (images - mean) * factor + mean
    if cfg.saturation > 0 and images.shape[1] == 3:
        factor = _uniform(n, 1 - cfg.saturation, 1 + cfg.saturation, gen, device).view(shape)
        images = (images - grey) * factor + grey
    return images.clamp(0.0, 1.0)


def _blur(images: torch.Tensor, cfg: AugmentConfig, gen: torch.Generator) -> torch.Tensor:
    """Gaussian blur with a per-sample sigma in (0, blur_sigma_max], applied to a ``blur_p`` share."""
    n, c, device = images.shape[0], images.shape[1], images.device
    radius = max(1, math.ceil(3 * cfg.blur_sigma_max))
    sigma = _uniform(n, 1e-3, cfg.blur_sigma_max, gen, device)
    x = torch.arange(-radius, radius + 1, device=device, dtype=images.dtype)
    kernel = torch.exp(-(x[None] ** 2) / (2 * sigma[:, None] ** 2))
    kernel = kernel / kernel.sum(1, keepdim=True)  # (n, k)
    k = kernel.repeat_interleave(c, 0)  # (n*c, k)
    flat = images.reshape(1, n * c, *images.shape[-2:])
    flat = F.conv2d(F.pad(flat, (radius, radius, 0, 0), mode="reflect"), k[:, None, None, :], groups=n * c)
    flat = F.conv2d(F.pad(flat, (0, 0, radius, radius), mode="reflect"), k[:, None, :, None], groups=n * c)
    blurred = flat.reshape(images.shape)
    mask = torch.rand(n, generator=gen, device=device) < cfg.blur_p
    return torch.where(mask[:, None, None, None], blurred, images)


def _erase(images: torch.Tensor, cfg: AugmentConfig, gen: torch.Generator) -> torch.Tensor:
    """Random erasing (Zhong et al.): a rectangle of random area and aspect ratio set to noise."""
    n, _, h, w = images.shape
    device = images.device
    area = _uniform(n, cfg.erase_area_min, cfg.erase_area_max, gen, device) * h * w
    log_ratio = _uniform(n, math.log(0.3), math.log(3.3), gen, device)
    eh = torch.sqrt(area * torch.exp(log_ratio)).clamp(1, h)
    ew = torch.sqrt(area / torch.exp(log_ratio)).clamp(1, w)
    top = torch.rand(n, generator=gen, device=device) * (h - eh)
    left = torch.rand(n, generator=gen, device=device) * (w - ew)
    ys = torch.arange(h, device=device)[None, :, None]
    xs = torch.arange(w, device=device)[None, None, :]
    inside = (ys >= top[:, None, None]) & (ys < (top + eh)[:, None, None])
    inside = inside & (xs >= left[:, None, None]) & (xs < (left + ew)[:, None, None])
    chosen = torch.rand(n, generator=gen, device=device) < cfg.erase_p
    mask = (inside & chosen[:, None, None])[:, None]
    noise = torch.rand(images.shape, generator=gen, device=device, dtype=images.dtype)
    return torch.where(mask, noise, images)


def augment_batch(images: torch.Tensor, cfg: AugmentConfig, gen: torch.Generator) -> torch.Tensor:
    """Augment float images in [0, 1] of shape (N, C, H, W); returns a new tensor of the same shape."""
    if images.shape[0] == 0:
        return images
    geometric = cfg.rotate > 0 or cfg.translate > 0 or cfg.scale_min != 1.0 or cfg.scale_max != 1.0
    if geometric:
        images = _affine(images, cfg, gen)
    elif cfg.hflip > 0:
        images = _flip_only(images, cfg.hflip, gen)
    if cfg.brightness > 0 or cfg.contrast > 0 or cfg.saturation > 0:
        images = _colour(images, cfg, gen)
    if cfg.blur_p > 0:
        images = _blur(images, cfg, gen)
    if cfg.erase_p > 0:
        images = _erase(images, cfg, gen)
    return images

"""Compact image super-resolution networks for FSR-FER's ISR baselines (paper 001, sec. 4.2, Table 1).

* :class:`RCANLite` — RCAN (Zhang et al., ECCV 2018) in the pre-upsampling form: it restores the
  low-resolution face that was already resized back to the network input size (bicubic), with residual
  groups of residual channel-attention blocks (RCAB: conv-ReLU-conv, channel attention with reduction
  ``reduction``, residual), a long skip, and a global skip from the input. One model per factor, as the
  paper uses "a different model for its corresponding down-sample factor".
* :class:`MetaSRLite` — Meta-SR (Hu et al., CVPR 2019): a residual-dense feature extractor on the
  low-resolution face at its own size, then the Meta-Upscale module: for every output pixel ``(i, j)``
  a small MLP maps ``(i/r - floor(i/r), j/r - floor(j/r), 1/r)`` to the weights of a ``k x k``
  convolution applied to the low-resolution features around pixel ``(floor(i/r), floor(j/r))``. One
  model serves every scale ``r``, including non-integer ones. A bicubic skip is added (the output is a
  residual over the bicubic upsampling).

Both are networks only: how they are trained (L1 to the high-resolution face, one per factor or one for
all) lives in :mod:`lrfer.methods.isr`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class ChannelAttention(nn.Module):
    def __init__(self, channels: int, reduction: int) -> None:
        super().__init__()
        hidden = max(1, channels // reduction)
        self.body = nn.Sequential(
            nn.AdaptiveAvgPool2d(1),
            nn.Conv2d(channels, hidden, 1),
            nn.ReLU(True),
            nn.Conv2d(hidden, channels, 1),
            nn.Sigmoid(),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.body(x)


class RCAB(nn.Module):
    """Residual channel-attention block."""

    def __init__(self, channels: int, reduction: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(channels, channels, 3, padding=1),
            nn.ReLU(True),
            nn.Conv2d(channels, channels, 3, padding=1),
            ChannelAttention(channels, reduction),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


class ResidualGroup(nn.Module):
    def __init__(self, channels: int, blocks: int, reduction: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            *(RCAB(channels, reduction) for _ in range(blocks)), nn.Conv2d(channels, channels, 3, padding=1)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


class RCANLite(nn.Module):
    """Pre-upsampling RCAN: image (N, C, S, S) resized back from low resolution -> restored image."""

    def __init__(
        self, in_channels: int = 3, channels: int = 32, groups: int = 3, blocks: int = 4, reduction: int = 8
    ) -> None:
        super().__init__()
        self.head = nn.Conv2d(in_channels, channels, 3, padding=1)
        self.body = nn.Sequential(
            *(ResidualGroup(channels, blocks, reduction) for _ in range(groups)),
            nn.Conv2d(channels, channels, 3, padding=1),
        )
        self.tail = nn.Conv2d(channels, in_channels, 3, padding=1)
        nn.init.zeros_(self.tail.weight)
        nn.init.zeros_(self.tail.bias)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = self.head(images)
        return images + self.tail(x + self.body(x))


class ResidualDenseBlock(nn.Module):
    """RDN's residual dense block: ``layers`` conv-ReLU with dense connections, 1x1 fusion, residual."""

    def __init__(self, channels: int, growth: int, layers: int) -> None:
        super().__init__()
        self.convs = nn.ModuleList(
            nn.Conv2d(channels + i * growth, growth, 3, padding=1) for i in range(layers)
        )
        self.fuse = nn.Conv2d(channels + layers * growth, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feats = [x]
        for conv in self.convs:
            feats.append(F.relu(conv(torch.cat(feats, 1))))
        return x + self.fuse(torch.cat(feats, 1))


class MetaUpscale(nn.Module):
    """Meta-SR's Meta-Upscale: per-output-pixel convolution weights predicted from (offset, 1/scale)."""

    def __init__(self, channels: int, out_channels: int, kernel: int = 3, hidden: int = 256) -> None:
        super().__init__()
        self.channels, self.out_channels, self.kernel = channels, out_channels, kernel
        self.weight_net = nn.Sequential(
            nn.Linear(3, hidden), nn.ReLU(True), nn.Linear(hidden, channels * kernel * kernel * out_channels)
        )

    @staticmethod
    def positions(in_size: int, out_size: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """Source ``floor(i / r)`` and offset ``i / r - floor(i / r)`` of each output row (r = out/in)."""
        coord = torch.arange(out_size, device=device, dtype=torch.float64) * (in_size / out_size)
        src = coord.floor()
        return src.long().clamp(max=in_size - 1), (coord - src).float()

    def forward(self, features: torch.Tensor, out_size: tuple[int, int]) -> torch.Tensor:
        n, c, h, w = features.shape
        oh, ow = out_size
        src_y, off_y = self.positions(h, oh, features.device)
        src_x, off_x = self.positions(w, ow, features.device)
        inv_scale = torch.full((oh, ow), h / oh, device=features.device)
        pos = torch.stack(
            [off_y[:, None].expand(oh, ow), off_x[None, :].expand(oh, ow), inv_scale], dim=-1
        ).to(features.dtype)
        k2c = c * self.kernel * self.kernel
        weights = self.weight_net(pos).view(oh, ow, k2c, self.out_channels)
        patches = F.unfold(features, self.kernel, padding=self.kernel // 2).view(n, k2c, h, w)
        patches = patches[:, :, src_y][:, :, :, src_x]  # (N, C*k*k, oh, ow)
        return torch.einsum("nkij,ijko->noij", patches, weights)


class MetaSRLite(nn.Module):
    """Scale-arbitrary SR: low-resolution image (N, C, h, w) -> (N, C, S, S) for any S >= h."""

    def __init__(
        self,
        in_channels: int = 3,
        channels: int = 32,
        blocks: int = 3,
        layers: int = 4,
        growth: int = 16,
        kernel: int = 3,
        hidden: int = 256,
    ) -> None:
        super().__init__()
        self.head = nn.Conv2d(in_channels, channels, 3, padding=1)
        self.blocks = nn.ModuleList(ResidualDenseBlock(channels, growth, layers) for _ in range(blocks))
        self.fuse = nn.Sequential(
            nn.Conv2d(channels * blocks, channels, 1), nn.Conv2d(channels, channels, 3, padding=1)
        )
        self.upscale = MetaUpscale(channels, in_channels, kernel, hidden)
        nn.init.zeros_(self.upscale.weight_net[-1].weight)
        nn.init.zeros_(self.upscale.weight_net[-1].bias)

    def forward(self, lr: torch.Tensor, out_size: int, upsampled: torch.Tensor) -> torch.Tensor:
        """``upsampled`` is ``lr`` resized to ``out_size`` (bicubic): the output is a residual over it."""
        x = self.head(lr)
        feats, y = [], x
        for block in self.blocks:
            y = block(y)
            feats.append(y)
        x = x + self.fuse(torch.cat(feats, 1))
        return upsampled + self.upscale(x, (out_size, out_size))

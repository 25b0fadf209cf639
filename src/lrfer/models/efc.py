"""The lightweight EFC network of "Low-resolution facial emotion recognition on low-cost devices" (``efc``).

Structure (Section 3, Figure 1): a standard 3x3 convolution stem that shrinks the map, a stack of
Efficient Feature Convolution (EFC) blocks with spatial and channel attention, and a classifier of a 1x1
convolution to 1280 channels, global average pooling and a 1x1 convolution to the classes (Section 3.2).

EFC block with attention (eq. 4-9)::

    EFC(x)    = N(conv_ch(conv_s(N(DW_sp(x)))))          (4)
    conv_s(x) = S-Swish(conv1x1(x))                      (5)  expands the channels
    DW_sp(x)  = DW(x) * SP_att(x)                        (6)
    conv_ch(x)= conv1x1(x) * CH_att(x)                   (7)  projects the channels back
    S-Swish(x)= x / (1 + exp(-beta x))                   (3)
    SP_att(x) = sigmoid(conv1x1_{C->1}(x))               (8)
    CH_att(x) = sigmoid(conv1x1(GAP(x)))                 (9)

(eq. 1-2 are the same block without the two attentions.) No residual connection: the paper presents the
block as faster than residual blocks.

The paper publishes neither the widths nor the depth. Choices (also in experiments/efc/README.md):

* Widths (``DEFAULT_BLOCKS``): stem 3->24, stride 2; EFC blocks ``(out, stride, expansion)`` =
  (32, 1, 2), (64, 2, 2), (128, 2, 2), (224, 2, 2); head 224->1280 (+BN, S-Swish) -> GAP -> 1280->classes.
  At 32x32 the maps are 16, 16, 8, 4, 2 px. 7 classes: 506,643 trainable parameters, 510,643 with the
  BatchNorm running statistics (the paper's Keras count includes them, as its 2,266,951 for MobileNetV2
  shows); 3.33 M multiply-accumulates = 0.0067 GFLOPs (the paper: 513,484 and 0.007 GFLOPs, where its
  MobileNetV2 figure, 0.013, is 2 x MACs). The block count is kept small because batch-1 CPU speed is
  dominated by the number of layers (the paper's 290 FPS).
* Each block's first 1x1 conv expands to ``expansion * in`` channels; the projection (and CH_att, whose
  1x1 conv maps the expanded channels to the output channels, literally eq. 7/9) gives ``out`` channels.
  The paper says the projection returns to the block's input width; the width changes at the stride-2
  blocks (the paper: the EFC "quickly reduces the feature map"), as in MobileNetV2.
* SP_att reads the block input x (eq. 6); in a stride-2 block its 1x1 conv has stride 2 so that its map
  lies on the depthwise output grid. BatchNorm follows the product DW(x) * SP_att(x) (eq. 4).
* Convolutions followed by BatchNorm have no bias; conv_s's expansion, the attention convolutions and the
  final classifier convolution have biases. The stem and the 1280-channel head conv use BN + S-Swish.
* beta of S-Swish is not given: ``beta=1.0`` (Swish's usual constant, Ramachandran et al.).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from lrfer.core.errors import UserError

#: (out_channels, stride, expansion) of each EFC block.
DEFAULT_BLOCKS: tuple[tuple[int, int, int], ...] = ((32, 1, 2), (64, 2, 2), (128, 2, 2), (224, 2, 2))


def s_swish(x: torch.Tensor, beta: float = 1.0) -> torch.Tensor:
    """S-Swish, eq. (3): ``x / (1 + exp(-beta x))`` = ``x * sigmoid(beta x)``."""
    return x * torch.sigmoid(beta * x)


class SSwish(nn.Module):
    """S-Swish activation (eq. 3) with a constant ``beta``."""

    def __init__(self, beta: float = 1.0) -> None:
        super().__init__()
        self.beta = float(beta)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return s_swish(x, self.beta)

    def extra_repr(self) -> str:
        return f"beta={self.beta}"


class SpatialAttention(nn.Module):
    """SP_att, eq. (8): a one-channel 1x1 convolution and a sigmoid."""

    def __init__(self, channels: int, stride: int = 1) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, 1, kernel_size=1, stride=stride, bias=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.conv(x))


class ChannelAttention(nn.Module):
    """CH_att, eq. (9): global average pooling, a 1x1 convolution and a sigmoid."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size=1, bias=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.conv(x.mean(dim=(2, 3), keepdim=True)))


class EFCBlock(nn.Module):
    """Efficient Feature Convolution with spatial and channel attention, eq. (4)-(9)."""

    def __init__(
        self, in_channels: int, out_channels: int, stride: int = 1, expansion: int = 2, beta: float = 1.0
    ) -> None:
        super().__init__()
        hidden = in_channels * expansion
        self.dw = nn.Conv2d(
            in_channels, in_channels, 3, stride=stride, padding=1, groups=in_channels, bias=False
        )
        self.sp_att = SpatialAttention(in_channels, stride)
        self.bn1 = nn.BatchNorm2d(in_channels)
        self.expand = nn.Conv2d(in_channels, hidden, kernel_size=1, bias=True)
        self.act = SSwish(beta)
        self.project = nn.Conv2d(hidden, out_channels, kernel_size=1, bias=False)
        self.ch_att = ChannelAttention(hidden, out_channels)
        self.bn2 = nn.BatchNorm2d(out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.bn1(self.dw(x) * self.sp_att(x))  # N(DW_sp(x)), eq. (4), (6)
        x = self.act(self.expand(x))  # conv_s, eq. (5)
        return self.bn2(self.project(x) * self.ch_att(x))  # N(conv_ch(.)), eq. (4), (7)


class EFCNet(nn.Module):
    """Stem (3x3 conv, stride 2) -> EFC blocks -> 1x1 conv to ``head_channels`` -> GAP -> 1x1 conv.

    Widths are not published: by default stem 24, blocks ``[out, stride, expansion]`` = [32, 1, 2],
    [64, 2, 2], [128, 2, 2], [224, 2, 2], head 1280 (BN + S-Swish), chosen for the paper's 513,484 parameters
    (Keras count, BN statistics included) and 0.007 GFLOPs at 32 px; no residual connections. See the
    module docstring for every choice.
    """

    def __init__(
        self,
        num_classes: int,
        in_channels: int = 3,
        stem_channels: int = 24,
        blocks: Sequence[Sequence[int]] = DEFAULT_BLOCKS,
        head_channels: int = 1280,
        beta: float = 1.0,
    ) -> None:
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, stem_channels, 3, stride=2, padding=1, bias=False),
            nn.BatchNorm2d(stem_channels),
            SSwish(beta),
        )
        layers, width = [], stem_channels
        for spec in blocks:
            if len(spec) != 3:
                raise UserError(f"an EFC block is [out_channels, stride, expansion], got {list(spec)}")
            out, stride, expansion = (int(v) for v in spec)
            layers.append(EFCBlock(width, out, stride, expansion, beta))
            width = out
        self.blocks = nn.Sequential(*layers)
        self.head = nn.Sequential(
            nn.Conv2d(width, head_channels, kernel_size=1, bias=False),
            nn.BatchNorm2d(head_channels),
            SSwish(beta),
        )
        self.classifier = nn.Conv2d(head_channels, num_classes, kernel_size=1, bias=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.head(self.blocks(self.stem(x)))
        return self.classifier(x.mean(dim=(2, 3), keepdim=True)).flatten(1)


def build_efc(
    num_classes: int,
    input_size: int,
    in_channels: int = 3,
    stem_channels: int = 24,
    blocks: Sequence[Sequence[int]] = DEFAULT_BLOCKS,
    head_channels: int = 1280,
    beta: float = 1.0,
) -> EFCNet:
    """Builder with the ``build_model`` signature (``input_size`` does not change the network)."""
    if input_size < 1:
        raise UserError(f"EFC needs a positive input size, got {input_size}")
    return EFCNet(num_classes, in_channels, stem_channels, [list(b) for b in blocks], head_channels, beta)

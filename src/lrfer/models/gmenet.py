"""GME-Net, the Global Multiple Extraction Network (Shi, 2023).

Two branches share a stem and are added before the classifier (Sec. 3.1):

* the **local branch** (Sec. 3.2): residual stages of Mixed-Attention Blocks (MAB). A MAB is torchvision's
  ``BasicBlock`` (two 3x3 convolutions) with a block attention inserted before the residual addition,
  ``O = DSAM(DCAM(Conv3x3(Conv3x3(F)))) + F`` (eq. 1). DCAM (eq. 2) and DSAM (eq. 3) are CBAM's channel and
  spatial attention with two depthwise-separable convolutions in front of the pooling;
* the **global branch** (Sec. 3.3): stages of Mixed-Channel Blocks (MCB, eq. 4-8), a quasi-symmetric
  Res2Net-like block of depthwise-separable 3x3 convolutions.

Every attention module returns its PRE-SIGMOID map (``M_c`` of eq. 2, ``M_s`` of eq. 3) next to its output:
those are the maps the attention-similarity distillation (eq. 9-11) compares.

Choices the paper leaves open (also listed in ``experiments/gmenet/README.md``):

* "ResNet-50 backbone with basic blocks, initial width 32" is read as ResNet-50's stage layout
  ``layers=(3, 4, 6, 3)`` of basic blocks with widths ``width * (1, 2, 4, 8)`` = 32, 64, 128, 256 and
  strides 1, 2, 2, 2 (i.e. a ResNet-34-shaped network at half width);
* the stem is lrfer's ResNet stem for the input size (:func:`lrfer.models.resnet.choose_stem`: 7x7/2 +
  max-pool from 64 px, 3x3 + max-pool from 32 px, 3x3 below), shared by both branches;
* a depthwise-separable convolution is depthwise ``k x k`` -> pointwise 1x1 -> BN -> ReLU. In DCAM/DSAM the
  paper writes "1x1 depth-separable convolutions", so ``dw_kernel=1`` by default; "downsampling" and
  "upsampling" between the two are a 2x2 average pooling and bilinear resizing back to the input size;
* the shared MLP of DCAM is ``C -> C/reduction -> C`` (CBAM's ``reduction=16``); DSAM's convolution is
  3x3 as eq. 3 says (CBAM uses 7x7: ``spatial_kernel``);
* MCB: the 3x3 convolution is conv -> BN -> ReLU and keeps ``C``; branch 1 reduces to ``C/4`` with a 1x1
  conv -> BN -> ReLU; eq. 5/7 are followed (``F_i = DWConv(F_{i-1}) + X_i``; the text describes the
  Res2Net order ``DWConv(F_{i-1} + X_i)`` instead); the residual ``F`` of eq. 8 is the block's input;
* the global branch mirrors the local stages: stage ``i`` starts (for ``i > 0``) with a strided 3x3 conv ->
  BN -> ReLU that doubles the width, followed by ``global_blocks[i]`` MCBs (default one per stage); the
  two branches' last maps are added, average-pooled and classified by one linear layer.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from lrfer.core.compat import torchvision
from lrfer.core.errors import UserError
from lrfer.models.resnet import choose_stem

ATTENTIONS = ("dbam", "cbam", "none")

#: One attention block's pre-sigmoid maps: channel ``M_c`` (N, C, 1, 1) and spatial ``M_s`` (N, 1, H, W).
AttentionMaps = tuple[torch.Tensor, torch.Tensor]


class DepthwiseSeparableConv(nn.Sequential):
    """Depthwise ``k x k`` convolution -> pointwise 1x1 convolution -> BN -> ReLU."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3, stride: int = 1) -> None:
        super().__init__(
            nn.Conv2d(
                in_channels,
                in_channels,
                kernel_size,
                stride,
                kernel_size // 2,
                groups=in_channels,
                bias=False,
            ),
            nn.Conv2d(in_channels, out_channels, 1, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
        )


class DepthwiseExtractor(nn.Module):
    """``F_m = DWConv(DWConv(F))`` of eq. 2/3: DWConv -> 2x downsampling -> DWConv -> upsampling to H x W."""

    def __init__(self, channels: int, kernel_size: int = 1) -> None:
        super().__init__()
        self.first = DepthwiseSeparableConv(channels, channels, kernel_size)
        self.second = DepthwiseSeparableConv(channels, channels, kernel_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size = x.shape[-2:]
        h = self.first(x)
        if min(size) >= 2:
            h = F.avg_pool2d(h, 2, ceil_mode=True)
        h = self.second(h)
        if h.shape[-2:] != size:
            h = F.interpolate(h, size=size, mode="bilinear", align_corners=False)
        return h


class ChannelAttention(nn.Module):
    """``M_c = MLP(AvgP(F_m)) + MLP(MaxP(F_m))``, ``O_c = sigmoid(M_c) * F_c`` (eq. 2).

    With ``extractor=None`` ``F_m = F_c``: CBAM's channel attention; with a :class:`DepthwiseExtractor` it
    is DCAM. ``forward`` returns ``(O_c, M_c)`` with the pre-sigmoid ``M_c`` of shape (N, C, 1, 1).
    """

    def __init__(self, channels: int, reduction: int = 16, extractor: nn.Module | None = None) -> None:
        super().__init__()
        hidden = max(1, channels // reduction)
        self.extractor = extractor if extractor is not None else nn.Identity()
        self.mlp = nn.Sequential(
            nn.Linear(channels, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, channels)
        )

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        f = self.extractor(x)
        m = self.mlp(f.mean(dim=(2, 3))) + self.mlp(f.amax(dim=(2, 3)))
        m = m[:, :, None, None]
        return torch.sigmoid(m) * x, m


class SpatialAttention(nn.Module):
    """``M_s = Conv(Concat(AvgP(F_m), MaxP(F_m)))`` over channels, ``O_s = sigmoid(M_s) * F_s`` (eq. 3).

    With ``extractor=None`` it is CBAM's spatial attention, with a :class:`DepthwiseExtractor` DSAM.
    ``forward`` returns ``(O_s, M_s)`` with the pre-sigmoid ``M_s`` of shape (N, 1, H, W).
    """

    def __init__(self, channels: int, kernel_size: int = 3, extractor: nn.Module | None = None) -> None:
        super().__init__()
        self.extractor = extractor if extractor is not None else nn.Identity()
        self.conv = nn.Conv2d(2, 1, kernel_size, padding=kernel_size // 2, bias=False)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        f = self.extractor(x)
        pooled = torch.cat([f.mean(dim=1, keepdim=True), f.amax(dim=1, keepdim=True)], dim=1)
        m = self.conv(pooled)
        return torch.sigmoid(m) * x, m


class BlockAttention(nn.Module):
    """Channel then spatial attention; ``forward(x) -> (out, (M_c, M_s))`` with pre-sigmoid maps.

    ``kind="dbam"``: DCAM + DSAM (eq. 2-3, depthwise extractors); ``kind="cbam"``: CBAM (Woo et al. 2018,
    no extractors, 7x7 spatial convolution unless ``spatial_kernel`` says otherwise).
    """

    def __init__(
        self,
        channels: int,
        kind: str = "dbam",
        reduction: int = 16,
        dw_kernel: int = 1,
        spatial_kernel: int = 3,
    ) -> None:
        super().__init__()
        if kind not in ("dbam", "cbam"):
            raise UserError(f"unknown attention {kind!r}: choose one of {', '.join(ATTENTIONS)}")
        depthwise = kind == "dbam"
        self.channel = ChannelAttention(
            channels, reduction, DepthwiseExtractor(channels, dw_kernel) if depthwise else None
        )
        self.spatial = SpatialAttention(
            channels, spatial_kernel, DepthwiseExtractor(channels, dw_kernel) if depthwise else None
        )

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, AttentionMaps]:
        x, m_c = self.channel(x)
        x, m_s = self.spatial(x)
        return x, (m_c, m_s)


class MixedAttentionBlock(torchvision.models.resnet.BasicBlock):
    """MAB (eq. 1): torchvision's basic block with a :class:`BlockAttention` before the residual addition.

    ``attention=None`` is the plain basic block. ``forward`` returns ``(out, maps)`` (``maps`` None without
    attention).
    """

    def __init__(
        self,
        inplanes: int,
        planes: int,
        stride: int = 1,
        downsample: nn.Module | None = None,
        attention: nn.Module | None = None,
    ) -> None:
        super().__init__(inplanes, planes, stride=stride, downsample=downsample)
        self.attention = attention

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, AttentionMaps | None]:  # type: ignore[override]
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        maps = None
        if self.attention is not None:
            out, maps = self.attention(out)
        return self.relu(out + identity), maps


class _Chain(nn.Module):
    """Eq. 5/7: ``F_1 = DWConv(X_1)``, ``F_i = DWConv(F_{i-1}) + X_i``; returns ``Concat(F_1..F_4)``."""

    def __init__(self, channels: int, scales: int = 4) -> None:
        super().__init__()
        self.convs = nn.ModuleList(DepthwiseSeparableConv(channels, channels, 3) for _ in range(scales))

    def forward(self, parts: Sequence[torch.Tensor]) -> torch.Tensor:
        outs = [self.convs[0](parts[0])]
        for conv, x in zip(self.convs[1:], parts[1:]):
            outs.append(conv(outs[-1]) + x)
        return torch.cat(outs, dim=1)


class MixedChannelBlock(nn.Module):
    """MCB (eq. 4-8): 3x3 conv, then branch 1 (reduce to C/4, four copies) and branch 2 (four channel
    groups) through :class:`_Chain`; ``O = O_1 + O_2 + F``. Keeps the shape (N, C, H, W)."""

    SCALES = 4

    def __init__(self, channels: int) -> None:
        super().__init__()
        if channels % self.SCALES:
            raise UserError(f"a Mixed-Channel Block needs a multiple of 4 channels, got {channels}")
        quarter = channels // self.SCALES
        self.conv = nn.Sequential(
            nn.Conv2d(channels, channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(channels),
            nn.ReLU(inplace=True),
        )
        self.reduce = nn.Sequential(
            nn.Conv2d(channels, quarter, 1, bias=False), nn.BatchNorm2d(quarter), nn.ReLU(inplace=True)
        )
        self.branch1 = _Chain(quarter, self.SCALES)
        self.branch2 = _Chain(quarter, self.SCALES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = self.conv(x)
        reduced = self.reduce(f)
        o1 = self.branch1([reduced] * self.SCALES)
        o2 = self.branch2(torch.chunk(f, self.SCALES, dim=1))
        return o1 + o2 + x


def _conv_bn_relu(cin: int, cout: int, kernel: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, kernel, stride, kernel // 2, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    )


class GMENet(nn.Module):
    """GME-Net: local branch of MAB stages + optional global branch of MCB stages, added, pooled, classified.

    ``forward(x)`` returns logits; ``forward(x, return_maps=True)`` returns ``(logits, maps)`` with one
    ``(M_c, M_s)`` pair of pre-sigmoid maps per Mixed-Attention Block (empty without attention).
    ``attention``: dbam (the paper), cbam (Table 4-5 ablation) or none; ``global_branch=False`` drops the
    MCB branch. See the module docstring for the reading of the architecture.
    """

    def __init__(
        self,
        num_classes: int,
        input_size: int,
        in_channels: int = 3,
        *,
        width: int,
        layers: Sequence[int],
        attention: str,
        global_branch: bool,
        global_blocks: Sequence[int],
        reduction: int,
        dw_kernel: int,
        spatial_kernel: int,
        stem: str,
        dropout: float,
    ) -> None:
        super().__init__()
        if attention not in ATTENTIONS:
            raise UserError(f"unknown attention {attention!r}: choose one of {', '.join(ATTENTIONS)}")
        layers = list(layers)
        if global_branch and len(global_blocks) != len(layers):
            raise UserError(
                f"global_blocks {list(global_blocks)} needs one entry per stage of layers {layers}"
            )
        self.attention_kind = attention
        widths = [width * 2**i for i in range(len(layers))]
        strides = [1] + [2] * (len(layers) - 1)
        kind = choose_stem(stem, input_size)
        if kind == "imagenet":
            self.stem = nn.Sequential(_conv_bn_relu(in_channels, width, 7, 2), nn.MaxPool2d(3, 2, 1))
        elif kind == "conv3_pool":
            self.stem = nn.Sequential(_conv_bn_relu(in_channels, width, 3), nn.MaxPool2d(3, 2, 1))
        else:
            self.stem = _conv_bn_relu(in_channels, width, 3)

        blocks: list[MixedAttentionBlock] = []
        cin = width
        for planes, stride, n in zip(widths, strides, layers):
            for b in range(n):
                s = stride if b == 0 else 1
                down = None
                if s != 1 or cin != planes:
                    down = nn.Sequential(nn.Conv2d(cin, planes, 1, s, bias=False), nn.BatchNorm2d(planes))
                att = None
                if attention != "none":
                    att = BlockAttention(planes, attention, reduction, dw_kernel, spatial_kernel)
                blocks.append(MixedAttentionBlock(cin, planes, s, down, att))
                cin = planes
        self.local_blocks = nn.ModuleList(blocks)

        self.global_branch: nn.Sequential | None = None
        if global_branch:
            stages: list[nn.Module] = []
            cin = width
            for planes, stride, n in zip(widths, strides, global_blocks):
                if stride != 1 or cin != planes:
                    stages.append(_conv_bn_relu(cin, planes, 3, stride))
                stages.extend(MixedChannelBlock(planes) for _ in range(n))
                cin = planes
            self.global_branch = nn.Sequential(*stages)
        self.feature_dim = widths[-1]
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.fc = nn.Linear(self.feature_dim, num_classes)
        for m in self.modules():  # torchvision ResNet's initialisation
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def feature_map(self, x: torch.Tensor) -> tuple[torch.Tensor, list[AttentionMaps]]:
        """The fused (local + global) last feature map and every MAB's pre-sigmoid attention maps."""
        x = self.stem(x)
        local = x
        maps: list[AttentionMaps] = []
        for block in self.local_blocks:
            local, m = block(local)
            if m is not None:
                maps.append(m)
        if self.global_branch is not None:
            local = local + self.global_branch(x)
        return local, maps

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return torch.flatten(F.adaptive_avg_pool2d(self.feature_map(x)[0], 1), 1)

    def forward(
        self, x: torch.Tensor, return_maps: bool = False
    ) -> torch.Tensor | tuple[torch.Tensor, list[AttentionMaps]]:
        fmap, maps = self.feature_map(x)
        logits = self.fc(self.dropout(torch.flatten(F.adaptive_avg_pool2d(fmap, 1), 1)))
        return (logits, maps) if return_maps else logits

"""torchvision classifiers the EFC paper compares with (its Tables 1 and 4), adapted to small faces.

``build_zoo(arch, num_classes, input_size, small_input=True)``. With ``small_input=False`` the network is
torchvision's own (ImageNet strides; e.g. MobileNetV2 reduces 32 px to a 1x1 map). With
``small_input=True`` (default) the early strides are reduced so that 32 px inputs keep a useful map and
20 / 10 / 5 px inputs still run:

=====================  ===========================================================  ============  =========
arch                   change                                                       total stride  32 px ->
=====================  ===========================================================  ============  =========
mobilenet_v2           stem conv ``features[0][0]`` stride 2 -> 1                   32 -> 16      2x2
mobilenet_v3_small     stem conv ``features[0][0]`` stride 2 -> 1                   32 -> 16      2x2
mobilenet_v3_large     stem conv ``features[0][0]`` stride 2 -> 1                   32 -> 16      2x2
shufflenet_v2_x1_0     stem conv ``conv1[0]`` stride 2 -> 1, max-pool removed        32 -> 8       4x4
resnet18               lrfer's ``conv3`` stem: 3x3 conv stride 1, no max-pool       32 -> 8       4x4
vgg11, vgg13           first max-pool removed, the others ``ceil_mode=True``;       32 -> 16      2x2
                       global average pool and a 512 -> 4096 -> 4096 -> classes head
=====================  ===========================================================  ============  =========

VGG gets, in both modes, global average pooling and a head on the pooled 512-vector: that is what the paper's
VGG figures imply (VGG11: 28,137,607 parameters and 0.344 GFLOPs at 32 px; here 28,131,719 and 0.35 with
``small_input=False``; torchvision's 7x7x512 head would have 128.8 M). Parameter counts do not depend on
``small_input``. Apart from the VGG head, only strides and pools change: all weights keep torchvision's
shapes, so torchvision's definitions are reused, not copied.
"""

from __future__ import annotations

from torch import nn

from lrfer.core.compat import torchvision
from lrfer.core.errors import UserError
from lrfer.models.pretrained import load_into
from lrfer.models.resnet import build_resnet

ZOO_ARCHS = (
    "mobilenet_v2",
    "mobilenet_v3_small",
    "mobilenet_v3_large",
    "shufflenet_v2_x1_0",
    "resnet18",
    "vgg11",
    "vgg13",
)

#: (classifier name prefixes, first convolution) of each torchvision architecture, for ``weights``.
ZOO_HEAD_STEM = {
    "mobilenet_v2": (("classifier.",), ("features.0.0.weight",)),
    "mobilenet_v3_small": (("classifier.",), ("features.0.0.weight",)),
    "mobilenet_v3_large": (("classifier.",), ("features.0.0.weight",)),
    "shufflenet_v2_x1_0": (("fc.",), ("conv1.0.weight",)),
    "vgg11": (("classifier.",), ("features.0.weight",)),
    "vgg13": (("classifier.",), ("features.0.weight",)),
}


def _conv_like(conv: nn.Conv2d, in_channels: int, stride: int) -> nn.Conv2d:
    """A fresh convolution like ``conv`` with another input width and stride."""
    return nn.Conv2d(
        in_channels,
        conv.out_channels,
        conv.kernel_size,
        stride=stride,
        padding=conv.padding,
        groups=conv.groups,
        bias=conv.bias is not None,
    )


def _adapt_first_conv(parent: nn.Module, key: int | str, in_channels: int, small_input: bool) -> None:
    conv = parent[key] if isinstance(key, int) else getattr(parent, key)
    stride = 1 if small_input else conv.stride[0]
    if in_channels == conv.in_channels and stride == conv.stride[0]:
        return
    new = _conv_like(conv, in_channels, stride)
    if isinstance(key, int):
        parent[key] = new
    else:
        setattr(parent, key, new)


def _adapt_vgg(net: nn.Module, in_channels: int, small_input: bool) -> nn.Module:
    _adapt_first_conv(net.features, 0, in_channels, False)
    net.avgpool = nn.AdaptiveAvgPool2d(1)  # both modes: the 512-d head the paper's counts imply
    net.classifier[0] = nn.Linear(512, net.classifier[0].out_features)
    if small_input:
        pools = [i for i, m in enumerate(net.features) if isinstance(m, nn.MaxPool2d)]
        for i in pools[1:]:
            net.features[i] = nn.MaxPool2d(kernel_size=2, stride=2, ceil_mode=True)
        net.features[pools[0]] = nn.Identity()
    return net


def build_zoo(
    num_classes: int,
    input_size: int,
    arch: str = "mobilenet_v2",
    small_input: bool = True,
    in_channels: int = 3,
    weights: str | None = None,
) -> nn.Module:
    """torchvision ``arch`` with ``num_classes`` outputs, adapted to small inputs (module docstring).

    ``weights``: a local checkpoint of the same torchvision architecture (``model.weights``), loaded with
    :func:`lrfer.models.pretrained.load_into`: a classifier of another size is dropped, the first
    convolution is kept as initialised when its shape differs (other input channels).
    """
    if arch not in ZOO_ARCHS:
        raise UserError(f"unknown zoo arch {arch!r}: choose one of {', '.join(ZOO_ARCHS)}")
    if arch == "resnet18":
        return build_resnet(
            num_classes,
            input_size,
            "resnet18",
            stem="conv3" if small_input else "imagenet",
            in_channels=in_channels,
            weights=weights,
        )
    net = torchvision.models.get_model(arch, weights=None, num_classes=num_classes)
    if arch.startswith("mobilenet"):
        _adapt_first_conv(net.features[0], 0, in_channels, small_input)
    elif arch.startswith("shufflenet"):
        _adapt_first_conv(net.conv1, 0, in_channels, small_input)
        if small_input:
            net.maxpool = nn.Identity()
    else:
        _adapt_vgg(net, in_channels, small_input)
    if weights:
        head, stem = ZOO_HEAD_STEM[arch]
        load_into(net, weights, head=head, stem=stem, label=arch)
    return net

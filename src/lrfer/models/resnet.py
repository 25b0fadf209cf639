"""torchvision ResNets with the stem adapted to the input size of small faces.

Stems (``stem=``):

* ``imagenet`` — torchvision's 7x7/2 convolution + 3x3/2 max-pool (total stride 4), for 64-224 px inputs;
* ``conv3_pool`` — 3x3/1 convolution + 3x3/2 max-pool (total stride 2), for 32-64 px inputs;
* ``conv3`` — 3x3/1 convolution, no max-pool (total stride 1), the CIFAR-style stem the residual-voting
  paper uses for 48 px inputs;
* ``auto`` — ``imagenet`` from 64 px up, ``conv3_pool`` from 32 px, ``conv3`` below.
"""

from __future__ import annotations

import logging

import torch
from torch import nn

from lrfer.core.compat import torchvision
from lrfer.core.errors import UserError
from lrfer.models.pretrained import load_resnet_weights

STEMS = ("auto", "imagenet", "conv3_pool", "conv3")
ARCHS = ("resnet18", "resnet34", "resnet50")
AUTO_IMAGENET_FROM = 64
AUTO_POOL_FROM = 32
log = logging.getLogger(__name__)


def choose_stem(stem: str, input_size: int) -> str:
    if stem not in STEMS:
        raise UserError(f"unknown ResNet stem {stem!r}: choose one of {', '.join(STEMS)}")
    if stem != "auto":
        return stem
    if input_size >= AUTO_IMAGENET_FROM:
        return "imagenet"
    return "conv3_pool" if input_size >= AUTO_POOL_FROM else "conv3"


def adapt_stem(net: nn.Module, stem: str, in_channels: int = 3) -> nn.Module:
    """Replace ``conv1``/``maxpool`` of a torchvision ResNet in place for the given stem."""
    width = net.conv1.out_channels
    if stem in ("conv3_pool", "conv3"):
        net.conv1 = nn.Conv2d(in_channels, width, kernel_size=3, stride=1, padding=1, bias=False)
    elif in_channels != 3:
        net.conv1 = nn.Conv2d(in_channels, width, kernel_size=7, stride=2, padding=3, bias=False)
    if stem == "conv3":
        net.maxpool = nn.Identity()
    return net


class ResNetClassifier(nn.Module):
    """A torchvision ResNet as ``features(x) -> (N, D)`` plus a linear ``fc`` head.

    ``forward`` returns logits; ``features`` is what feature-level methods (domain adversarial training,
    feature super-resolution) attach to.
    """

    compiled_methods = ("features",)

    def __init__(self, net: nn.Module, num_classes: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.feature_dim = net.fc.in_features
        net.fc = nn.Identity()
        self.backbone = net
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.fc = nn.Linear(self.feature_dim, num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.dropout(self.features(x)))


def build_resnet(
    num_classes: int,
    input_size: int,
    arch: str = "resnet18",
    stem: str = "auto",
    pretrained: bool = False,
    dropout: float = 0.0,
    in_channels: int = 3,
    weights: str | None = None,
) -> ResNetClassifier:
    """A torchvision ResNet for ``input_size`` px faces (see the module docstring for the stems).

    ``pretrained=True`` loads torchvision's ImageNet weights: torchvision downloads them into the torch hub
    cache when the machine is online (lrfer itself downloads nothing), or finds them there offline. The
    stem is kept when it fits, replaced (freshly initialised) otherwise.

    ``weights=PATH`` loads a local checkpoint instead (``model.weights``, e.g. the MS-Celeb-1M ResNet-18 of
    SCN / DAN / EAC), see :mod:`lrfer.models.pretrained`: a classifier of another size is dropped, every
    backbone tensor must fit, a ``conv1`` that does not fit the stem keeps its initialisation (logged).
    ``weights`` wins over ``pretrained``.
    """
    if arch not in ARCHS:
        raise UserError(f"unknown ResNet arch {arch!r}: choose one of {', '.join(ARCHS)}")
    imagenet = None
    if pretrained and not weights:
        imagenet = torchvision.models.get_model_weights(arch).DEFAULT
    try:
        net = torchvision.models.get_model(arch, weights=imagenet)
    except Exception as err:  # offline and not in the hub cache
        raise UserError(
            f"cannot load torchvision's ImageNet weights for {arch} ({type(err).__name__}: offline and not "
            "in the torch hub cache?): set model.pretrained=false or give a local file: model.weights=PATH"
        ) from None
    chosen = choose_stem(stem, input_size)
    if imagenet is not None and (chosen != "imagenet" or in_channels != 3):
        log.warning(
            "model.pretrained: the %s stem (%d input channels) replaces ImageNet's 7x7 stride-2 conv1, which "
            "keeps no pretrained weights",
            chosen,
            in_channels,
        )
    adapt_stem(net, chosen, in_channels)
    classifier = ResNetClassifier(net, num_classes, dropout)
    if weights:
        load_resnet_weights(classifier, weights, label=arch)
    return classifier

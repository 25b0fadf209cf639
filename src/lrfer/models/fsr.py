"""Networks of FSR-FER (paper 001, sec. 3.1 and 3.4): the feature generator G, the critic D, and the
frozen feature classifiers whose features G super-resolves.

* :class:`RRDBGenerator` — ESRGAN's residual-in-residual dense blocks with reduced channels, no
  upsampling: a 3x3 conv to ``channels`` (32), ``blocks`` (6) RRDBs of 3 dense blocks (growth 16,
  LeakyReLU 0.2, residual scale 0.2), a trunk conv with the trunk skip, a last conv back to the input's
  channels, and a global skip from the input, so ``G(F)`` has the shape of ``F`` and starts close to
  the identity (the generator learns the residual between low- and high-resolution features, as in
  Perceptual GAN).
* :class:`FeatureCritic` — ESRGAN's discriminator without BatchNorm: per level a 3x3 stride-1 conv and a
  4x4 stride-2 conv (8, 16, 32, 64, 64 channels, LeakyReLU 0.2), dense 100, dense 1; a level whose
  input side is below 4 keeps its resolution (3x3 stride 1 instead of 4x4 stride 2), so small feature
  maps (a ResNet's 2x2) are accepted. It outputs an unbounded score (WGAN-div).
* :class:`ResNetFeatureClassifier` — a torchvision ResNet split like CovPoolFER: ``feature_map`` is the
  last residual stage's map, ``embed`` the global average pool, ``classify`` the fc layer.

Every feature classifier has ``feature_map(x) -> F``, ``embed(F) -> e`` (``C()`` of eq. 9) and
``classify(e) -> logits``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from lrfer.core.errors import UserError
from lrfer.models.covpool import CovPoolFER
from lrfer.models.resnet import ResNetClassifier, build_resnet

EXTRACTORS = ("covpool", "resnet18", "resnet34", "resnet50")


def _scaled_init(module: nn.Module, scale: float) -> None:
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, a=0, mode="fan_in")
            m.weight.data.mul_(scale)
            if m.bias is not None:
                nn.init.zeros_(m.bias)


class DenseBlock(nn.Module):
    """ESRGAN's residual dense block: 5 convs with dense connections, output scaled by ``res_scale``."""

    def __init__(self, channels: int, growth: int, res_scale: float = 0.2) -> None:
        super().__init__()
        self.convs = nn.ModuleList(
            nn.Conv2d(channels + i * growth, growth if i < 4 else channels, 3, padding=1) for i in range(5)
        )
        self.act = nn.LeakyReLU(0.2, inplace=True)
        self.res_scale = res_scale
        _scaled_init(self, 0.1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feats = [x]
        for i, conv in enumerate(self.convs):
            out = conv(torch.cat(feats, 1))
            if i < 4:
                feats.append(self.act(out))
        return x + self.res_scale * out


class RRDB(nn.Module):
    """Residual-in-residual dense block: 3 dense blocks and a scaled residual."""

    def __init__(self, channels: int, growth: int, res_scale: float = 0.2) -> None:
        super().__init__()
        self.body = nn.Sequential(*(DenseBlock(channels, growth, res_scale) for _ in range(3)))
        self.res_scale = res_scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.res_scale * self.body(x)


class RRDBGenerator(nn.Module):
    """``F_sr = G(F_lr)`` (eq. 3): RRDBs on the feature map, output of the input's shape."""

    def __init__(
        self, in_channels: int, channels: int = 32, blocks: int = 6, growth: int = 16, res_scale: float = 0.2
    ) -> None:
        super().__init__()
        self.conv_first = nn.Conv2d(in_channels, channels, 3, padding=1)
        self.trunk = nn.Sequential(*(RRDB(channels, growth, res_scale) for _ in range(blocks)))
        self.conv_trunk = nn.Conv2d(channels, channels, 3, padding=1)
        self.conv_last = nn.Conv2d(channels, in_channels, 3, padding=1)
        _scaled_init(self.conv_last, 0.1)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        fea = self.conv_first(features)
        fea = fea + self.conv_trunk(self.trunk(fea))
        return features + self.conv_last(fea)


class FeatureCritic(nn.Module):
    """WGAN-div critic ``D(F)`` on (N, C, size, size) features (no BatchNorm; see the module docstring)."""

    def __init__(
        self, in_channels: int, size: int, channels: Sequence[int] = (8, 16, 32, 64, 64), hidden: int = 100
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        prev, side = in_channels, size
        for width in channels:
            layers += [nn.Conv2d(prev, width, 3, padding=1), nn.LeakyReLU(0.2, inplace=True)]
            if side >= 4:
                layers.append(nn.Conv2d(width, width, 4, stride=2, padding=1))
                side //= 2
            else:
                layers.append(nn.Conv2d(width, width, 3, padding=1))
            layers.append(nn.LeakyReLU(0.2, inplace=True))
            prev = width
        self.features = nn.Sequential(*layers)
        self.head = nn.Sequential(
            nn.Flatten(),
            nn.Linear(prev * side * side, hidden),
            nn.LeakyReLU(0.2, inplace=True),
            nn.Linear(hidden, 1),
        )

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """One score per sample, shape (N,)."""
        return self.head(self.features(features)).squeeze(1)


class ResNetFeatureClassifier(nn.Module):
    """A :class:`~lrfer.models.resnet.ResNetClassifier` split into feature_map / embed / classify.

    ``feature_map`` is the output of ``layer4`` (512 x 2 x 2 for 64 px faces with the ImageNet stem);
    ``embed`` is its global average pool (the 512-d vector the fc layer reads), used for the perceptual
    loss in place of CovPoolFER's fc-128 output.
    """

    compiled_methods = ("feature_map", "embed", "classify")

    def __init__(self, net: ResNetClassifier) -> None:
        super().__init__()
        self.net = net
        self.embed_dim = net.feature_dim
        self.prelogit_dim = net.feature_dim

    def feature_map(self, x: torch.Tensor) -> torch.Tensor:
        b = self.net.backbone
        x = b.maxpool(b.relu(b.bn1(b.conv1(x))))
        return b.layer4(b.layer3(b.layer2(b.layer1(x))))

    def embed(self, features: torch.Tensor) -> torch.Tensor:
        return torch.flatten(self.net.backbone.avgpool(features), 1)

    def prelogits(self, embedding: torch.Tensor) -> torch.Tensor:
        """What the fc layer reads (before its dropout): the pooled embedding itself."""
        return embedding

    def logits(self, prelogits: torch.Tensor) -> torch.Tensor:
        return self.net.fc(self.net.dropout(prelogits))

    def classify(self, embedding: torch.Tensor) -> torch.Tensor:
        return self.logits(self.prelogits(embedding))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classify(self.embed(self.feature_map(x)))


def build_feature_classifier(
    name: str,
    num_classes: int,
    input_size: int,
    in_channels: int = 3,
    covpool: dict | None = None,
    weights: str | None = None,
) -> nn.Module:
    """``covpool`` (CovPoolFER with the ``covpool`` options) or a torchvision ResNet (``resnet18`` ...).

    ``weights`` (``model.weights``) initialises a ResNet extractor from a local checkpoint before stage 1.
    """
    if name == "covpool":
        return CovPoolFER(num_classes, in_channels=in_channels, **(covpool or {}))
    if name in EXTRACTORS:
        return ResNetFeatureClassifier(
            build_resnet(num_classes, input_size, arch=name, in_channels=in_channels, weights=weights)
        )
    raise UserError(f"unknown method.extractor {name!r}: choose one of {', '.join(EXTRACTORS)}")


@torch.no_grad()
def feature_shape(extractor: nn.Module, in_channels: int, input_size: int) -> tuple[int, int, int]:
    """(C, H, W) of ``extractor.feature_map`` for ``input_size`` px inputs (probed in eval mode)."""
    was_training = extractor.training
    extractor.eval()
    shape = extractor.feature_map(torch.zeros(2, in_channels, input_size, input_size)).shape[1:]
    extractor.train(was_training)
    if shape[-1] != shape[-2]:
        raise ValueError(f"the extractor's feature map is not square: {tuple(shape)}")
    return int(shape[0]), int(shape[1]), int(shape[2])

"""``zoo``: a torchvision classifier (MobileNetV2/V3, ShuffleNetV2, ResNet-18, VGG11/13) adapted to small
faces, trained with cross-entropy — the comparison networks of the EFC paper's Tables 1 and 4
(``method=zoo method.arch=mobilenet_v2``). The adaptations per architecture are in :mod:`lrfer.models.zoo`.
"""

from __future__ import annotations

from typing import Any

import torch

from lrfer.methods.base import Method, MethodContext, model_weights
from lrfer.models.zoo import build_zoo


class Zoo(Method):
    """A torchvision classifier + cross-entropy. ``small_input=True`` reduces the early strides (per arch in
    :mod:`lrfer.models.zoo`); ``False`` keeps torchvision's strides, as the paper's Keras networks. VGG
    always gets the pooled 512-d head the paper's VGG counts imply."""

    def __init__(self, context: MethodContext, *, arch: str, small_input: bool, **common: Any) -> None:
        """``arch`` and ``small_input`` choose the network; ``common``: ``epochs`` and ``label_smoothing``."""
        super().__init__(context, **common)
        self.net = build_zoo(
            context.num_classes,
            context.input_size,
            arch,
            small_input,
            in_channels=context.in_channels,
            weights=model_weights(context),
        )

    def predict(self, images: torch.Tensor, factor: torch.Tensor | None = None) -> torch.Tensor:
        return self.net(images)

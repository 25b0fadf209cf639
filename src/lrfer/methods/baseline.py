"""``baseline``: one classifier (default torchvision ResNet-18) trained with cross-entropy on the
``degrade.train`` mix and evaluated at every ``degrade.test`` degradation.

With ``degrade.train=[x1]`` it is the usual high-resolution model; with several factors it is the
multi-resolution training baseline (DRGFER's MSTrain).
"""

from __future__ import annotations

import torch

from lrfer.methods.base import Method, MethodContext
from lrfer.models import build_model


class Baseline(Method):
    def __init__(self, context: MethodContext, *, epochs: int, label_smoothing: float) -> None:
        super().__init__(context, epochs=epochs, label_smoothing=label_smoothing)
        self.net = build_model(
            context.model, context.num_classes, context.input_size, in_channels=context.in_channels
        )

    def predict(self, images: torch.Tensor, factor: torch.Tensor | None = None) -> torch.Tensor:
        return self.net(images)

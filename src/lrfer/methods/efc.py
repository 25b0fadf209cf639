"""``efc``: the lightweight EFC network (Efficient Feature Convolution blocks with spatial and channel
attention, S-Swish) trained with categorical cross-entropy (Section 3.3 of "Low-resolution facial emotion
recognition on low-cost devices").

The network and every width choice are in :mod:`lrfer.models.efc`; the paper's recipe (Adam 1e-4, LR x0.75
when training accuracy has not improved for 20 epochs, batch 128, 50 epochs on KDEF) is in
configs/experiment/efc/*.yaml. The network sees the small image itself (``degrade.resize_back=false``
in the experiment configs): the paper trains and tests one model per resolution and could not run its
competitors at 20 and 10 px "due to feature map dimensional adjustments", which only happens when the
input really is that small.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from lrfer.methods.base import Method, MethodContext
from lrfer.models.efc import build_efc


class EFC(Method):
    """EFC network + categorical cross-entropy (Section 3.3); ``predict`` returns the classifier's logits.

    Choices the paper leaves open: widths/depth (``stem_channels``, ``blocks``: 24 -> 32, 64, 128, 224 with
    expansion 2; 506,643 parameters, 510,643 with BN statistics, 0.0067 GFLOPs at 32 px), S-Swish
    ``beta=1``, SP_att on the block input with the depthwise stride, BN after the attention products (see
    :mod:`lrfer.models.efc`). Recipe choices (configs/experiment/efc/*.yaml): the small face is fed as is
    (``degrade.resize_back=false``), linear interpolation without antialiasing, last epoch tested.
    """

    def __init__(
        self,
        context: MethodContext,
        *,
        stem_channels: int,
        blocks: Sequence[Sequence[int]],
        head_channels: int,
        beta: float,
        **common: Any,
    ) -> None:
        """The network's options (configs/method/efc.yaml); ``common``: ``epochs`` and ``label_smoothing``."""
        super().__init__(context, **common)
        self.net = build_efc(
            context.num_classes,
            context.input_size,
            in_channels=context.in_channels,
            stem_channels=stem_channels,
            blocks=blocks,
            head_channels=head_channels,
            beta=beta,
        )

    def predict(self, images: torch.Tensor, factor: torch.Tensor | None = None) -> torch.Tensor:
        return self.net(images)

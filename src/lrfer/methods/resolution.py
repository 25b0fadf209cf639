"""Helpers shared by the multi-resolution methods (DRGFER and its baselines RA-BN, DA, MSTrain).

* :class:`ResolutionSet` — the list of trained resolutions ("factors"): labels, effective downsampling
  factors, and the nearest-factor index of any image (in log scale, so x3 goes to x4, 14 px of 100 px =
  x7.14 goes to x8, x12 and x16 go to x8).
* :func:`build_network` — a classifier from the run's ``model/`` config (ResNet-18 by default).
* :func:`resolution_step` — the Resolution Recognition Network's loss (DRGFER eq. 1-2). An RRN stage
  selects its best epoch on ``rrn_acc`` (``Stage(monitor="rrn_acc")``).
* :class:`ResolutionMethod` — the options and the RRN stage that DRGFER and RA-BN share.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from lrfer.core.errors import UserError
from lrfer.data.degrade import Degradation, parse_degradations
from lrfer.methods.base import Batch, Method, MethodContext, Stage
from lrfer.models import build_model
from lrfer.models.resnet import build_resnet


@dataclass(frozen=True)
class ResolutionSet:
    """The resolutions a method is trained on, in order (index k = class k of the RRN, expert k, BN k)."""

    degradations: tuple[Degradation, ...]
    factors: tuple[float, ...]

    @classmethod
    def from_config(cls, labels: Sequence[str] | None, context: MethodContext) -> ResolutionSet:
        """``labels`` (e.g. ``[x1, x2, x4, x6, x8]``) or, when None, the run's ``degrade.train``."""
        degs = parse_degradations(list(labels)) if labels is not None else list(context.train_degradations)
        for d in degs:
            d.output_size(context.native_size, context.native_size)  # a size larger than the faces stops here
        factors = tuple(d.effective_factor(context.native_size) for d in degs)
        if len({round(f, 6) for f in factors}) != len(factors):
            raise UserError(f"the resolutions {[d.label for d in degs]} repeat a downsampling factor")
        return cls(tuple(degs), factors)

    @property
    def labels(self) -> list[str]:
        return [d.label for d in self.degradations]

    def __len__(self) -> int:
        return len(self.degradations)

    def index(self, factor: torch.Tensor) -> torch.Tensor:
        """Index of the nearest trained resolution (log scale) of every image's ``factor`` (N,)."""
        return Method.factor_index(factor, self.factors)


def build_network(context: MethodContext, num_outputs: int) -> nn.Module:
    """A classifier with ``num_outputs`` outputs from ``context.model`` (ResNet-18 when there is none)."""
    if context.model is None:
        return build_resnet(num_outputs, context.input_size, in_channels=context.in_channels)
    return build_model(context.model, num_outputs, context.input_size, in_channels=context.in_channels)


def resolution_step(rrn: nn.Module, batch: Batch, resolutions: ResolutionSet) -> dict[str, torch.Tensor]:
    """RRN training loss: softmax (eq. 1) + cross-entropy (eq. 2) against the image's resolution class.

    The target is the nearest trained resolution of ``batch['factor']``, which for a stage trained on
    exactly ``resolutions`` is ``batch['degradation']``. No ``logits`` are returned: the trainer's
    training accuracy compares logits with expression labels, so the RRN's own accuracy is ``rrn_acc``.
    """
    target = resolutions.index(batch["factor"])
    scores = rrn(batch["image"])
    loss = F.cross_entropy(scores.float(), target)
    return {"loss": loss, "rrn_acc": (scores.argmax(dim=1) == target).float().mean().detach()}


class ResolutionMethod(Method):
    """A method trained on a set of resolutions (``factors``; None = ``degrade.train``) with a Resolution
    Recognition Network trained in its own stage of ``rrn_epochs`` epochs (None = ``epochs``)."""

    def __init__(
        self,
        context: MethodContext,
        *,
        epochs: int,
        rrn_epochs: int | None,
        factors: Sequence[str] | None,
        label_smoothing: float,
    ) -> None:
        super().__init__(context, epochs=epochs, label_smoothing=label_smoothing)
        self.resolutions = ResolutionSet.from_config(factors, context)
        self.rrn_epochs = int(rrn_epochs) if rrn_epochs is not None else int(epochs)

    def rrn_stage(self, name: str) -> Stage:
        """The RRN's stage: every trained resolution, best epoch by ``rrn_acc``."""
        labels = self.resolutions.labels
        return Stage(
            name, epochs=self.rrn_epochs, train_degrade=labels, val_degrade=labels, monitor="rrn_acc"
        )

"""``mstrain``: multi-scale training (MSTrain), the DRGFER paper's single-model baseline: one classifier
(ResNet-18) trained with cross-entropy on a mix of resolutions.
"""

from __future__ import annotations

from collections.abc import Sequence

from lrfer.methods.base import MethodContext, Stage
from lrfer.methods.baseline import Baseline
from lrfer.methods.resolution import ResolutionSet


class MultiScaleTraining(Baseline):
    """MSTrain: :class:`~lrfer.methods.baseline.Baseline` trained and validated on ``factors``.

    Each training face is drawn at one of the resolutions (uniformly, a new draw every epoch:
    ``degrade.train_mode=random``); model selection uses the mean validation accuracy over them. ``factors``
    defaults to the paper's x1, x2, x4, x6, x8 so that ``python train.py method=mstrain`` is MSTrain with the
    default degradation config; ``factors: null`` trains on ``degrade.train`` instead (then it is exactly
    ``method=baseline``, which is how the factor subsets of the paper's Table 3 are swept).
    """

    def __init__(
        self,
        context: MethodContext,
        *,
        epochs: int,
        factors: Sequence[str] | None,
        label_smoothing: float,
    ) -> None:
        super().__init__(context, epochs=epochs, label_smoothing=label_smoothing)
        self.labels = ResolutionSet.from_config(factors, context).labels if factors is not None else None

    def stages(self) -> list[Stage]:
        return [Stage("train", epochs=self.epochs, train_degrade=self.labels, val_degrade=self.labels)]

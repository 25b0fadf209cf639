"""``rabn``: resolution-aware BatchNorm (Zhu et al., "Dynamic Resolution Network", NeurIPS 2021), the RA-BN
baseline of DRGFER's Table 1-2: one ResNet-18 whose convolution and FC weights are shared by all
resolutions and whose every BatchNorm is replaced by one BatchNorm per resolution.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import nn

from lrfer.core.errors import UserError
from lrfer.methods.base import Batch, MethodContext, Stage
from lrfer.methods.resolution import ResolutionMethod, build_network, resolution_step
from lrfer.models.rabn import ResolutionAwareBN

BN_SELECT = ("true_factor", "rrn")


class ResolutionAwareBNMethod(ResolutionMethod):
    """RA-BN: shared weights, one BatchNorm per trained resolution.

    Training (stage ``train``): every batch mixes the K resolutions (one random resolution per face) and
    is split per resolution; each group goes through the network with its own BatchNorms (so each BN's
    batch statistics and running statistics come from its resolution only); the cross-entropy is taken
    over the whole batch, one backward pass, one optimiser step.

    Choices the paper leaves open (also in ``experiments/drgfer/README.md``):

    * The BatchNorm used at test time (``bn_select``): ``true_factor`` (default) takes the BN of the
      image's nearest trained resolution (log scale; the DRGFER paper evaluates RA-BN at each known
      ratio); ``rrn`` adds a stage ``rrn`` that trains a ResNet-18 Resolution Recognition Network (as in
      DRGFER, eq. 1-2) whose argmax picks the BN, so that no factor is needed at test time, and reports
      ``rrn_acc``. ``predict(images, factor=None)`` needs ``bn_select=rrn``.
    * The resolutions are ``factors`` (default x1, x2, x4, x6, x8), ``null`` = ``degrade.train``.
    * Every BN of a resolution starts from the same initialisation (weight 1, bias 0).
    """

    extra_metrics = ("rrn_acc",)

    def __init__(self, context: MethodContext, *, bn_select: str, **common: Any) -> None:
        """Every option is a ``method.*`` key of configs/method/rabn.yaml; ``common`` holds those every
        :class:`~lrfer.methods.resolution.ResolutionMethod` has (epochs, rrn_epochs, factors, ...)."""
        if bn_select not in BN_SELECT:
            raise UserError(f"unknown method.bn_select {bn_select!r}: choose true_factor or rrn")
        super().__init__(context, **common)
        self.bn_select = bn_select
        self.net = ResolutionAwareBN(build_network(context, context.num_classes), len(self.resolutions))
        self.rrn = build_network(context, len(self.resolutions)) if bn_select == "rrn" else None

    def stages(self) -> list[Stage]:
        labels = self.resolutions.labels
        # Under torchrun a rank's share may hold no face of some resolution: that resolution's BatchNorms get
        # no gradient there (find_unused_parameters) and must not be synchronised (the other ranks would
        # wait for a rank that never runs them).
        train = Stage(
            "train",
            epochs=self.epochs,
            train_degrade=labels,
            val_degrade=labels,
            find_unused_parameters=True,
            sync_bn=False,
        )
        stages = [train]
        if self.rrn is not None:
            stages.append(self.rrn_stage("rrn"))
        return stages

    def stage_parameters(self, stage: Stage, step: str) -> Iterable[nn.Parameter]:
        module = self.rrn if stage.name == "rrn" else self.net
        return module.parameters()

    def training_step(self, batch: Batch, stage: Stage, step: str) -> dict[str, torch.Tensor]:
        if stage.name == "rrn":
            return resolution_step(self.rrn, batch, self.resolutions)
        logits = self.net(batch["image"], self.resolutions.index(batch["factor"]))
        return {"loss": self.classification_loss(logits, batch), "logits": logits.detach()}

    def branch(self, images: torch.Tensor, factor: torch.Tensor | None) -> torch.Tensor:
        """The BatchNorm index of every image, as ``bn_select`` says."""
        if self.rrn is not None:
            return self.rrn(images).argmax(dim=1)
        if factor is None:
            raise UserError(
                "method.bn_select=true_factor needs each image's factor: train with method.bn_select=rrn"
            )
        return self.resolutions.index(factor)

    def predict(self, images: torch.Tensor, factor: torch.Tensor | None = None) -> torch.Tensor:
        return self.net(images, self.branch(images, factor))

    def evaluate_step(self, batch: Batch, stage: Stage | None = None) -> dict[str, torch.Tensor]:
        """The ``train`` stage is validated with the true factor's BN; the ``rrn`` stage with the BN the RRN
        picks, reporting ``rrn_acc``, which it monitors (as DRGFER's); the test uses ``bn_select`` (and
        reports ``rrn_acc`` when there is an RRN)."""
        truth = self.resolutions.index(batch["factor"])
        if stage is not None and stage.name == "train":
            return {"logits": self.net(batch["image"], truth)}
        branch = self.branch(batch["image"], batch["factor"])
        logits = self.net(batch["image"], branch)
        if self.rrn is None:
            return {"logits": logits}
        return {"logits": logits, "rrn_acc": (branch == truth).float()}

    def evaluation_values(self, stage: Stage | None = None) -> tuple[str, ...]:
        if (stage is not None and stage.name == "train") or self.rrn is None:
            return ()
        return ("rrn_acc",)

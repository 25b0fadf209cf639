"""``da``: domain-adversarial training across resolutions (Ganin & Lempitsky, ICML 2015), the DA baseline
of DRGFER's Table 1-2: one ResNet-18 whose features must classify the expression while fooling a
discriminator that tries to tell the resolution ("domain") of the face, through a gradient reversal layer.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from lrfer.core.errors import UserError
from lrfer.methods.base import Batch, Method, MethodContext, Stage
from lrfer.methods.resolution import ResolutionSet, build_network
from lrfer.models.domain import DomainDiscriminator, grad_reverse


def ganin_coefficient(progress: float, gamma: float = 10.0) -> float:
    """Ganin & Lempitsky's GRL schedule ``lambda_p = 2 / (1 + exp(-gamma p)) - 1``, ``p`` in [0, 1]."""
    p = min(1.0, max(0.0, float(progress)))
    return 2.0 / (1.0 + math.exp(-gamma * p)) - 1.0


class DomainAdversarial(Method):
    """DA: expression cross-entropy + domain cross-entropy through a gradient reversal layer.

    ``loss = CE(fc(f), expression) + domain_weight * CE(D(GRL_lambda(f)), resolution)`` where ``f`` is the
    ResNet-18 feature vector (after global average pooling), ``D`` the discriminator and ``GRL_lambda``
    the identity forward / ``-lambda`` times the gradient backward. One optimiser (trainer.optimizer)
    updates the network and the discriminator together, as in Ganin & Lempitsky.

    Choices the paper leaves open (also in ``experiments/drgfer/README.md``):

    * Domains are the K trained resolutions (``factors``, default x1, x2, x4, x6, x8; ``null`` =
      ``degrade.train``), so the discriminator is a K-way classifier; the paper's text describes a source
      (x1) and a target (x2) domain. Every face has an expression label (the LR faces are made from
      labelled ones), so the expression loss uses all resolutions.
    * Discriminator: ``D -> 1024 -> 1024 -> K`` with ``BatchNorm1d`` after each hidden ``Linear`` and no
      dropout (``disc_batch_norm=true``, ``disc_dropout=0``): the ``DomainDiscriminator`` of the
      Transfer-Learning-Library (``tllib``) of Long's group, whose Zhang et al. (ICML 2019) is the domain
      adaptation DRGFER cites. Ganin & Lempitsky's own MLP (ReLU and dropout 0.5, no normalisation:
      ``disc_batch_norm=false disc_dropout=0.5``) does not learn under the Adam optimiser DRGFER trains every
      method with: on the non-negative pooled ResNet features every unit of its first layer is pushed below
      zero within the first epoch (a fraction-1 run on synthetic faces: 2 of 1,024 units ever active, domain
      accuracy at chance from epoch 1 while lambda was still 0), so no adversarial gradient reaches the
      features and DA trains as MSTrain. Ganin & Lempitsky trained it with SGD and momentum.
    * ``lambda`` follows Ganin & Lempitsky's schedule ``2 / (1 + exp(-10 p)) - 1`` over training progress
      ``p`` in [0, 1]: ``p = steps done / (steps per epoch * method.epochs)``. The method learns the
      number of steps per epoch at the end of the first epoch (``on_epoch_end``), so ``lambda`` is 0
      during the first epoch. The schedule spans
      ``method.epochs``: shorten a run with ``method.epochs``, not ``trainer.max_epochs`` (which cuts the
      run before ``lambda`` reaches its plateau). Their learning-rate annealing is not used (the paper
      trains every method with Adam at a constant 3e-4).
    """

    #: Runs before 2026-12-07 trained Ganin & Lempitsky's plain MLP (no ``disc_batch_norm`` key).
    VALUES_BEFORE_OPTIONS: ClassVar[dict[str, Any]] = {"disc_batch_norm": False}

    def __init__(
        self,
        context: MethodContext,
        *,
        epochs: int,
        factors: Sequence[str] | None,
        domain_weight: float,
        grl_gamma: float,
        disc_hidden: int,
        disc_dropout: float,
        disc_batch_norm: bool,
        label_smoothing: float,
    ) -> None:
        super().__init__(context, epochs=epochs, label_smoothing=label_smoothing)
        self.resolutions = ResolutionSet.from_config(factors, context)
        self.domain_weight = float(domain_weight)
        self.grl_gamma = float(grl_gamma)
        self.net = build_network(context, context.num_classes)
        if not (hasattr(self.net, "features") and hasattr(self.net, "fc")):
            raise UserError("method=da needs a model with .features(x) and .fc (e.g. model=resnet18)")
        feature_dim = getattr(self.net, "feature_dim", None) or self.net.fc.in_features
        self.discriminator = DomainDiscriminator(
            feature_dim, len(self.resolutions), disc_hidden, disc_dropout, bool(disc_batch_norm)
        )
        self.disc_batch_norm = bool(disc_batch_norm)
        self.register_buffer("trained_steps", torch.zeros((), dtype=torch.long))
        self.register_buffer("steps_per_epoch", torch.zeros((), dtype=torch.long))

    def networks(self) -> list[nn.Module]:
        """The classifier, its ``fc`` head (called on the features directly) and the discriminator."""
        return [*super().networks(), self.net.fc]

    def stages(self) -> list[Stage]:
        labels = self.resolutions.labels
        return [Stage("train", epochs=self.epochs, train_degrade=labels, val_degrade=labels)]

    def progress(self, stage: Stage) -> float:
        """Training progress ``p`` in [0, 1] (0 until the length of an epoch is known)."""
        per_epoch = int(self.steps_per_epoch)
        if per_epoch == 0:
            return 0.0
        return min(1.0, int(self.trained_steps) / (per_epoch * max(1, stage.epochs)))

    def training_step(self, batch: Batch, stage: Stage, step: str) -> dict[str, torch.Tensor]:
        if self.disc_batch_norm and batch["image"].shape[0] < 2:
            raise UserError(
                "method.disc_batch_norm=true needs at least 2 faces in every training batch of a process: "
                "raise trainer.batch_size (or the training faces), or set method.disc_batch_norm=false"
            )
        features = self.net.features(batch["image"])
        logits = self.net.fc(getattr(self.net, "dropout", nn.Identity())(features))
        coeff = ganin_coefficient(self.progress(stage), self.grl_gamma)
        domain_logits = self.discriminator(grad_reverse(features, coeff))
        domain = self.resolutions.index(batch["factor"])
        cls_loss = self.classification_loss(logits, batch)
        domain_loss = F.cross_entropy(domain_logits.float(), domain)
        self.trained_steps += 1
        return {
            "loss": cls_loss + self.domain_weight * domain_loss,
            "cls_loss": cls_loss.detach(),
            "domain_loss": domain_loss.detach(),
            "domain_acc": (domain_logits.argmax(dim=1) == domain).float().mean().detach(),
            "grl_coeff": torch.full((), coeff, device=logits.device),
            "logits": logits.detach(),
        }

    def predict(self, images: torch.Tensor, factor: torch.Tensor | None = None) -> torch.Tensor:
        return self.net(images)

    def on_epoch_end(self, stage: Stage, epoch: int) -> None:
        if int(self.steps_per_epoch) == 0 and int(self.trained_steps) > 0:
            self.steps_per_epoch.fill_(int(self.trained_steps))  # the end of the first epoch

    def evaluate_step(self, batch: Batch, stage: Stage | None = None) -> dict[str, torch.Tensor]:
        return {"logits": self.net(batch["image"])}

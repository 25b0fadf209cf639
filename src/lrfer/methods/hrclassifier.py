"""The high-resolution feature classifier that FSR-FER (:mod:`lrfer.methods.fsrfer`) and its image-SR
baselines (:mod:`lrfer.methods.isr`) share: trained on x1 faces in a first stage (``extractor``), or loaded
from an earlier run, then frozen.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from omegaconf import DictConfig, ListConfig, OmegaConf

from lrfer.core.checkpoint import load_checkpoint, resolve_run_checkpoint
from lrfer.core.errors import UserError
from lrfer.methods.base import Batch, Method, MethodContext, Stage, model_weights
from lrfer.methods.center_loss import CenterLoss
from lrfer.models.fsr import build_feature_classifier


def plain(value: Any) -> Any:
    """An OmegaConf node (as Hydra passes nested options) as a plain dict / list."""
    if isinstance(value, (DictConfig, ListConfig)):
        return OmegaConf.to_container(value, resolve=True)
    return value


class HRClassifierMethod(Method):
    """A feature classifier trained on high-resolution faces (stage ``extractor``, x1) or loaded, then frozen.

    Shared by :class:`FSRFER` and the image-SR baselines (:mod:`lrfer.methods.isr`). A loaded checkpoint
    may come from an ``fsrfer`` or ``isr`` run (keys ``classifier.*``) or, for ResNet extractors, from a
    ``baseline`` run (keys ``net.*``).

    ``center_loss > 0`` adds CovPoolFER's centre loss to stage 1's cross-entropy,
    ``L = L_ce + center_loss * L_c`` (:mod:`lrfer.methods.center_loss`; its ``train.sh``: 1e-2, alpha 0.9) on
    the classifier's prelogits (the 7-d bottleneck of CovPoolFER's head, the pooled vector of a ResNet).
    """

    def __init__(
        self,
        context: MethodContext,
        *,
        extractor: str,
        extractor_weights: str | None,
        extractor_epochs: int,
        extractor_optimizer: dict | None,
        extractor_scheduler: dict | None,
        covpool: dict | None,
        label_smoothing: float,
        center_loss: float,
        center_loss_alpha: float,
    ) -> None:
        super().__init__(context, epochs=extractor_epochs, label_smoothing=label_smoothing)
        if center_loss < 0:
            raise UserError(f"method.center_loss must be >= 0 (0 = off), got {center_loss}")
        if not 0.0 <= center_loss_alpha <= 1.0:
            raise UserError(f"method.center_loss_alpha must be in [0, 1], got {center_loss_alpha}")
        self.extractor_name = extractor
        self.extractor_optimizer = plain(extractor_optimizer) or None
        self.extractor_scheduler = plain(extractor_scheduler) or None
        self.classifier = build_feature_classifier(
            extractor,
            context.num_classes,
            context.input_size,
            context.in_channels,
            plain(covpool),
            weights=model_weights(context),
        )
        self.center_loss_weight = float(center_loss)
        # only when on, so that checkpoints without centres stay loadable
        self.center_loss = (
            CenterLoss(context.num_classes, self.classifier.prelogit_dim, center_loss_alpha)
            if center_loss > 0
            else None
        )
        self.classifier_loaded = False
        self._frozen = False
        if extractor_weights:
            self.load_classifier(extractor_weights)

    # -- the high-resolution classifier --------
    def load_classifier(self, path: str) -> None:
        """Load the classifier from a run (folder or checkpoint) and freeze it; stage ``extractor`` is then
        skipped.

        One trained extractor serves every FSR-FER and ISR run, as the paper's one pretrained CovPoolFER.
        """
        state = load_checkpoint(resolve_run_checkpoint(path, "method.extractor_weights"))
        weights = state.get("method", state)
        target = self.classifier.state_dict()
        for prefix in ("classifier.", "net.", ""):
            sub = {k[len(prefix) :]: v for k, v in weights.items() if k.startswith(prefix)}
            if prefix == "net." and not any(k.startswith("net.") for k in target):
                sub = {f"net.{k}": v for k, v in sub.items()}
            if sub and set(sub) >= set(target):
                try:
                    self.classifier.load_state_dict({k: sub[k] for k in target})
                except RuntimeError as err:
                    raise UserError(
                        f"{path}: the classifier's weights do not fit method.extractor={self.extractor_name} "
                        f"({str(err).splitlines()[-1].strip()})"
                    ) from None
                self.classifier_loaded = True
                self._set_frozen(True)
                return
        raise UserError(
            f"{path} holds no {self.extractor_name} classifier: give the best.pt of an fsrfer or isr run "
            "trained with the same method.extractor (or of a baseline run for a ResNet extractor)"
        )

    def _set_frozen(self, frozen: bool) -> None:
        self._frozen = frozen
        self.classifier.requires_grad_(not frozen)
        if frozen:
            self.classifier.eval()

    def train(self, mode: bool = True):
        super().train(mode)
        if self._frozen:
            self.classifier.eval()
        return self

    def classifier_stages(self) -> list[Stage]:
        """Stage 1 (``extractor``: cross-entropy on x1), unless the classifier was loaded."""
        if self.classifier_loaded:
            return []
        return [
            Stage(
                "extractor",
                epochs=self.epochs,
                train_degrade=["x1"],
                val_degrade=["x1"],
                optimizer=self.extractor_optimizer,
                scheduler=self.extractor_scheduler,
            )
        ]

    def on_stage_start(self, stage: Stage) -> None:
        self._set_frozen(self.classifier_loaded or stage.name != "extractor")
        if self._frozen:
            self.classifier.eval()
        self.train(self.training)

    def classifier_step(self, batch: Batch) -> dict[str, torch.Tensor]:
        """Stage 1: cross-entropy, plus ``center_loss * L_c`` on the prelogits when the centre loss is on."""
        if self.center_loss is None:
            logits = self.classifier(batch["image"])
            return {"loss": self.classification_loss(logits, batch), "logits": logits.detach()}
        c = self.classifier
        pre = c.prelogits(c.embed(c.feature_map(batch["image"])))
        logits = c.logits(pre)
        ce = self.classification_loss(logits, batch)
        center = self.center_loss(pre, batch["label"])
        return {
            "loss": ce + self.center_loss_weight * center,
            "ce": ce.detach(),
            "center": center.detach(),
            "logits": logits.detach(),
        }

    @staticmethod
    def labels_of(factors: Iterable[str] | None, context: MethodContext) -> list[str]:
        """The training factors: ``factors`` or, when null, ``degrade.train``."""
        labels = list(plain(factors)) if factors else [d.label for d in context.train_degradations]
        if not labels:
            raise UserError(
                "method.factors is empty: give the low-resolution factors to train on, e.g. [x2,x4]"
            )
        return labels

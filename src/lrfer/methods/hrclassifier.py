"""The high-resolution feature classifier that FSR-FER (:mod:`lrfer.methods.fsrfer`) and its image-SR
baselines (:mod:`lrfer.methods.isr`) share: trained on x1 faces in a first stage (``extractor``), or loaded
from an earlier run, then frozen.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from omegaconf import DictConfig, ListConfig, OmegaConf

from lrfer.engine.checkpoint import load_checkpoint, resolve_run_checkpoint
from lrfer.errors import UserError
from lrfer.methods.base import Batch, Method, MethodContext, Stage, model_weights
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
    ) -> None:
        super().__init__(context, epochs=extractor_epochs, label_smoothing=label_smoothing)
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
        logits = self.classifier(batch["image"])
        return {"loss": self.classification_loss(logits, batch), "logits": logits.detach()}

    @staticmethod
    def labels_of(factors: Iterable[str] | None, context: MethodContext) -> list[str]:
        """The training factors: ``factors`` or, when null, ``degrade.train``."""
        labels = list(plain(factors)) if factors else [d.label for d in context.train_degradations]
        if not labels:
            raise UserError(
                "method.factors is empty: give the low-resolution factors to train on, e.g. [x2,x4]"
            )
        return labels

"""``isr``: image super-resolution, then the high-resolution classifier (FSR-FER's baselines, paper 001
sec. 4.2 and Table 1).

The classifier is trained on high-resolution faces (stage ``extractor`` on ``[x1]``, CovPoolFER by default,
as in :mod:`lrfer.methods.fsrfer`) or loaded with ``extractor_weights``, and frozen. The low-resolution
face is then restored and classified:

* ``sr=bicubic`` — the pipeline's bicubic resize back to the input size, nothing trained;
* ``sr=rcan`` — a compact RCAN-style network (:class:`~lrfer.models.image_sr.RCANLite`) per factor, each
  trained in its own stage ``sr_x<f>`` on that factor alone ("a different model for its corresponding
  down-sample factor"); a face is routed to the model of the nearest trained factor (log scale);
* ``sr=metasr`` — one compact Meta-SR-style network (:class:`~lrfer.models.image_sr.MetaSRLite`) for all
  factors, trained in one stage ``sr`` on the factor mix.

The SR networks learn the L1 loss between their output and the high-resolution face (``image_hr``), in
the normalised image space (RCAN and Meta-SR both train with L1).

Choices the paper leaves open (also in ``experiments/fsrfer/README.md``):

* The paper's RCAN / Meta-SR rows use the published (DIV2K) models, its "Meta-SR (re-trained)" row a
  Meta-SR re-trained on the faces; here both are compact versions trained on the faces (the
  "re-trained" setting). RCAN is in its pre-upsampling form: it restores the bicubic-resized-back face
  (every factor, x5 and x7 included, which the paper's RCAN did not cover).
* Meta-SR needs the low-resolution face at its own size: it is recovered from the network input by
  resizing it back down to ``ceil(native / factor)`` (MATLAB bicubic); bicubic down after bicubic up is
  close to, not exactly, the cached low-resolution face. The output is a residual over the bicubic input.
* Faces at x1 (or below the smallest trained factor's half-way point to x1) are not super-resolved.
* SR training: Adam ``sr_lr`` = 1e-4 (RCAN's and Meta-SR's), halved every ``sr_step_epochs`` epochs.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from lrfer.core.errors import UserError
from lrfer.data.degrade import parse_degradations, resize_to
from lrfer.methods.base import Batch, MethodContext, Stage
from lrfer.methods.hrclassifier import HRClassifierMethod, plain
from lrfer.models.image_sr import MetaSRLite, RCANLite

SR_CHOICES = ("bicubic", "rcan", "metasr")


class ISR(HRClassifierMethod):
    """Image super-resolution baseline: SR network (or bicubic) -> frozen HR classifier."""

    extra_metrics = ("direct_acc",)

    def __init__(
        self,
        context: MethodContext,
        *,
        sr: str,
        rcan: dict,
        metasr: dict,
        factors: Sequence[str] | None,
        sr_epochs: int,
        sr_step_epochs: int,
        sr_lr: float,
        sr_optimizer: dict,
        sr_gamma: float,
        **classifier: Any,
    ) -> None:
        """Options of configs/method/isr.yaml: the SR networks and their stages here, the classifier's in
        ``classifier``."""
        super().__init__(context, **classifier)
        if sr not in SR_CHOICES:
            raise UserError(f"unknown method.sr {sr!r}: choose one of {', '.join(SR_CHOICES)}")
        self.sr = sr
        self.factor_labels = self.labels_of(factors, context)
        degs = parse_degradations(self.factor_labels)
        self.factor_values = [d.effective_factor(context.native_size) for d in degs]
        self.sr_epochs, self.sr_step_epochs, self.sr_lr = sr_epochs, sr_step_epochs, sr_lr
        self.sr_optimizer, self.sr_gamma = dict(plain(sr_optimizer)), float(sr_gamma)
        c = context.in_channels
        if sr == "rcan":
            self.rcan = nn.ModuleDict(
                {_key(lbl): RCANLite(c, **(plain(rcan) or {})) for lbl in self.factor_labels}
            )
        elif sr == "metasr":
            self.metasr = MetaSRLite(c, **(plain(metasr) or {}))

    # -- stages --------
    def _sr_stage(self, name: str, labels: list[str]) -> Stage:
        return Stage(
            name,
            epochs=self.sr_epochs,
            train_degrade=labels,
            val_degrade=labels,
            needs_hr=True,
            optimizer={**self.sr_optimizer, "lr": self.sr_lr},
            scheduler={"name": "step", "step_size": max(1, self.sr_step_epochs), "gamma": self.sr_gamma},
        )

    def stages(self) -> list[Stage]:
        stages = self.classifier_stages()
        if self.sr == "rcan":
            stages += [self._sr_stage(f"sr_{_key(lbl)}", [lbl]) for lbl in self.factor_labels]
        elif self.sr == "metasr":
            stages.append(self._sr_stage("sr", self.factor_labels))
        if not stages:  # bicubic with a loaded classifier: nothing to train, one empty stage
            stages.append(Stage("evaluate", epochs=0, monitor=False))
        return stages

    def stage_parameters(self, stage: Stage, step: str) -> Iterable[nn.Parameter]:
        if stage.name == "sr":
            return self.metasr.parameters()
        if stage.name.startswith("sr_"):
            return self.rcan[stage.name[3:]].parameters()
        return self.classifier.parameters()

    # -- super-resolution --------
    def _route(self, factor: torch.Tensor) -> torch.Tensor:
        """Index of each face's SR model in ``factor_labels``; -1 = no SR (x1 and near it)."""
        idx = self.factor_index(factor, self.factor_values)
        smallest = min(self.factor_values)
        no_sr = factor.float().log() < 0.5 * math.log(smallest) if smallest > 1 else factor <= 1.0
        return torch.where(no_sr, torch.full_like(idx, -1), idx)

    def restore(self, images: torch.Tensor, factor: torch.Tensor | None) -> torch.Tensor:
        """Super-resolve network-input faces (N, C, S, S) downsampled by ``factor`` (per face)."""
        if self.sr == "bicubic":
            return images
        if factor is None:
            raise UserError("isr with method.sr=rcan or metasr needs each face's downsampling factor")
        route = self._route(factor.to(images.device))
        out = images.clone()
        for k in route.unique().tolist():
            if k < 0:
                continue
            rows = torch.nonzero(route == k).flatten()
            if self.sr == "rcan":
                out[rows] = self.rcan[_key(self.factor_labels[k])](images[rows]).to(out.dtype)
            else:
                out[rows] = self._metasr(images[rows], float(factor[rows[0]])).to(out.dtype)
        return out

    def _metasr(self, images: torch.Tensor, factor: float) -> torch.Tensor:
        size = images.shape[-1]
        lr_side = max(1, math.ceil(self.context.native_size / factor - 1e-4))
        lr = resize_to(images.float(), lr_side) if lr_side != size else images
        return self.metasr(lr, size, images)

    # -- training / prediction --------
    def training_step(self, batch: Batch, stage: Stage, step: str) -> dict[str, torch.Tensor]:
        if stage.name == "extractor":
            return self.classifier_step(batch)
        restored = self.restore(batch["image"], batch["factor"])
        return {"loss": F.l1_loss(restored.float(), batch["image_hr"].float())}

    def predict(self, images: torch.Tensor, factor: torch.Tensor | None = None) -> torch.Tensor:
        return self.classifier(self.restore(images, factor))

    def evaluate_step(self, batch: Batch, stage: Stage | None = None) -> dict[str, torch.Tensor]:
        if (stage is not None and stage.name == "extractor") or self.sr == "bicubic":
            return {"logits": self.classifier(batch["image"])}
        direct = self.classifier(batch["image"])
        logits = self.predict(batch["image"], batch["factor"])
        return {"logits": logits, "direct_acc": (direct.argmax(1) == batch["label"]).float()}

    def evaluation_values(self, stage: Stage | None = None) -> tuple[str, ...]:
        if (stage is not None and stage.name == "extractor") or self.sr == "bicubic":
            return ()
        return ("direct_acc",)


def _key(label: str) -> str:
    """A ModuleDict key for a degradation label (``x2`` -> ``x2``, ``x1.5`` -> ``x1_5``)."""
    return label.replace(".", "_")

"""``voting``: the residual voting network (ResNet-18 at 48x48, 10 crops after module 1/2/3, voting).

Training (Section 3.3): cross-entropy between the FC output of EVERY crop and the image's label (the
"FC layer output was used instead of the soft voting result"), so each of the 10 crops of a sample is one
training example. Prediction: soft or hard voting over the 10 crops (Section 3.1, Table 3).
``split_after=0`` is the paper's baseline (the same ResNet-18 without crops).

``init_from`` (the RAF-DB runs start from the AffectNet weights, Section 3.3): path of a finished run's
``checkpoints/best.pt`` / ``last.pt`` (or of the run folder, meaning its ``best.pt``). At the start of
training every tensor whose name and shape match is copied (loaded with ``weights_only=True``); the rest —
typically the FC layer when the class counts differ — keeps its fresh initialisation and is logged as
skipped; ``init_exclude`` lists name prefixes never copied (``[net.fc.]``: a fresh classifier when
the two datasets order their classes differently). Loading happens in :meth:`on_stage_start`, so
evaluating or exporting the finished run never needs the source checkpoint again, and a resumed run's own
checkpoint is loaded after it.

Choices the paper leaves open are listed in :mod:`lrfer.models.voting` and experiments/voting/README.md.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import ClassVar

import torch

from lrfer.core.checkpoint import resolve_run_checkpoint
from lrfer.core.errors import UserError
from lrfer.methods.base import Batch, Method, MethodContext, Stage, model_weights
from lrfer.models.voting import VOTING_MODES, VotingResNet, vote

log = logging.getLogger(__name__)


class Voting(Method):
    """Residual voting network: cross-entropy on every crop's FC output, soft/hard voting to predict.

    Choices the paper leaves open: centre crop at ``(side - crop) // 2``; mirrored crops = the same windows
    of the flipped map; soft voting = mean softmax, hard = majority with ties broken by the mean softmax; the
    vote never enters the loss; ``init_from`` copies tensors matching in name and shape (``init_exclude``
    prefixes are skipped) when training starts. Recipe choices (configs/experiment/voting/*.yaml): the
    learning-rate decay is per epoch; augmentation magnitudes; no horizontal flip; a fresh FC layer when
    fine-tuning RAF-DB from AffectNet (their class orders differ).

    ``init_from: none`` (the string) is the same as null: train from scratch (or from ``model.weights``).
    ``experiment=voting/rafdb`` leaves ``init_from`` to the user (``<required>``) since the paper fine-tunes
    the AffectNet model; :data:`REQUIRED_HINTS` is the one line printed when it is not given.
    """

    REQUIRED_HINTS: ClassVar[dict[str, str]] = {
        "init_from": "the paper fine-tunes RAF-DB from the AffectNet model: pass method.init_from=<the "
        "experiment=voting/affectnet run folder or its checkpoints/best.pt>, or method.init_from=none to "
        "train from scratch"
    }

    def __init__(
        self,
        context: MethodContext,
        *,
        epochs: int,
        label_smoothing: float,
        split_after: int,
        voting: str,
        crop_ratio: float,
        arch: str,
        stem: str,
        init_from: str | None,
        init_exclude: Sequence[str],
        eval_all_votings: bool,
    ) -> None:
        super().__init__(context, epochs=epochs, label_smoothing=label_smoothing)
        self.eval_all_votings = bool(eval_all_votings)
        if voting not in VOTING_MODES:
            raise UserError(f"unknown method.voting={voting!r}: choose one of {', '.join(VOTING_MODES)}")
        self.voting = voting
        self.init_from = None if str(init_from).lower() in ("none", "null", "") else str(init_from)
        self.init_exclude = tuple(init_exclude or ())
        self.net = VotingResNet(
            context.num_classes,
            context.input_size,
            split_after=split_after,
            crop_ratio=crop_ratio,
            arch=arch,
            stem=stem,
            in_channels=context.in_channels,
            weights=model_weights(context),
        )

    # -- training --------
    def on_stage_start(self, stage: Stage) -> None:
        if self.init_from:
            skipped = load_matching_weights(self, self.init_from, self.init_exclude)
            log.info("initialised from %s; kept fresh: %s", self.init_from, ", ".join(skipped) or "nothing")

    def training_step(self, batch: Batch, stage: Stage, step: str) -> dict[str, torch.Tensor]:
        crop_logits = self.net(batch["image"])
        n = self.net.num_crops
        crop_batch = {"label": batch["label"].repeat_interleave(n, dim=0)}
        if batch.get("target") is not None:
            crop_batch["target"] = batch["target"].repeat_interleave(n, dim=0)
        loss = self.classification_loss(crop_logits, crop_batch)
        logits = vote(crop_logits.detach(), self.voting, n) if n > 1 else crop_logits.detach()
        return {"loss": loss, "logits": logits}

    # -- prediction --------
    def predict(self, images: torch.Tensor, factor: torch.Tensor | None = None) -> torch.Tensor:
        crop_logits = self.net(images)
        if self.net.num_crops == 1:
            return crop_logits
        return vote(crop_logits, self.voting, self.net.num_crops)

    def _votes_all(self, stage: Stage | None) -> bool:
        return stage is None and self.eval_all_votings and self.net.num_crops > 1

    def evaluation_values(self, stage: Stage | None = None) -> tuple[str, ...]:
        """At the test, with ``eval_all_votings``: the per-face correctness of every voting mode."""
        return tuple(f"acc_{mode}" for mode in VOTING_MODES) if self._votes_all(stage) else ()

    def evaluate_step(self, batch: Batch, stage: Stage | None = None) -> dict[str, torch.Tensor]:
        """The prediction voted as ``voting`` says; at the test with ``eval_all_votings``, also ``acc_soft``
        and ``acc_hard`` from the same crop outputs (Table 3's soft and hard columns from one network)."""
        if not self._votes_all(stage):
            return super().evaluate_step(batch, stage)
        crop_logits = self.net(batch["image"])
        voted = {mode: vote(crop_logits, mode, self.net.num_crops) for mode in VOTING_MODES}
        correct = {f"acc_{mode}": (v.argmax(dim=1) == batch["label"]).float() for mode, v in voted.items()}
        return {"logits": voted[self.voting], **correct}


def resolve_checkpoint(path: str | Path) -> Path:
    """A checkpoint file, or a run folder (its ``checkpoints/best.pt``, else ``last.pt``)."""
    return resolve_run_checkpoint(path, "method.init_from")


def load_matching_weights(
    method: torch.nn.Module, path: str | Path, exclude: Sequence[str] = ()
) -> list[str]:
    """Copy every tensor of a checkpoint whose name and shape match ``method`` and whose name starts with
    none of ``exclude``; return the names of ``method``'s tensors left as they were."""
    file = resolve_checkpoint(path)
    try:
        state = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as err:
        raise UserError(f"cannot read {file} ({type(err).__name__}): not an lrfer checkpoint") from None
    source = state.get("method", state) if isinstance(state, dict) else None
    if not isinstance(source, dict):
        raise UserError(f"{file} holds no state dict")
    own = method.state_dict()
    matched = {
        k: v
        for k, v in source.items()
        if k in own and own[k].shape == v.shape and not any(k.startswith(p) for p in exclude)
    }
    if not matched:
        raise UserError(f"no tensor of {file} matches this method: is it a voting/baseline ResNet run?")
    method.load_state_dict(matched, strict=False)
    return sorted(k for k in own if k not in matched)

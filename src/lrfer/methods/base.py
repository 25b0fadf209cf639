"""The interface between a method (how a paper trains and predicts) and the shared trainer.

A method is an ``nn.Module`` holding every network it needs. The trainer asks it for its
:class:`Stage` list and drives each stage: per batch, for every optimisation ``step`` of the stage (one for
plain training; critic then generator for a GAN), it calls :meth:`Method.training_step`, back-propagates
the returned ``loss``, clips and steps that step's optimiser. The trainer owns devices, precision,
optimisers, schedulers, checkpoints and logging; the method owns losses and predictions.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from omegaconf import DictConfig
from torch import nn

from lrfer.data.degrade import Degradation

Batch = dict[str, torch.Tensor]


@dataclass
class MethodContext:
    """What a method needs to know about the data to build its networks."""

    num_classes: int
    input_size: int
    native_size: int
    in_channels: int
    train_degradations: list[Degradation]
    model: DictConfig | None = None
    class_names: list[str] = field(default_factory=list)


def model_weights(context: MethodContext) -> str | None:
    """``model.weights`` of the run: a local checkpoint for the method's ResNet-family networks, or None.

    (A function, not a property: Hydra hands methods the context as a structured config.)
    """
    model = context.model
    value = model.get("weights") if model is not None else None
    return str(value) if value else None


@dataclass
class Stage:
    """One training stage.

    ``epochs``: the stage's own length (capped by ``trainer.max_epochs``). ``steps``: names of the
    optimisation steps made on every batch, in order. ``optimizer``/``scheduler``: overrides merged onto
    ``trainer.optimizer``/``trainer.scheduler`` (per step: ``{step: {...}}`` also accepted).
    ``train_degrade``/``val_degrade``: degradation labels replacing ``degrade.train``/``degrade.val``
    for this stage (e.g. a high-resolution teacher trains on ``[x1]``). ``needs_hr``: batches carry
    ``image_hr``. ``monitor``: the validation metric that picks the best epoch of this stage — True for
    ``trainer.monitor``, a name (``rrn_acc``, ``balanced_acc``, ``x4/acc``: see
    :func:`~lrfer.engine.metrics.named_metric`), or False for no selection (the last epoch is kept).

    Under torchrun: ``find_unused_parameters`` (None = only when the stage has several steps) must be True
    when a forward may leave some trained parameter without a gradient (e.g. a branch per resolution
    that a batch may not visit); ``sync_bn`` False keeps per-process BatchNorm even with
    ``trainer.sync_bn`` (needed when a rank may skip a BatchNorm another rank runs, which would block).
    """

    name: str
    epochs: int
    steps: tuple[str, ...] = ("main",)
    optimizer: dict[str, Any] | None = None
    scheduler: dict[str, Any] | None = None
    train_degrade: list[str] | None = None
    val_degrade: list[str] | None = None
    needs_hr: bool = False
    monitor: bool | str = True
    find_unused_parameters: bool | None = None
    sync_bn: bool = True


class Method(nn.Module):
    """Base class of every method. Subclasses implement :meth:`predict` and usually :meth:`training_step`."""

    #: The per-sample values :meth:`evaluate_step` may add to the metrics rows besides ``acc`` and
    #: ``balanced_acc`` (DRGFER's ``rrn_acc``): what ``trainer.monitor`` and ``objective`` may name, checked
    #: when the config is composed (:func:`lrfer.config.validate.validate_config`).
    extra_metrics: tuple[str, ...] = ()

    #: Options added with a default other than the behaviour before them: ``{option: value}``, the value a
    #: run made before the option existed trained with. Reopening such a run
    #: (:func:`lrfer.engine.loading.fill_new_method_options`) fills the option with it, not today's default.
    VALUES_BEFORE_OPTIONS: ClassVar[dict[str, Any]] = {}

    def __init__(self, context: MethodContext, *, epochs: int, label_smoothing: float) -> None:
        """``epochs``: the length of the default single stage (``method.epochs``); ``label_smoothing``: of
        :meth:`classification_loss` (``method.label_smoothing``)."""
        super().__init__()
        self.context = context
        self.epochs = epochs
        self.label_smoothing = label_smoothing

    # -- what the trainer calls --------
    def stages(self) -> list[Stage]:
        """The stages to train, in order. Default: one stage of ``epochs`` epochs."""
        return [Stage(name="train", epochs=self.epochs)]

    def stage_parameters(self, stage: Stage, step: str) -> Iterable[nn.Parameter]:
        """Parameters the optimiser of (stage, step) updates. Default: all that require gradients."""
        return [p for p in self.parameters() if p.requires_grad]

    def networks(self) -> list[nn.Module]:
        """The networks the stages run, each compiled by ``trainer.compile=true``.

        Default: the method's direct children, with a ``ModuleList`` / ``ModuleDict`` child (which is never
        called itself) replaced by its members. A method that calls networks deeper in its tree (DRGFER's
        experts inside MRAFER) lists them itself. Methods a network's class names in ``compiled_methods``
        (``feature_map``, ``embed``, ...) are compiled along with its ``forward``.
        """
        nets: list[nn.Module] = []
        for child in self.children():
            if isinstance(child, (nn.ModuleList, nn.ModuleDict)):
                members = child.values() if isinstance(child, nn.ModuleDict) else child
                nets.extend(m for m in members if any(True for _ in m.parameters()))
            elif any(True for _ in child.parameters()):
                nets.append(child)
        return nets

    def on_stage_start(self, stage: Stage) -> None:
        """Hook before a stage's first epoch (freeze a teacher, copy weights, ...)."""

    def on_epoch_end(self, stage: Stage, epoch: int) -> None:
        """Hook after every training epoch (``epoch`` counts from 1), before validation."""

    def on_stage_end(self, stage: Stage) -> None:
        """Hook after a stage (and after its best epoch has been restored)."""

    def training_step(self, batch: Batch, stage: Stage, step: str) -> dict[str, torch.Tensor]:
        """Losses of one batch: a dict with ``loss`` (back-propagated) and named parts (logged).

        An optional ``logits`` entry lets the trainer report training accuracy.
        """
        logits = self.predict(batch["image"], factor=batch["factor"])
        loss = self.classification_loss(logits, batch)
        return {"loss": loss, "logits": logits.detach()}

    def predict(self, images: torch.Tensor, factor: torch.Tensor | None = None) -> torch.Tensor:
        """Class logits for normalised images at the network input size.

        ``factor`` is each image's downsampling factor when known; None when the method must infer it.
        """
        raise NotImplementedError

    def evaluate_step(self, batch: Batch, stage: Stage | None = None) -> dict[str, torch.Tensor]:
        """Evaluation outputs: ``logits`` plus optional per-sample values (averaged into the metrics row).

        ``stage`` is the stage being validated (None at the final test), so a teacher stage can be
        validated on the teacher.
        """
        return {"logits": self.predict(batch["image"], factor=batch["factor"])}

    def evaluation_values(self, stage: Stage | None = None) -> tuple[str, ...]:
        """The names of the per-sample values :meth:`evaluate_step` returns besides ``logits`` for ``stage``.

        Declared, not discovered, so that under torchrun every rank sums the same values in the same order
        even when its share of the split is empty (a rank that ran no batch saw no keys). Default: none.
        """
        return ()

    def forward(self, batch: Batch, stage: Stage, step: str) -> dict[str, torch.Tensor]:
        """``training_step`` as the module's forward, so DistributedDataParallel can wrap a method."""
        return self.training_step(batch, stage, step)

    # -- helpers for subclasses --------
    def classification_loss(self, logits: torch.Tensor, batch: Batch) -> torch.Tensor:
        """Cross-entropy against ``batch['target']`` (soft) when present, else ``batch['label']``."""
        return classification_loss(logits, batch, self.label_smoothing)

    @staticmethod
    def factor_index(factor: torch.Tensor, factors: Sequence[float]) -> torch.Tensor:
        """Index of the nearest of ``factors`` (in log scale) for each entry of ``factor``."""
        table = log_factor_table(tuple(float(f) for f in factors), factor.device)
        return (factor.float().log()[:, None] - table[None]).abs().argmin(dim=1)


@functools.lru_cache(maxsize=64)
def log_factor_table(factors: tuple[float, ...], device: torch.device) -> torch.Tensor:
    """``log(factors)`` as a float32 tensor kept on ``device`` (built once: no host copy per batch)."""
    return torch.tensor(factors, dtype=torch.float32).log().to(device)


def classification_loss(logits: torch.Tensor, batch: Batch, label_smoothing: float = 0.0) -> torch.Tensor:
    """Cross-entropy with hard labels, or with soft targets (rows summing to 1) when the batch has them."""
    target = batch.get("target")
    if target is not None:
        target = target.float() / target.float().sum(dim=1, keepdim=True).clamp(min=1e-8)
        return F.cross_entropy(logits.float(), target, label_smoothing=label_smoothing)
    return F.cross_entropy(logits.float(), batch["label"], label_smoothing=label_smoothing)

"""``gmenet``: GME-Net with attention-similarity knowledge distillation (Shi, 2023; paper 002).

A teacher GME-Net is trained on high-resolution faces (stage ``teacher``, ``[x1]``), then frozen; a student
of the same architecture is trained on the low-resolution faces (stage ``student``, ``degrade.train``,
e.g. ``[14px]``) resized back to the input size and Gaussian-blurred (Sec. 3.1), with

    L = L_ce + kd_weight * L_kd                                                        (eq. 12-13)
    L_kd = sum over Mixed-Attention Blocks of (1 - cos(M_C,T, M_C,S)) + (1 - cos(M_S,T, M_S,S))
                                                                                       (eq. 9-11)

(``kd_reduction=sum``, A-SKD's code; ``paper`` is eq. 11 exactly, ``((1 - S_c) + (1 - S_s)) / 2`` per block
summed over the blocks, half of ``sum``, the experiment configs' choice; ``mean`` divides by the number of
maps, 2 per block)

on the PRE-SIGMOID channel and spatial attention maps (A-SKD, "Teaching Where to Look", ECCV 2022), the
teacher seeing the high-resolution image of the same sample (``needs_hr``).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from lrfer.core.checkpoint import load_checkpoint
from lrfer.core.errors import UserError
from lrfer.methods.base import Batch, Method, MethodContext, Stage
from lrfer.models.gmenet import AttentionMaps, GMENet

KD_REDUCTIONS = ("sum", "paper", "mean")


def attention_similarity_loss(
    student_maps: Sequence[AttentionMaps], teacher_maps: Sequence[AttentionMaps], reduction: str = "sum"
) -> torch.Tensor:
    """Eq. 9-11 over the attention blocks: per map, ``1 - cos`` (eq. 9-10) averaged over the samples.

    Each entry of the two lists is one attention block's ``(M_c, M_s)`` pre-sigmoid maps (any shapes,
    flattened per sample). ``reduction`` says how the 2 B per-map terms (B blocks, a channel and a spatial
    map each) combine, which the paper leaves open:

    * ``sum`` (default): their sum, as A-SKD's code (``utility/distill_loss.py``: ``loss_sum += d_loss *
      distill_attn_param`` over every channel and spatial map), which GME-Net's distillation follows;
    * ``paper``: eq. 11 exactly, ``L_kd = ((1 - S_c) + (1 - S_s)) / 2`` per block, summed over the B blocks
      (half of ``sum``; eq. 13 adds ``lambda * L_kd``);
    * ``mean``: their mean, ``(1/B) sum_b ((1 - cos_c) + (1 - cos_s)) / 2`` (2 B times smaller).

    The teacher maps are detached.
    """
    if reduction not in KD_REDUCTIONS:
        raise UserError(f"unknown method.kd_reduction {reduction!r}: choose {', '.join(KD_REDUCTIONS)}")
    if len(student_maps) != len(teacher_maps) or not student_maps:
        raise ValueError(
            f"attention-similarity loss needs the same non-zero number of attention blocks in student and "
            f"teacher, got {len(student_maps)} and {len(teacher_maps)}"
        )
    per_block = []
    for (s_c, s_s), (t_c, t_s) in zip(student_maps, teacher_maps):
        if s_c.shape != t_c.shape or s_s.shape != t_s.shape:
            raise ValueError(
                f"student and teacher attention maps differ in shape ({tuple(s_s.shape)} vs "
                f"{tuple(t_s.shape)}): both networks must see images of one size (degrade.resize_back=true)"
            )
        cos_c = F.cosine_similarity(s_c.flatten(1).float(), t_c.detach().flatten(1).float(), dim=1)
        cos_s = F.cosine_similarity(s_s.flatten(1).float(), t_s.detach().flatten(1).float(), dim=1)
        per_block.append((1 - cos_c).mean() + (1 - cos_s).mean())
    total = torch.stack(per_block).sum()
    if reduction == "sum":
        return total
    return total / 2 if reduction == "paper" else total / (2 * len(per_block))


def gaussian_blur(images: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur (radius ``ceil(3 sigma)``, reflect padding) of (N, C, H, W) images."""
    radius = min(max(1, math.ceil(3 * sigma)), min(images.shape[-2:]) - 1)
    if sigma <= 0 or radius < 1:
        return images
    x = torch.arange(-radius, radius + 1, device=images.device, dtype=images.dtype)
    k = torch.exp(-(x**2) / (2 * sigma**2))
    k = (k / k.sum()).view(1, 1, 1, -1).repeat(images.shape[1], 1, 1, 1)
    c = images.shape[1]
    out = F.conv2d(F.pad(images, (radius, radius, 0, 0), mode="reflect"), k, groups=c)
    return F.conv2d(F.pad(out, (0, 0, radius, radius), mode="reflect"), k.transpose(-1, -2), groups=c)


class GMENetMethod(Method):
    """GME-Net trained as an HR-teacher -> LR-student attention-similarity distillation.

    Stages: ``teacher`` (``[x1]``, validated on ``[x1]``, skipped when ``teacher_checkpoint`` is given or
    ``kd_weight=0``) and ``student`` (``degrade.train``, ``needs_hr`` when distilling). The teacher is frozen
    (no gradients, eval-mode BatchNorm) from the student stage on. ``kd_weight=0`` builds no teacher: the
    "without kd" ablation and the plain train-with-LR/HR/LR+HR protocol.

    Choices the paper leaves open (also in ``experiments/gmenet/README.md``):

    * the Gaussian blur of Sec. 3.1 ("improve the photo quality through Gaussian blur") is applied inside
      the method to every low-resolution input of the student (factor > 1, or every image when the factor
      is unknown), in training AND at test time, with a fixed ``lr_blur_sigma`` (default 1.0 px at the
      network input size; 0 disables it); high-resolution (x1) inputs are never blurred;
    * L_kd uses every MAB's maps, averages the per-sample cosine distances over the batch and SUMS them over
      the maps (``kd_reduction=sum``: A-SKD's code sums ``distill_attn_param * mean(1 - cos)`` over every
      channel and spatial map; ``paper`` halves that sum, eq. 11's ``/2``, the experiment configs' choice;
      ``mean`` averages them instead), and the teacher runs in eval mode
      (BatchNorm running statistics) on the HR image of the sample with
      the same augmentation;
    * the teacher is trained with the same optimiser, schedule and epochs as the student (``teacher_epochs``
      null = ``epochs``);
    * ``teacher_checkpoint`` is a run's ``best.pt``: its ``teacher.*`` weights when present, else its
      ``student.*`` weights (a ``kd_weight=0`` run trained on ``[x1]`` is a valid teacher). It is read when
      the student stage starts, so re-evaluating a finished run never needs the file.
    """

    def __init__(
        self,
        context: MethodContext,
        *,
        epochs: int,
        teacher_epochs: int | None,
        label_smoothing: float,
        kd_weight: float,
        kd_reduction: str,
        teacher_checkpoint: str | None,
        lr_blur_sigma: float,
        **network: Any,
    ) -> None:
        """Every option is a ``method.*`` key of configs/method/gmenet.yaml; ``network`` holds the
        network's (``width``, ``layers``, ``attention``, ...: :class:`~lrfer.models.gmenet.GMENet`), which
        the student and the teacher share."""
        super().__init__(context, epochs=epochs, label_smoothing=label_smoothing)
        if kd_weight < 0:
            raise UserError(f"method.kd_weight must be >= 0, got {kd_weight}")
        if kd_weight > 0 and network.get("attention") == "none":
            raise UserError(
                "method.attention=none has no attention maps to distil: set method.kd_weight=0 "
                "(or choose attention dbam|cbam)"
            )
        self.kd_weight = float(kd_weight)
        if kd_reduction not in KD_REDUCTIONS:
            choices = ", ".join(KD_REDUCTIONS)
            raise UserError(f"unknown method.kd_reduction {kd_reduction!r}: choose {choices}")
        self.kd_reduction = kd_reduction
        self.teacher_epochs = int(teacher_epochs) if teacher_epochs is not None else epochs
        self.teacher_checkpoint = teacher_checkpoint
        self.lr_blur_sigma = float(lr_blur_sigma)
        c = context
        self.student = GMENet(c.num_classes, c.input_size, in_channels=c.in_channels, **network)
        self.teacher: GMENet | None = None
        if self.distills:
            self.teacher = GMENet(c.num_classes, c.input_size, in_channels=c.in_channels, **network)
        self.teacher_frozen = False

    @property
    def distills(self) -> bool:
        return self.kd_weight > 0

    # -- stages --------
    def stages(self) -> list[Stage]:
        out = []
        if self.distills and not self.teacher_checkpoint:
            out.append(Stage("teacher", epochs=self.teacher_epochs, train_degrade=["x1"], val_degrade=["x1"]))
        out.append(Stage("student", epochs=self.epochs, needs_hr=self.distills))
        return out

    def stage_parameters(self, stage: Stage, step: str) -> Iterable[nn.Parameter]:
        net = self.teacher if stage.name == "teacher" else self.student
        return net.parameters()

    def on_stage_start(self, stage: Stage) -> None:
        if self.teacher is None:
            return
        if stage.name == "teacher":
            self.teacher_frozen = False
            self.teacher.requires_grad_(True)
            return
        if self.teacher_checkpoint:
            self._load_teacher(self.teacher_checkpoint)
        self.teacher_frozen = True
        self.teacher.requires_grad_(False)
        self.teacher.eval()

    def train(self, mode: bool = True) -> GMENetMethod:
        """Like ``nn.Module.train`` but a frozen teacher stays in eval mode (fixed BatchNorm statistics)."""
        super().train(mode)
        if self.teacher is not None and self.teacher_frozen:
            self.teacher.eval()
        return self

    def _load_teacher(self, path: str) -> None:
        assert self.teacher is not None
        state = load_checkpoint(path).get("method", {})
        for prefix in ("teacher.", "student."):
            sub = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
            if sub:
                break
        if not sub:
            raise UserError(f"{path} holds no teacher.* or student.* weights: give a gmenet run's best.pt")
        try:
            self.teacher.load_state_dict(sub)
        except RuntimeError as err:
            raise UserError(
                f"the network in {path} does not match method.* of this run (width, layers, attention, "
                f"global_branch must be the same): {str(err).splitlines()[0]}"
            ) from None

    # -- training / prediction --------
    def _student_input(self, images: torch.Tensor, factor: torch.Tensor | None) -> torch.Tensor:
        """Gaussian-blur the low-resolution rows (factor > 1; all rows when the factor is unknown).

        Every row is blurred and the native ones are put back with ``torch.where``: no data-dependent branch,
        so no host-device synchronisation in the training step (and shapes-only runs on the meta device work).
        """
        if self.lr_blur_sigma <= 0:
            return images
        blurred = gaussian_blur(images, self.lr_blur_sigma)
        if factor is None:
            return blurred
        low = factor.float() > 1.0 + 1e-6
        return torch.where(low[:, None, None, None], blurred, images)

    def training_step(self, batch: Batch, stage: Stage, step: str) -> dict[str, torch.Tensor]:
        if stage.name == "teacher":
            assert self.teacher is not None
            logits = self.teacher(batch["image"])
            loss = self.classification_loss(logits, batch)
            return {"loss": loss, "ce": loss.detach(), "logits": logits.detach()}
        images = self._student_input(batch["image"], batch.get("factor"))
        if not self.distills:
            logits = self.student(images)
            loss = self.classification_loss(logits, batch)
            return {"loss": loss, "ce": loss.detach(), "logits": logits.detach()}
        assert self.teacher is not None
        logits, student_maps = self.student(images, return_maps=True)
        with torch.no_grad():
            _, teacher_maps = self.teacher(batch["image_hr"], return_maps=True)
        ce = self.classification_loss(logits, batch)
        kd = attention_similarity_loss(student_maps, teacher_maps, self.kd_reduction)
        loss = ce + self.kd_weight * kd
        return {"loss": loss, "ce": ce.detach(), "kd": kd.detach(), "logits": logits.detach()}

    def predict(self, images: torch.Tensor, factor: torch.Tensor | None = None) -> torch.Tensor:
        return self.student(self._student_input(images, factor))

    def evaluate_step(self, batch: Batch, stage: Stage | None = None) -> dict[str, torch.Tensor]:
        if stage is not None and stage.name == "teacher" and self.teacher is not None:
            return {"logits": self.teacher(batch["image"])}
        return {"logits": self.predict(batch["image"], factor=batch["factor"])}

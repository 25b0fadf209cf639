"""Small methods used by the trainer tests (a multi-stage, multi-step method and a diverging one)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from torch import nn

from lrfer.methods.base import Method, MethodContext, Stage


class TinyNet(nn.Module):
    def __init__(self, classes: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten()
        )
        self.fc = nn.Linear(8, classes)

    def forward(self, x):
        return self.fc(self.body(x))


class TwoStageToy(Method):
    """Stage 1 trains ``teacher`` on x1; stage 2 alternates a critic step and a student step on x2."""

    def __init__(
        self,
        context: MethodContext,
        epochs: int = 2,
        critic_lr: float = 0.5,
        record: str | None = None,
        crash_after: int | None = None,
        **_,
    ) -> None:
        super().__init__(context, epochs=epochs, label_smoothing=0.0)
        # raise at training batch crash_after + 1 (an interrupted run); also from the environment, so that a
        # test can interrupt a run without changing its config (a resume must use the run's own config)
        env_crash = os.environ.get("LRFER_TOY_CRASH_AFTER")
        self.crash_after = int(env_crash) if env_crash else crash_after
        # record=<dir>: every training batch's (index, degradation) goes to <dir>/rank<r>-<stage>.json
        self.record = record
        self.seen: list[list[list[int]]] = []
        self.teacher = TinyNet(context.num_classes)
        self.student = TinyNet(context.num_classes)
        self.critic = nn.Linear(context.num_classes, 1)
        self.critic_lr = critic_lr
        self.calls: list[tuple[str, str, tuple[float, ...]]] = []

    def stages(self):
        return [
            Stage("teacher", epochs=self.epochs, train_degrade=["x1"], val_degrade=["x1"]),
            Stage(
                "student",
                epochs=self.epochs + 5,
                steps=("critic", "student"),
                train_degrade=["x2"],
                optimizer={"critic": {"lr": self.critic_lr}},
                needs_hr=True,
            ),
        ]

    def stage_parameters(self, stage, step):
        module = {"main": self.teacher, "critic": self.critic, "student": self.student}[step]
        return module.parameters()

    def on_stage_start(self, stage):
        self.teacher.requires_grad_(stage.name == "teacher")
        self.seen = []

    def on_stage_end(self, stage):
        if self.record:
            path = Path(self.record) / f"rank{os.environ.get('RANK', '0')}-{stage.name}.json"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(self.seen))

    def training_step(self, batch, stage, step):
        self.calls.append((stage.name, step, tuple(sorted(set(batch["factor"].tolist())))))
        assert (stage.name == "student") == ("image_hr" in batch)
        if step != "critic":
            self.seen.append([batch["index"].tolist(), batch["degradation"].tolist()])
            self.batches = getattr(self, "batches", 0) + 1
            if self.crash_after is not None and self.batches > self.crash_after:
                raise RuntimeError("interrupted")
        if step == "main":
            logits = self.teacher(batch["image"])
            return {"loss": self.classification_loss(logits, batch), "logits": logits.detach()}
        logits = self.student(batch["image"])
        if step == "critic":
            return {
                # a mean of per-sample terms, so the ranks' averaged gradients equal the full batch's
                "loss": (self.critic(logits.detach()) ** 2).mean(),
                "critic_out": self.critic(logits).mean(),
            }
        return {"loss": self.classification_loss(logits, batch), "logits": logits.detach()}

    def predict(self, images, factor=None):
        return self.student(images)

    def evaluate_step(self, batch, stage=None):
        net = self.teacher if stage is not None and stage.name == "teacher" else self.student
        logits = net(batch["image"])
        return {"logits": logits, "is_x1": (batch["factor"] == 1.0).float()}

    def evaluation_values(self, stage=None):
        return ("is_x1",)


class WarmStartToy(TwoStageToy):
    """TwoStageToy whose student stage starts from the teacher's weights (``on_stage_start`` changes the
    method, as a stage that initialises one network from another does): a resume into that stage must put
    the checkpoint's weights back after the stage start."""

    def on_stage_start(self, stage):
        super().on_stage_start(stage)
        if stage.name == "student":
            self.student.load_state_dict(self.teacher.state_dict())


class Diverging(Method):
    def __init__(self, context: MethodContext, epochs: int = 1, **_) -> None:
        super().__init__(context, epochs=epochs, label_smoothing=0.0)
        self.net = TinyNet(context.num_classes)

    def training_step(self, batch, stage, step):
        return {"loss": self.net(batch["image"]).sum() * torch.tensor(float("nan"))}

    def predict(self, images, factor=None):
        return self.net(images)


class ManyStages(Method):
    """``stages`` stages, each training its own small network (like DRGFER's experts, one per stage)."""

    def __init__(self, context: MethodContext, epochs: int = 1, stages: int = 9, **_) -> None:
        super().__init__(context, epochs=epochs, label_smoothing=0.0)
        self.nets = nn.ModuleList(TinyNet(context.num_classes) for _ in range(stages))

    def stages(self):
        return [Stage(f"s{i}", epochs=self.epochs, monitor=False) for i in range(len(self.nets))]

    def _net(self, stage):
        return self.nets[int(stage.name[1:])]

    def stage_parameters(self, stage, step):
        return self._net(stage).parameters()

    def training_step(self, batch, stage, step):
        logits = self._net(stage)(batch["image"])
        return {"loss": self.classification_loss(logits, batch), "logits": logits.detach()}

    def predict(self, images, factor=None):
        return self.nets[-1](images)


class AlternatingHeads(Method):
    """Trains ``a`` on odd training calls and ``b`` on even ones (as a routed expert that gets no sample in a
    batch); ``a_at_call[i]``: a copy of ``a``'s weights when call ``i`` starts."""

    def __init__(self, context: MethodContext, epochs: int = 1, **_) -> None:
        super().__init__(context, epochs=epochs, label_smoothing=0.0)
        self.a = TinyNet(context.num_classes)
        self.b = TinyNet(context.num_classes)
        self.a_at_call: list[torch.Tensor] = []

    def training_step(self, batch, stage, step):
        self.a_at_call.append(torch.cat([p.detach().flatten().clone() for p in self.a.parameters()]))
        net = self.a if len(self.a_at_call) % 2 else self.b
        logits = net(batch["image"])
        return {"loss": self.classification_loss(logits, batch), "logits": logits.detach()}

    def predict(self, images, factor=None):
        return self.a(images)

"""Small stand-ins for the DRGFER / RA-BN / DA tests: a tiny classifier with the ResNetClassifier interface,
fake experts and routers with known outputs, and a DRGFER that snapshots its state around every stage."""

from __future__ import annotations

from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from lrfer.methods.drgfer import DRGFER
from lrfer.models.resnet import ResNetClassifier


class TinyBackbone(nn.Module):
    """conv (stride 2) + BatchNorm + ReLU + global pool + fc: the shape of a torchvision ResNet."""

    def __init__(self, in_channels: int = 3, width: int = 8) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, width, 3, stride=2, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(width)
        self.fc = nn.Linear(width, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(F.relu(self.bn(self.conv(x))).mean(dim=(2, 3)))


def tiny_classifier(num_classes: int, input_size: int, in_channels: int = 3, **_) -> ResNetClassifier:
    """Model builder for ``model._target_=multires_toys.tiny_classifier`` (keys of resnet18.yaml ignored)."""
    return ResNetClassifier(TinyBackbone(in_channels), num_classes)


class TaggedExpert(nn.Module):
    """Returns (tag, id) per image, id = pixel [0, 0, 0]; counts its calls and the batch sizes it saw."""

    def __init__(self, tag: int) -> None:
        super().__init__()
        self.tag = tag
        self.calls: list[int] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls.append(x.shape[0])
        return torch.stack([torch.full((x.shape[0],), float(self.tag)), x[:, 0, 0, 0]], dim=1)


class FixedLogits(nn.Module):
    """An expert whose logits for image i are ``table[i]`` (images carry i in pixel [0, 0, 0])."""

    def __init__(self, table: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("table", table)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.table[x[:, 0, 0, 0].long()]


class MarkerRouter(nn.Module):
    """A stand-in RRN: scores peak at the resolution index written in pixel [0, 0, 1] of each image."""

    def __init__(self, k: int) -> None:
        super().__init__()
        self.k = k

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.one_hot(x[:, 0, 0, 1].long(), self.k).float() * 5.0


class SnapshotDRGFER(DRGFER):
    """DRGFER that keeps a copy of its state when every stage starts and ends (after restore-best)."""

    instances: ClassVar[list[SnapshotDRGFER]] = []

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.snapshots: dict[tuple[str, str], dict[str, torch.Tensor]] = {}
        SnapshotDRGFER.instances.append(self)

    def _snap(self) -> dict[str, torch.Tensor]:
        return {k: v.detach().clone() for k, v in self.state_dict().items()}

    def on_stage_start(self, stage) -> None:
        self.snapshots[(stage.name, "start")] = self._snap()

    def on_stage_end(self, stage) -> None:
        self.snapshots[(stage.name, "end")] = self._snap()

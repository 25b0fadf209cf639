"""Residual voting network: a ResNet-18 for 48x48 faces that cuts an intermediate feature map into 10 crops.

Paper: "Residual voting network for low-resolution facial expression recognition" (the ``voting`` method).

* Network (Section 3.1, Figure 1): torchvision's ResNet-18 with a 3x3 / stride-1 stem and no max-pool
  (``build_resnet(stem="conv3")``); otherwise unchanged ("Module k" of the paper is ``layer<k>``).
* Crops (Section 3.1, Algorithm 1, Figures 2-3): after module ``split_after`` (1, 2 or 3) every feature map
  is cut into five overlapping squares of side ``round(5/6 * side)`` — the four corners and the centre —
  and the same five squares are taken from the horizontally mirrored map: 10 crops per sample, concatenated
  along the batch dimension in the order of Algorithm 1 (sample-major: sample 0's five crops, its five
  mirrored crops, then sample 1, ...). The rest of the network runs on the ``10 N`` crops.
  ``split_after=0`` is the plain baseline (no crops).
* Voting: the FC output of every crop is one vote; ``soft`` averages the 10 softmax distributions,
  ``hard`` counts the 10 arg-maxes (Section 3.1, Table 3).

Choices the paper leaves open (also in experiments/voting/README.md):

* The centre crop starts at ``(side - crop) // 2`` (48 -> 40 at offset 4, 24 -> 20 at 2, 12 -> 10 at 1; all
  exact because every module's side is divisible by six, as the paper notes).
* Mirrored crops are the same five windows taken from the flipped map (so the mirrored top-left crop
  holds the flipped top-right region).
* Soft voting returns ``log(mean softmax)``; hard voting returns ``log(vote share)`` with ties broken by the
  mean softmax (a 1e-3 weighted term that never reorders classes with different vote counts).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from lrfer.core.errors import UserError
from lrfer.models.resnet import build_resnet

NUM_CROPS = 10
VOTING_MODES = ("soft", "hard")


def crop_boxes(side: int, ratio: float = 5 / 6) -> tuple[int, list[tuple[int, int]]]:
    """Crop side and the (top, left) corners of the five windows: four corners, then the centre."""
    size = round(side * ratio)
    if not 0 < size <= side:
        raise UserError(f"cannot take {ratio:.3f} crops of a {side}px feature map")
    far = side - size
    mid = far // 2
    return size, [(0, 0), (0, far), (far, 0), (far, far), (mid, mid)]


def ten_crops(x: torch.Tensor, ratio: float = 5 / 6) -> torch.Tensor:
    """Algorithm 1: ``(N, C, H, W) -> (10 N, C, h, w)``, 5 crops then the same 5 of the mirrored map."""
    height, width = int(x.shape[-2]), int(x.shape[-1])
    if height != width:
        raise UserError(f"ten_crops expects square maps, got {height}x{width}")
    size, boxes = crop_boxes(width, ratio)
    mirrored = torch.flip(x, dims=[-1])
    crops = [src[..., t : t + size, s : s + size] for src in (x, mirrored) for t, s in boxes]
    return torch.stack(crops, dim=1).flatten(0, 1)


def vote(crop_logits: torch.Tensor, mode: str = "soft", num_crops: int = NUM_CROPS) -> torch.Tensor:
    """Combine ``(N * num_crops, K)`` crop logits into ``(N, K)`` class scores (soft or hard voting)."""
    if mode not in VOTING_MODES:
        raise UserError(f"unknown voting {mode!r}: choose one of {', '.join(VOTING_MODES)}")
    probs = F.softmax(crop_logits.float(), dim=1).unflatten(0, (-1, num_crops))
    mean = probs.mean(dim=1)
    if mode == "soft":
        return mean.clamp_min(1e-12).log()
    votes = F.one_hot(probs.argmax(dim=2), probs.shape[2]).float().mean(dim=1)
    return (votes + 1e-3 * mean).clamp_min(1e-12).log()


class VotingResNet(nn.Module):
    """ResNet-18 (3x3 stem, no max-pool) whose modules after ``split_after`` run on 10 crops per sample.

    ``forward(x)`` returns the FC output of every crop, ``(10 N, K)`` (``(N, K)`` when ``split_after=0``);
    :func:`vote` turns it into per-sample scores.
    """

    def __init__(
        self,
        num_classes: int,
        input_size: int,
        split_after: int = 1,
        crop_ratio: float = 5 / 6,
        arch: str = "resnet18",
        stem: str = "conv3",
        in_channels: int = 3,
        weights: str | None = None,
    ) -> None:
        super().__init__()
        if split_after not in (0, 1, 2, 3):
            raise UserError(f"split_after must be 0 (baseline), 1, 2 or 3, got {split_after}")
        self.split_after = split_after
        self.crop_ratio = crop_ratio
        classifier = build_resnet(
            num_classes, input_size, arch=arch, stem=stem, in_channels=in_channels, weights=weights
        )
        # same parameter names as ResNetClassifier (backbone.*, fc.*): weights move between the two
        self.backbone = classifier.backbone
        self.fc = classifier.fc

    @property
    def num_crops(self) -> int:
        return NUM_CROPS if self.split_after > 0 else 1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        net = self.backbone
        x = net.maxpool(net.relu(net.bn1(net.conv1(x))))
        for k, layer in enumerate((net.layer1, net.layer2, net.layer3, net.layer4), start=1):
            x = layer(x)
            if k == self.split_after:
                x = ten_crops(x, self.crop_ratio)
        return self.fc(torch.flatten(net.avgpool(x), 1))

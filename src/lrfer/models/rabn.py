"""Resolution-aware BatchNorm (RA-BN), from "Dynamic Resolution Network" (Zhu et al., NeurIPS 2021), the
baseline DRGFER compares with: every BatchNorm of a network is replaced by K parallel BatchNorms, one per
resolution, while every convolution and fully connected weight stays shared. A batch is split per
resolution so that each BatchNorm normalises with, and accumulates running statistics of, its own
resolution only.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from lrfer.models.mrafer import assign, gather


class MultiBatchNorm2d(nn.Module):
    """K ``BatchNorm2d`` in parallel; ``branch`` (settable) says which one normalises the next input."""

    def __init__(self, bn: nn.BatchNorm2d, branches: int) -> None:
        super().__init__()
        if branches < 1:
            raise ValueError("MultiBatchNorm2d needs at least one branch")
        self.bns = nn.ModuleList([copy.deepcopy(bn) for _ in range(branches)])
        self.branch = 0

    @property
    def num_branches(self) -> int:
        return len(self.bns)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bns[self.branch](x)


def convert_batchnorm(module: nn.Module, branches: int) -> nn.Module:
    """Replace every ``BatchNorm2d`` inside ``module`` (in place) by a :class:`MultiBatchNorm2d`."""
    for name, child in module.named_children():
        if isinstance(child, nn.BatchNorm2d):
            setattr(module, name, MultiBatchNorm2d(child, branches))
        else:
            convert_batchnorm(child, branches)
    return module


class ResolutionAwareBN(nn.Module):
    """A classifier whose BatchNorms are resolution-aware; ``forward(x, branch)`` splits the batch per branch.

    ``net`` is any classifier (e.g. :class:`~lrfer.models.resnet.ResNetClassifier`); its BatchNorm2d layers
    are converted in place. ``branch`` (N,) is the resolution index of every image.
    """

    def __init__(self, net: nn.Module, branches: int) -> None:
        super().__init__()
        self.net = convert_batchnorm(net, branches)
        self.num_branches = branches
        if not any(isinstance(m, MultiBatchNorm2d) for m in self.net.modules()):
            raise ValueError("the network has no BatchNorm2d to make resolution-aware")

    def select(self, branch: int) -> None:
        """Make every BatchNorm use branch ``branch``."""
        for m in self.net.modules():
            if isinstance(m, MultiBatchNorm2d):
                m.branch = branch

    def forward(self, x: torch.Tensor, branch: torch.Tensor) -> torch.Tensor:
        if x.shape[0] == 0:
            self.select(0)
            return self.net(x)
        groups = assign(F.one_hot(branch.long(), self.num_branches))
        outputs = []
        for k, idx in enumerate(groups):  # one pass per resolution group, never per sample
            if idx.numel() == 0:
                outputs.append(None)
                continue
            self.select(k)
            outputs.append(self.net(x[idx]))
        return gather(outputs, groups, x.shape[0])

"""MRAFER, the Multi-Resolution Adaptation FER network of DRGFER (Wang et al., "Dynamic Resolution
Guidance for Facial Expression Recognition", sec. 4.2): one FER network ("FER block") per resolution,
an **Assign** operation that splits a batch into one sub-batch per resolution (eq. 4-5) and a **Gather**
operation that puts every sub-batch's predictions back in the original order (eq. 6-7).

Routing is batched: the batch is split once per resolution group (a loop over the K groups, never over
samples), every expert runs once on its whole group, and the groups are scattered back with one indexed
copy each. Also here: the binarisation of the resolution recognition network's output (eq. 3) and the
two fusions of all experts used by the paper's Mean and Max baselines.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn


def binarize(scores: torch.Tensor) -> torch.Tensor:
    """Eq. 3: one-hot vector (N, K) with a 1 at the maximum of each row of ``scores`` (no threshold)."""
    return F.one_hot(scores.argmax(dim=1), scores.shape[1]).to(torch.long)


def assign(onehot: torch.Tensor) -> list[torch.Tensor]:
    """Eq. 4-5, ``Assign``: for each group k the sorted indices i of the samples with ``onehot[i, k] = 1``."""
    return [torch.nonzero(onehot[:, k]).flatten() for k in range(onehot.shape[1])]


def gather(outputs: Sequence[torch.Tensor | None], groups: Sequence[torch.Tensor], n: int) -> torch.Tensor:
    """Eq. 6-7, ``Gather``: row ``groups[k][j]`` of the result is row j of ``outputs[k]``.

    ``outputs[k]`` is None (or empty) for an empty group. Every one of the ``n`` rows must be covered.
    """
    present = [(o, g) for o, g in zip(outputs, groups) if o is not None and g.numel() > 0]
    if not present:
        raise ValueError("gather needs at least one non-empty group")
    ref = present[0][0]
    covered = sum(g.numel() for _, g in present)
    if covered != n:
        raise ValueError(f"the groups cover {covered} rows, expected {n}")
    dtype = ref.dtype
    for o, _ in present[1:]:
        dtype = torch.promote_types(dtype, o.dtype)
    out = ref.new_empty((n, *ref.shape[1:]), dtype=dtype)
    for o, g in present:
        out.index_copy_(0, g, o.to(dtype))
    return out


def fuse_mean(probs: torch.Tensor) -> torch.Tensor:
    """The paper's **Mean** baseline as we read it: the average of the K experts' softmax outputs.

    ``probs`` (K, N, C) -> (N, C) probabilities.
    """
    return probs.mean(dim=0)


def fuse_max(probs: torch.Tensor) -> torch.Tensor:
    """The paper's **Max** baseline as we read it: max-pooling of the K experts' softmax outputs over the
    experts, per class, renormalised to sum to 1.

    The predicted class (argmax) is exactly the top class of the most confident expert (the expert whose
    largest probability is the largest), since ``max_c max_k p_k(c) = max_k max_c p_k(c)``.
    ``probs`` (K, N, C) -> (N, C) probabilities.
    """
    pooled = probs.amax(dim=0)
    return pooled / pooled.sum(dim=1, keepdim=True)


class MRAFER(nn.Module):
    """K FER experts ("FER blocks"), one per resolution, with batched Assign / Gather routing."""

    def __init__(self, experts: Sequence[nn.Module]) -> None:
        super().__init__()
        if not experts:
            raise ValueError("MRAFER needs at least one expert")
        self.experts = nn.ModuleList(experts)

    @property
    def num_experts(self) -> int:
        return len(self.experts)

    def forward(self, images: torch.Tensor, onehot: torch.Tensor) -> torch.Tensor:
        """Logits of every image from the expert its binary resolution vector ``onehot`` (N, K) selects."""
        if onehot.shape != (images.shape[0], self.num_experts):
            raise ValueError(
                f"onehot must be ({images.shape[0]}, {self.num_experts}), got {tuple(onehot.shape)}"
            )
        if images.shape[0] == 0:
            return self.experts[0](images)
        groups = assign(onehot)  # eq. 4-5
        outputs = [self.experts[k](images[g]) if g.numel() else None for k, g in enumerate(groups)]
        return gather(outputs, groups, images.shape[0])  # eq. 6-7

    def route(self, images: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        """Like :meth:`forward` with the expert given as an index (N,) instead of a one-hot vector."""
        return self(images, F.one_hot(index.long(), self.num_experts))

    def expert_probabilities(self, images: torch.Tensor) -> torch.Tensor:
        """Softmax outputs of every expert on every image: (K, N, C), in float32."""
        return torch.stack([e(images).float().softmax(dim=1) for e in self.experts])

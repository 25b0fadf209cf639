"""MRAFER, the Multi-Resolution Adaptation FER network of DRGFER (Wang et al., "Dynamic Resolution
Guidance for Facial Expression Recognition", sec. 4.2): one FER network ("FER block") per resolution,
an **Assign** operation that splits a batch into one sub-batch per resolution (eq. 4-5) and a **Gather**
operation that puts every sub-batch's predictions back in the original order (eq. 6-7).

Routing is batched: the batch is split once per resolution group (a loop over the K groups, never over
samples), every expert runs once on its whole group, and the groups are scattered back with one indexed
copy each. The group sizes are read on the host once per forward (one synchronisation, not one per group).

The group sizes depend on the data, and every new batch size costs a GPU something: ``cudnn.benchmark``
times the convolution algorithms again, ``torch.compile`` specialises or recompiles, and CUDA graphs
(``compile_mode=reduce-overhead``) record a new graph. In evaluation mode a group is therefore padded to
the next of a few fixed sizes (:func:`bucket_size`: 1, 2, 3, 4, 6, 8, 12, 16, 24, ...), the padding rows
repeating the group's first image, and the padding's outputs are dropped. For batches of up to 256 images
an expert sees at most 16 batch sizes instead of up to 256, for at most half again as many rows per group
(two sizes per doubling). Outputs are unchanged: in evaluation mode every image's output depends on that
image alone. In training mode BatchNorm normalises with the batch's statistics, so padding would change
the real rows: there every expert sees its group as it is (the DRGFER stages train the experts directly;
MRAFER routes at prediction). Turning ``cudnn.benchmark`` off around the experts instead would leave
compile and CUDA graphs with the data-dependent shapes, and the experts with cuDNN's untimed choices.

Also here: the binarisation of the resolution recognition network's output (eq. 3) and the
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


def bucket_size(n: int) -> int:
    """The smallest size of the form 2^j or 3 * 2^j that holds ``n`` rows (1, 2, 3, 4, 6, 8, 12, 16, ...)."""
    if n <= 1:
        return n
    power = 1 << (n - 1).bit_length()  # the smallest power of two >= n
    three_quarters = 3 * power // 4
    return three_quarters if three_quarters >= n else power


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
        # eq. 4-5: the samples of every group, in order; their sizes, and how many rows are not one-hot (group
        # sizes that add up can still hide a row with two 1s and one with none), read on the host once
        not_one_hot = ((onehot != 0).sum(dim=1) != 1) | (onehot.sum(dim=1) != 1)
        *counts, bad = torch.cat([onehot.sum(dim=0), not_one_hot.sum().reshape(1)]).tolist()
        if bad:
            raise ValueError(f"every row of onehot must hold exactly one 1, got group sizes {counts}")
        groups = list(torch.split(torch.argsort(onehot.argmax(dim=1), stable=True), counts))
        outputs = [self._expert(k, images, g) if g.numel() else None for k, g in enumerate(groups)]
        return gather(outputs, groups, images.shape[0])  # eq. 6-7

    def _expert(self, k: int, images: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        """Expert k's outputs for ``images[rows]``; in evaluation mode computed on a batch padded to
        :func:`bucket_size` (the padding repeats the first row) and cut back."""
        n = rows.shape[0]
        size = n if self.training else bucket_size(n)
        if size != n:
            rows = torch.cat([rows, rows[:1].expand(size - n)])
        return self.experts[k](images[rows])[:n]

    def route(self, images: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        """Like :meth:`forward` with the expert given as an index (N,) instead of a one-hot vector."""
        return self(images, F.one_hot(index.long(), self.num_experts))

    def expert_probabilities(self, images: torch.Tensor) -> torch.Tensor:
        """Softmax outputs of every expert on every image: (K, N, C), in float32."""
        return torch.stack([e(images).float().softmax(dim=1) for e in self.experts])

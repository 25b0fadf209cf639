"""Centre loss (Wen et al., "A Discriminative Feature Learning Approach for Deep Face Recognition", ECCV
2016) in the form CovPoolFER's training code uses (Acharya et al., "Covariance Pooling for Facial Expression
Recognition", CVPRW 2018; its ``framework.center_loss``, taken from facenet):

    L_c = 1 / (N d) sum_i ||f_i - c_{y_i}||_2^2

a mean over the N samples of the batch and the d feature dimensions, against class centres ``c`` that the
optimiser does not train: they start at 0 and, after every training batch, move towards the batch's features,
``c_{y_i} <- c_{y_i} - (1 - alpha) (c_{y_i} - f_i)`` for every sample i (summed when several samples share a
class, as TensorFlow's ``scatter_sub``). CovPoolFER's ``train.sh`` adds ``1e-2 * L_c`` to the cross-entropy
with ``alpha = 0.9`` (``--center_loss_factor 1e-2 --center_loss_alfa 0.9``); the loss sees the centres as
they were before the batch's update, and its gradient reaches the features only:
``dL_c / df_i = 2 (f_i - c_{y_i}) / (N d)``.

Under torchrun each process updates the centres from its own share of the batch and DistributedDataParallel
broadcasts rank 0's buffers before every forward, so the centres follow rank 0's shares.
"""

from __future__ import annotations

import torch
from torch import nn


class CenterLoss(nn.Module):
    """The centre loss and its class centres (a ``(num_classes, dim)`` buffer, saved with the method)."""

    def __init__(self, num_classes: int, dim: int, alpha: float = 0.9) -> None:
        """``alpha``: CovPoolFER's ``center_loss_alfa``; the centres move by ``1 - alpha`` of their distance
        to each training feature."""
        super().__init__()
        if not 0.0 <= alpha <= 1.0:
            raise ValueError(f"the centre-loss alpha must be in [0, 1], got {alpha}")
        self.alpha = float(alpha)
        self.register_buffer("centers", torch.zeros(num_classes, dim))

    def forward(self, features: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """``L_c`` of ``features`` (N, d) against the current centres; in training mode the centres of the
        batch's classes are then updated (no gradient reaches them)."""
        features = features.float().flatten(1)
        centers = self.centers[labels]
        loss = (features - centers).pow(2).mean()
        if self.training:
            with torch.no_grad():
                step = (1.0 - self.alpha) * (centers - features.detach())
                self.centers.index_add_(0, labels, step, alpha=-1.0)
        return loss

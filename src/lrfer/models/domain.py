"""Domain-adversarial parts (Ganin & Lempitsky, "Unsupervised Domain Adaptation by Backpropagation",
ICML 2015): the gradient reversal layer and a domain discriminator on a feature vector.

The gradient reversal layer is the identity in the forward pass and multiplies the gradient by
``-coeff`` in the backward pass, so the feature extractor is trained to *increase* the discriminator's
loss while the discriminator itself minimises it.
"""

from __future__ import annotations

import torch
from torch import nn


class _GradientReversal(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, coeff: float) -> torch.Tensor:
        ctx.coeff = float(coeff)
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        return grad.neg() * ctx.coeff, None


def grad_reverse(x: torch.Tensor, coeff: float = 1.0) -> torch.Tensor:
    """Identity forward; gradient multiplied by ``-coeff`` backward."""
    return _GradientReversal.apply(x, coeff)


class GradientReversal(nn.Module):
    """:func:`grad_reverse` as a module with a settable ``coeff``."""

    def __init__(self, coeff: float = 1.0) -> None:
        super().__init__()
        self.coeff = coeff

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return grad_reverse(x, self.coeff)


class DomainDiscriminator(nn.Module):
    """Ganin & Lempitsky's domain classifier ``in_dim -> hidden -> hidden -> domains`` (ReLU, dropout)."""

    def __init__(self, in_dim: int, domains: int, hidden: int = 1024, dropout: float = 0.5) -> None:
        super().__init__()
        self.layers = nn.Sequential(
            nn.Linear(in_dim, hidden),
            nn.ReLU(inplace=True),
            nn.Dropout(dropout),
            nn.Linear(hidden, hidden),
            nn.ReLU(inplace=True),
            nn.Dropout(dropout),
            nn.Linear(hidden, domains),
        )

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.layers(features)

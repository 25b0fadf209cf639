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
    """A domain classifier ``in_dim -> hidden -> hidden -> domains`` on a feature vector.

    Each hidden layer is ``Linear``, then ``BatchNorm1d`` when ``batch_norm``, ``ReLU`` and ``Dropout``.
    ``batch_norm=True, dropout=0`` is the Transfer-Learning-Library's ``DomainDiscriminator`` (Jiang, Long et
    al.'s ``tllib``, whose default it is); ``batch_norm=False, dropout=0.5`` is Ganin & Lempitsky's MLP.
    Under Adam the latter's first-layer units all die on non-negative pooled features (see
    :class:`~lrfer.methods.da.DomainAdversarial`). With ``batch_norm`` off the layers keep the indices the
    plain MLP always had, so checkpoints written before the option existed load.
    """

    def __init__(
        self, in_dim: int, domains: int, hidden: int = 1024, dropout: float = 0.5, batch_norm: bool = False
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        for fan_in in (in_dim, hidden):
            layers.append(nn.Linear(fan_in, hidden))
            if batch_norm:
                layers.append(nn.BatchNorm1d(hidden))
            layers += [nn.ReLU(inplace=True), nn.Dropout(dropout)]
        layers.append(nn.Linear(hidden, domains))
        self.layers = nn.Sequential(*layers)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.layers(features)

"""CovPoolFER (Acharya et al., CVPRW 2018): a conv trunk, covariance pooling and SPDNet layers.

FSR-FER (paper 001) freezes this network and splits it in two (its eq. 1-2 and 9):

* ``feature_map(x)`` = SPD(F(x)): conv trunk -> covariance pooling -> BiMap -> ReEig -> LogEig, a
  ``(N, 1, d, d)`` log-covariance map (d = 128 in the official model) on which the FSR generator works;
* ``embed(F)`` = C(F): flatten -> fc 2000 -> ReLU -> fc 128, the 128-d vector of the perceptual loss (eq. 9);
* ``classify(e)``: fc to the classes.

Layout of the official model for 100x100 faces (FSR-FER's / CovPoolFER's public code): 3x3 conv+BN+ReLU 64,
max-pool, 96, max-pool, 128, 128, max-pool, 256, 256 -> 12x12x256; covariance 256x256 regularised with
``1e-4 * trace * I``; BiMap 256 -> 128 (orthogonal initialisation); ReEig (eigenvalues clipped at 1e-4);
LogEig; flatten; fc 2000; fc 128; fc classes.

Numerical safety of the eigen-decomposition (a known NaN source):

* every SPD operation (covariance, BiMap, eigh, reconstruction) runs in float64 with autocast disabled,
  the results go back to float32;
* ReEig and LogEig are one custom autograd function of the eigenvalues, ``Y = U f(L) U^T``, whose backward
  is the Daleckii-Krein form ``dX = U (K o (U^T sym(dY) U)) U^T`` with the divided differences
  ``K_ij = (f(l_i) - f(l_j)) / (l_i - l_j)`` and ``K_ij = f'((l_i + l_j) / 2)`` where ``l_i`` and ``l_j``
  are within a relative ``1e-6`` of each other. This is the standard SPDNet backprop (Ionescu et al.'s
  ``1 / (l_i - l_j)`` matrix multiplied by the eigenvalue differences of the output) with the division
  done where it is well conditioned and the limit used at (near-)ties, so degenerate eigenvalues (a
  rank-deficient covariance, a constant feature map) give finite gradients bounded by ``max |f'|``
  (1 for ReEig, 1/eps for LogEig after ReEig);
* LogEig used alone floors eigenvalues at ``1e-12`` so that ``log`` never sees 0.

The BiMap weight has an orthogonal initialisation and is then trained as an ordinary parameter (no
Stiefel-manifold retraction): CovPoolFER's TensorFlow code trains it with the network's optimiser; ReEig
keeps the result positive definite either way.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

#: Relative distance under which two eigenvalues are treated as equal in the backward pass.
TIE_TOLERANCE = 1e-6
#: Floor of the eigenvalues inside a standalone LogEig.
LOG_FLOOR = 1e-12

_KINDS = ("reeig", "log", "reeig_log")


def _eig_fn(kind: str, lam: torch.Tensor, eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """``f(lam)`` and ``f'(lam)`` of the eigenvalue function ``kind``."""
    if kind == "reeig":
        return lam.clamp(min=eps), (lam > eps).to(lam.dtype)
    if kind == "log":
        floor = lam.clamp(min=LOG_FLOOR)
        return floor.log(), (lam > LOG_FLOOR).to(lam.dtype) / floor
    if kind == "reeig_log":
        floor = lam.clamp(min=eps)
        return floor.log(), (lam > eps).to(lam.dtype) / floor
    raise ValueError(f"unknown eigenvalue function {kind!r}: one of {_KINDS}")


def _sym(x: torch.Tensor) -> torch.Tensor:
    return 0.5 * (x + x.transpose(-1, -2))


def _eigh(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``torch.linalg.eigh`` in float64; on a (rare) convergence failure, retried with a tiny jitter."""
    try:
        return torch.linalg.eigh(x)
    except torch.linalg.LinAlgError:
        scale = x.diagonal(dim1=-2, dim2=-1).abs().mean(-1).clamp(min=1.0)[..., None, None]
        eye = torch.eye(x.shape[-1], dtype=x.dtype, device=x.device)
        return torch.linalg.eigh(x + 1e-10 * scale * eye)


class _SPDFunction(torch.autograd.Function):
    """``Y = U diag(f(L)) U^T`` for symmetric ``X = U diag(L) U^T`` with a tie-safe backward."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, kind: str, eps: float) -> torch.Tensor:  # type: ignore[override]
        xd = _sym(x.detach().double())
        lam, u = _eigh(xd)
        f, _ = _eig_fn(kind, lam, eps)
        y = (u * f.unsqueeze(-2)) @ u.transpose(-1, -2)
        ctx.save_for_backward(lam, u)
        ctx.kind, ctx.eps = kind, eps
        return y.to(x.dtype)

    @staticmethod
    def backward(ctx, grad_y: torch.Tensor):  # type: ignore[override]
        lam, u = ctx.saved_tensors
        return spd_backward(lam, u, grad_y, ctx.kind, ctx.eps).to(grad_y.dtype), None, None


def divided_differences(lam: torch.Tensor, kind: str, eps: float) -> torch.Tensor:
    """The matrix ``K_ij = (f(l_i) - f(l_j)) / (l_i - l_j)``, ``f'`` of the midpoint at (near-)ties."""
    f, _ = _eig_fn(kind, lam, eps)
    li, lj = lam.unsqueeze(-1), lam.unsqueeze(-2)
    diff = li - lj
    scale = torch.maximum(li.abs(), lj.abs()).clamp(min=eps)
    tie = diff.abs() <= TIE_TOLERANCE * scale
    _, fp_mid = _eig_fn(kind, 0.5 * (li + lj), eps)
    safe = torch.where(tie, torch.ones_like(diff), diff)
    return torch.where(tie, fp_mid, (f.unsqueeze(-1) - f.unsqueeze(-2)) / safe)


def spd_backward(
    lam: torch.Tensor, u: torch.Tensor, grad_y: torch.Tensor, kind: str, eps: float
) -> torch.Tensor:
    """Gradient w.r.t. ``X`` of ``Y = U f(L) U^T`` (Daleckii-Krein; see the module docstring)."""
    k = divided_differences(lam, kind, eps)
    g = _sym(grad_y.double())
    ut = u.transpose(-1, -2)
    return u @ (k * (ut @ g @ u)) @ ut


def spd_function(x: torch.Tensor, kind: str, eps: float = 1e-4) -> torch.Tensor:
    """Apply an eigenvalue function (``reeig``, ``log``, ``reeig_log``) to symmetric matrices (..., d, d)."""
    if kind not in _KINDS:
        raise ValueError(f"unknown eigenvalue function {kind!r}: one of {_KINDS}")
    with torch.autocast(device_type=x.device.type, enabled=False):
        return _SPDFunction.apply(x, kind, float(eps))


def covariance_pool(features: torch.Tensor, reg: float = 1e-4) -> torch.Tensor:
    """Covariance of the ``h*w`` feature vectors of (N, C, h, w) maps, ``+ reg * trace * I`` (float64).

    With fewer positions than channels the covariance is rank-deficient; the trace term keeps it SPD
    (a constant map gives the zero matrix, whose eigenvalues ReEig then clips).
    """
    with torch.autocast(device_type=features.device.type, enabled=False):
        x = features.double().flatten(2)  # (N, C, M)
        m = x.shape[-1]
        x = x - x.mean(dim=-1, keepdim=True)
        cov = x @ x.transpose(-1, -2) / max(1, m - 1)
        trace = cov.diagonal(dim1=-2, dim2=-1).sum(-1)[:, None, None]
        eye = torch.eye(cov.shape[-1], dtype=cov.dtype, device=cov.device)
        return cov + reg * trace * eye


class BiMap(nn.Module):
    """SPDNet's bilinear map ``W^T X W`` (d_in -> d_out), W initialised with orthonormal columns."""

    def __init__(self, d_in: int, d_out: int) -> None:
        super().__init__()
        if d_out > d_in:
            raise ValueError(f"BiMap reduces the dimension: d_out={d_out} > d_in={d_in}")
        self.weight = nn.Parameter(torch.empty(d_in, d_out))
        nn.init.orthogonal_(self.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.autocast(device_type=x.device.type, enabled=False):
            w = self.weight.to(x.dtype)
            return w.transpose(0, 1) @ x @ w


class ReEig(nn.Module):
    """SPDNet's rectification: eigenvalues clipped at ``eps`` (``max(l, eps)``)."""

    def __init__(self, eps: float = 1e-4) -> None:
        super().__init__()
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return spd_function(x, "reeig", self.eps)


class LogEig(nn.Module):
    """SPDNet's matrix logarithm ``U log(L) U^T`` (eigenvalues floored at 1e-12)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return spd_function(x, "log")


def _fc(d_in: int, d_out: int, bn: bool) -> list[nn.Module]:
    """A fully connected layer, with BatchNorm (and then no bias) when ``bn``, as TF-slim's normalizer_fn."""
    return [nn.Linear(d_in, d_out, bias=not bn), nn.BatchNorm1d(d_out)] if bn else [nn.Linear(d_in, d_out)]


class CovPoolFER(nn.Module):
    """CovPoolFER with the feature_map / embed / classify split of FSR-FER (see the module docstring).

    Head options (the official CovPoolFER code, ``covpoolnet.py``, whose slim ``arg_scope`` puts a BatchNorm
    after every fully connected layer too): ``fc_bn`` adds BatchNorm1d after each fc (no bias);
    ``embed_relu`` applies ReLU to the 128-d embedding before classifying (the embedding ``C(F)`` of eq. 9 is
    taken before it, as the FSR-FER code's ``net_f``); ``bottleneck=7`` adds CovPoolFER's "Bottleneck" fc
    (+ BN) before the final ``Logits`` fc. All off = the plain flatten -> fc 2000 -> ReLU -> fc 128 -> fc.

    ReEig followed by LogEig is computed as one eigen-decomposition, ``U log(max(L, eps)) U^T``, which
    equals ``LogEig(ReEig(X))`` exactly (ReEig keeps the eigenvectors).
    """

    #: Entry points FSR-FER calls directly, compiled with ``forward`` by ``trainer.compile=true``.
    compiled_methods = ("feature_map", "embed", "classify")

    def __init__(
        self,
        num_classes: int,
        in_channels: int = 3,
        widths: Sequence[int] = (64, 96, 128, 128, 256, 256),
        pool_after: Sequence[int] = (0, 1, 3),
        bimap_dim: int = 128,
        fc_dims: Sequence[int] = (2000, 128),
        eig_eps: float = 1e-4,
        cov_reg: float = 1e-4,
        fc_bn: bool = False,
        embed_relu: bool = False,
        bottleneck: int = 0,
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        prev = in_channels
        for i, width in enumerate(widths):
            layers += [nn.Conv2d(prev, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU(True)]
            if i in pool_after:
                layers.append(nn.MaxPool2d(2))
            prev = width
        self.trunk = nn.Sequential(*layers)
        self.cov_reg = cov_reg
        self.eig_eps = eig_eps
        self.bimap = BiMap(prev, bimap_dim)
        self.feature_dim = bimap_dim
        fcs: list[nn.Module] = []
        dim = bimap_dim * bimap_dim
        for i, width in enumerate(fc_dims):
            fcs += _fc(dim, width, fc_bn)
            if i + 1 < len(fc_dims):
                fcs.append(nn.ReLU(True))
            dim = width
        self.head = nn.Sequential(nn.Flatten(), *fcs)
        self.embed_dim = dim
        pre: list[nn.Module] = [nn.ReLU()] if embed_relu else []
        if bottleneck:
            pre += _fc(dim, int(bottleneck), fc_bn)
            dim = int(bottleneck)
        self.pre_fc = nn.Sequential(*pre)
        self.prelogit_dim = dim
        self.fc = nn.Linear(dim, num_classes)

    def spd(self, x: torch.Tensor) -> torch.Tensor:
        """Covariance pooling -> BiMap -> ReEig -> LogEig of trunk maps: (N, d, d) float64."""
        cov = covariance_pool(self.trunk(x), self.cov_reg)
        return spd_function(self.bimap(cov), "reeig_log", self.eig_eps)

    def feature_map(self, x: torch.Tensor) -> torch.Tensor:
        """``SPD(F(x))`` (eq. 1-2): the (N, 1, d, d) log-covariance map, float32."""
        return self.spd(x).float().unsqueeze(1)

    def embed(self, features: torch.Tensor) -> torch.Tensor:
        """``C(F)`` (eq. 9): flatten -> fc 2000 -> ReLU -> fc 128."""
        return self.head(features)

    def prelogits(self, embedding: torch.Tensor) -> torch.Tensor:
        """What the final fc reads: the 7-d "Bottleneck" output with ``bottleneck=7`` (CovPoolFER's
        ``prelogits``, on which its centre loss acts), else the embedding (after ``embed_relu``)."""
        return self.pre_fc(embedding)

    def logits(self, prelogits: torch.Tensor) -> torch.Tensor:
        return self.fc(prelogits)

    def classify(self, embedding: torch.Tensor) -> torch.Tensor:
        return self.logits(self.prelogits(embedding))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classify(self.embed(self.feature_map(x)))

"""CovPoolFER and its SPD layers: gradients of the eigen-decomposition, near-singular inputs, shapes."""

from __future__ import annotations

import pytest
import torch

from lrfer.models.covpool import (
    BiMap,
    CovPoolFER,
    LogEig,
    ReEig,
    covariance_pool,
    divided_differences,
    spd_function,
)

SMALL = dict(widths=(8, 8, 8, 8, 16, 16), bimap_dim=8, fc_dims=(32, 16))


pytestmark = pytest.mark.usefixtures("one_thread")


def _spd(n: int = 3, d: int = 6, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(n, d, d, dtype=torch.float64, generator=g)
    return a @ a.mT + 0.1 * torch.eye(d, dtype=torch.float64)


@pytest.mark.parametrize("kind", ["reeig", "log", "reeig_log"])
def test_backward_passes_gradcheck(kind):
    x = _spd().requires_grad_(True)
    assert torch.autograd.gradcheck(lambda t: spd_function(0.5 * (t + t.mT), kind, 0.5), (x,))


@pytest.mark.parametrize("kind", ["reeig", "log", "reeig_log"])
def test_backward_matches_autograd_through_eigh_for_distinct_eigenvalues(kind):
    x = _spd()
    ref = x.clone().requires_grad_(True)
    lam, u = torch.linalg.eigh(ref)
    f = {"reeig": lam.clamp(min=0.5), "log": lam.log(), "reeig_log": lam.clamp(min=0.5).log()}[kind]
    g = torch.randn(x.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    ((u @ torch.diag_embed(f) @ u.mT) * g).sum().backward()
    ours = x.clone().requires_grad_(True)
    (spd_function(ours, kind, 0.5) * g).sum().backward()
    assert torch.allclose(ours.grad, 0.5 * (ref.grad + ref.grad.mT), atol=1e-10)


def test_repeated_eigenvalues_give_the_derivative_not_nan():
    # c * I has one eigenvalue of multiplicity d: 1 / (l_i - l_j) is infinite, the divided difference is f'(c)
    x = (2.0 * torch.eye(5, dtype=torch.float64)).expand(2, 5, 5).clone().requires_grad_(True)
    g = torch.randn(2, 5, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    (spd_function(x, "reeig_log", 1e-4) * g).sum().backward()
    assert torch.allclose(x.grad, 0.5 * (g + g.mT) / 2.0, atol=1e-12)
    k = divided_differences(torch.tensor([1.0, 1.0 + 1e-9, 3.0], dtype=torch.float64), "log", 1e-4)
    assert torch.isfinite(k).all() and torch.allclose(k[0, 1], torch.tensor(1.0, dtype=torch.float64))


def test_relu_and_log_of_eigenvalues():
    x = _spd(d=4)
    lam = torch.linalg.eigvalsh(x)
    clipped = ReEig(eps=lam[0, 1].item())(x)
    assert torch.allclose(torch.linalg.eigvalsh(clipped)[0, 0], lam[0, 1], atol=1e-10)
    assert torch.allclose(torch.linalg.matrix_exp(LogEig()(x)), x, atol=1e-8)
    fused = spd_function(x, "reeig_log", 0.3)
    assert torch.allclose(fused, LogEig()(ReEig(0.3)(x)), atol=1e-10)


def test_covariance_pool_is_the_regularised_covariance():
    feats = torch.randn(2, 6, 5, 4)
    cov = covariance_pool(feats, reg=1e-3)
    ref = torch.stack([torch.cov(f.flatten(1).double()) for f in feats])
    trace = ref.diagonal(dim1=-2, dim2=-1).sum(-1)
    assert cov.dtype == torch.float64 and torch.allclose(
        cov, ref + 1e-3 * trace[:, None, None] * torch.eye(6)
    )
    # fewer positions (4) than channels (16): rank-deficient, still positive definite after regularisation
    low_rank = covariance_pool(torch.randn(1, 16, 2, 2))
    assert torch.linalg.eigvalsh(low_rank).min() > 0


def test_bimap_starts_orthonormal():
    w = BiMap(16, 8).weight.detach()
    assert torch.allclose(w.T @ w, torch.eye(8), atol=1e-5)


@pytest.mark.parametrize("case", ["constant", "rank1", "zero_image"])
def test_near_singular_covariances_give_finite_outputs_and_gradients(case):
    torch.manual_seed(0)
    net = CovPoolFER(7, **SMALL)
    trunk_out = {
        "constant": torch.ones(3, 16, 4, 4),  # zero covariance: every eigenvalue 0, all tied
        "rank1": torch.randn(3, 16, 1, 1) * torch.randn(3, 1, 4, 4),  # covariance of rank 1
        "zero_image": None,
    }[case]
    if trunk_out is not None:
        net.trunk = torch.nn.Identity()
        x = trunk_out.clone().requires_grad_(True)
    else:
        x = torch.zeros(3, 3, 32, 32, requires_grad=True)
    logits = net(x)
    loss = torch.nn.functional.cross_entropy(logits, torch.tensor([0, 1, 2]))
    loss.backward()
    assert torch.isfinite(logits).all() and torch.isfinite(loss)
    grads = [p.grad for p in net.parameters() if p.grad is not None] + [x.grad]
    assert grads and all(torch.isfinite(g).all() for g in grads)


def test_short_training_on_near_singular_batches_stays_finite():
    torch.manual_seed(0)
    net = CovPoolFER(3, **SMALL)
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    g = torch.Generator().manual_seed(0)
    for step in range(6):
        x = torch.randn(4, 3, 24, 24, generator=g)
        if step % 2:  # nearly constant images: trunk maps with (almost) no spatial variance
            x = x.mean(dim=(2, 3), keepdim=True).expand_as(x) + 1e-6 * x
        loss = torch.nn.functional.cross_entropy(net(x), torch.arange(4) % 3)
        opt.zero_grad()
        loss.backward()
        assert torch.isfinite(loss)
        assert all(torch.isfinite(p.grad).all() for p in net.parameters() if p.grad is not None)
        opt.step()


def test_feature_map_embedding_and_logits_shapes_at_100px():
    net = CovPoolFER(7, widths=(8, 8, 8, 8, 16, 16), bimap_dim=12, fc_dims=(20, 10))
    x = torch.randn(2, 3, 100, 100)
    trunk = net.trunk(x)
    assert trunk.shape == (2, 16, 12, 12)  # 100 -> 50 -> 25 -> 12, as the official 12x12x256
    fmap = net.feature_map(x)
    assert fmap.shape == (2, 1, 12, 12) and fmap.dtype == torch.float32
    assert torch.allclose(fmap, fmap.mT, atol=1e-5)  # a log-covariance is symmetric
    assert net.embed(fmap).shape == (2, 10) and net(x).shape == (2, 7)


def test_official_layout_parameter_count():
    net = CovPoolFER(7)
    assert net.bimap.weight.shape == (256, 128)
    assert [m.out_features for m in net.head if isinstance(m, torch.nn.Linear)] == [2000, 128]
    assert net.head[1].in_features == 128 * 128 and net.fc.out_features == 7


def test_eigen_decomposition_runs_in_float64_under_autocast():
    net = CovPoolFER(7, **SMALL)
    x = torch.randn(2, 3, 32, 32, requires_grad=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        fmap = net.feature_map(x)
        loss = net(x).float().sum()
    loss.backward()
    assert fmap.dtype == torch.float32 and torch.isfinite(fmap).all()
    assert torch.isfinite(x.grad).all() and torch.isfinite(net.bimap.weight.grad).all()

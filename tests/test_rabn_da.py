"""DRGFER's baselines: RA-BN (one BatchNorm per resolution), DA (gradient reversal), MSTrain (factor mix)."""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from conftest import compose_cfg, method_options, tiny
from multires_toys import MarkerRouter, TinyBackbone, tiny_classifier

from lrfer.core.errors import UserError
from lrfer.engine.run import build_method, method_context, run_training
from lrfer.methods.base import Stage
from lrfer.methods.baseline import Baseline
from lrfer.methods.da import DomainAdversarial, ganin_coefficient
from lrfer.methods.mstrain import MultiScaleTraining
from lrfer.methods.rabn import ResolutionAwareBNMethod
from lrfer.models.domain import DomainDiscriminator, grad_reverse
from lrfer.models.rabn import MultiBatchNorm2d, ResolutionAwareBN

TINY_MODEL = "model._target_=multires_toys.tiny_classifier"


def _bn_stats(net: ResolutionAwareBN) -> list[list[torch.Tensor]]:
    multi = [m for m in net.modules() if isinstance(m, MultiBatchNorm2d)]
    return [[torch.cat([m.bns[k].running_mean, m.bns[k].running_var]) for m in multi] for k in range(3)]


def test_rabn_shares_weights_and_keeps_one_batchnorm_per_resolution():
    torch.manual_seed(0)
    plain = tiny_classifier(7, 16)
    net = ResolutionAwareBN(copy.deepcopy(plain), 3)
    bns = [m for m in plain.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    bn_params = sum(p.numel() for m in bns for p in m.parameters())
    n_plain = sum(p.numel() for p in plain.parameters())
    assert sum(p.numel() for p in net.parameters()) == n_plain + 2 * bn_params  # only the BNs are duplicated
    assert len([m for m in net.modules() if isinstance(m, MultiBatchNorm2d)]) == len(bns)
    assert len([m for m in net.modules() if isinstance(m, torch.nn.BatchNorm2d)]) == 3 * len(bns)


def test_a_batch_of_one_factor_moves_only_that_factors_batchnorm_statistics():
    torch.manual_seed(0)
    net = ResolutionAwareBN(tiny_classifier(7, 16), 3).train()
    before = _bn_stats(net)
    net(torch.randn(6, 3, 16, 16) * 3 + 1, torch.full((6,), 1))
    after = _bn_stats(net)
    for k in (0, 2):
        assert all(torch.equal(a, b) for a, b in zip(before[k], after[k]))
    assert all(not torch.equal(a, b) for a, b in zip(before[1], after[1]))


def test_a_mixed_batch_normalises_each_group_with_its_own_statistics():
    torch.manual_seed(0)
    net = ResolutionAwareBN(tiny_classifier(7, 16), 3).train()
    reference = copy.deepcopy(net)
    x = torch.randn(9, 3, 16, 16)
    branch = torch.tensor([2, 0, 1, 2, 0, 0, 1, 2, 2])
    out = net(x, branch)
    for k in range(3):
        rows = torch.nonzero(branch == k).flatten()
        alone = copy.deepcopy(reference)
        alone.select(k)
        expected = alone.net(x[rows])  # group k through BN k alone (train mode: its own batch statistics)
        assert torch.allclose(out[rows], expected, atol=1e-6)
        assert all(torch.equal(a, b) for a, b in zip(_bn_stats(net)[k], _bn_stats(alone)[k]))


def test_gradient_reversal_flips_the_gradient_sign_with_its_coefficient():
    x = torch.randn(4, 5, requires_grad=True)
    w = torch.randn(4, 5)
    y = grad_reverse(x, 0.3)
    assert torch.equal(y, x)  # identity forward
    (y * w).sum().backward()
    assert torch.allclose(x.grad, -0.3 * w)


def test_ganin_schedule():
    assert ganin_coefficient(0.0) == 0.0
    assert math.isclose(ganin_coefficient(1.0), 2 / (1 + math.exp(-10)) - 1)
    assert math.isclose(ganin_coefficient(0.5, gamma=10), 2 / (1 + math.exp(-5)) - 1)
    values = [ganin_coefficient(p / 10) for p in range(11)]
    assert values == sorted(values) and ganin_coefficient(2.0) == ganin_coefficient(1.0)


def test_da_learns_the_epoch_length_at_the_end_of_the_first_epoch_and_ramps_the_coefficient(tmp_path):
    cfg = compose_cfg(
        *tiny(
            tmp_path,
            "method=da",
            TINY_MODEL,
            "method.factors=[x1,x4]",
            "method.epochs=2",
            "method.disc_hidden=16",
            "degrade.test=[x1,x4]",
        )
    )
    metrics = run_training(cfg, None)
    stage = metrics["train"]["stages"]["train"]
    assert stage["epochs"] == 2 and 0.0 < stage["grl_coeff"] < 1.0  # epoch 2: p in (1/2, 1]
    assert {"cls_loss", "domain_loss", "domain_acc"} <= set(stage)
    method = DomainAdversarial(
        method_context(compose_cfg(*tiny(tmp_path), TINY_MODEL)),
        **{**method_options("da"), "epochs": 4, "factors": ["x1", "x4"], "disc_hidden": 8},
    )
    batch = {
        "image": torch.randn(6, 3, 32, 32),
        "label": torch.arange(6) % 7,
        "factor": torch.tensor([1.0, 4.0] * 3),
    }
    st = method.stages()[0]
    assert method.training_step(batch, st, "main")["grl_coeff"] == 0.0  # first epoch: length unknown yet
    method.training_step(batch, st, "main")
    method.on_epoch_end(Stage("train", epochs=4), 1)  # end of epoch 1: 2 steps per epoch
    assert int(method.steps_per_epoch) == 2 and method.progress(st) == 2 / 8
    coeff = float(method.training_step(batch, st, "main")["grl_coeff"])
    assert math.isclose(coeff, ganin_coefficient(0.25), rel_tol=1e-6)


def test_rabn_with_an_rrn_routes_without_factors_and_reports_rrn_acc(tmp_path):
    cfg = compose_cfg(
        *tiny(
            tmp_path,
            "method=rabn",
            TINY_MODEL,
            "method.factors=[x1,x4]",
            "method.bn_select=rrn",
            "trainer.max_epochs=1",
            "degrade.test=[x1,x4,x3]",
        )
    )
    metrics = run_training(cfg, None)
    assert list(metrics["train"]["stages"]) == ["train", "rrn"]
    assert all(0.0 <= r["rrn_acc"] <= 1.0 for r in metrics["test"].values())
    context = method_context(cfg)
    options = method_options("rabn", "method.factors=[x1,x4]")
    with pytest.raises(UserError, match="true_factor"):
        ResolutionAwareBNMethod(context, **options).eval().predict(torch.randn(2, 3, 32, 32))
    both = ResolutionAwareBNMethod(context, **{**options, "bn_select": "rrn"}).eval()
    assert both.predict(torch.randn(3, 3, 32, 32)).shape == (3, 7)


def test_baseline_trains_the_configured_model_on_the_run_with_its_epochs_and_label_smoothing():
    """``method=baseline``: the ``model`` config's network for the run's classes and input channels, one stage
    of ``method.epochs``, cross-entropy with ``method.label_smoothing``; it predicts with that network."""
    torch.manual_seed(0)
    overrides = ("method.epochs=3", "method.label_smoothing=0.2")
    cfg = compose_cfg("method=baseline", TINY_MODEL, "dataset.num_classes=5", *overrides)
    method = build_method(cfg, method_context(cfg, in_channels=1))
    assert isinstance(method, Baseline) and isinstance(method.net.backbone, TinyBackbone)
    assert method.net.backbone.conv.in_channels == 1 and method.net.fc.out_features == 5
    assert method.stages() == [Stage("train", epochs=3)]
    batch = {"image": torch.randn(4, 1, 16, 16), "label": torch.tensor([0, 4, 2, 2]), "factor": torch.ones(4)}
    out = method.training_step(batch, method.stages()[0], "main")
    expected = F.cross_entropy(method.net(batch["image"]), batch["label"], label_smoothing=0.2)
    assert out["loss"].item() == pytest.approx(expected.item(), rel=1e-6)
    method.eval()
    with torch.no_grad():
        assert torch.equal(method.predict(batch["image"]), method.net(batch["image"]))


def test_mstrain_trains_and_validates_on_its_factors_by_default():
    context = method_context(compose_cfg("method=mstrain"))
    options = method_options("mstrain")
    (stage,) = MultiScaleTraining(context, **options).stages()
    assert stage.train_degrade == stage.val_degrade == ["x1", "x2", "x4", "x6", "x8"]
    (stage,) = MultiScaleTraining(context, **{**options, "factors": None}).stages()
    assert stage.train_degrade is None  # factors: null = degrade.train, exactly method=baseline


def test_mstrain_is_the_baseline_with_its_epochs_and_label_smoothing_on_its_factors():
    """One stage named as the baseline's (checkpoints and metrics rows read alike), ``method.epochs`` long,
    cross-entropy with ``method.label_smoothing``; with ``factors: null`` its stages are the baseline's."""
    torch.manual_seed(0)
    cfg = compose_cfg("method=mstrain", TINY_MODEL, "method.epochs=3", "method.label_smoothing=0.2")
    method = build_method(cfg, method_context(cfg))
    labels = ["x1", "x2", "x4", "x6", "x8"]
    assert method.stages() == [Stage("train", epochs=3, train_degrade=labels, val_degrade=labels)]
    baseline = build_method(
        compose_cfg("method=baseline", TINY_MODEL, "method.epochs=3"), method_context(cfg)
    )
    on_degrade_train = build_method(
        compose_cfg("method=mstrain", TINY_MODEL, "method.epochs=3", "method.factors=null"),
        method_context(cfg),
    )
    assert on_degrade_train.stages() == baseline.stages()
    batch = {"image": torch.randn(4, 3, 16, 16), "label": torch.tensor([0, 6, 2, 2]), "factor": torch.ones(4)}
    out = method.training_step(batch, method.stages()[0], "main")
    expected = F.cross_entropy(method.net(batch["image"]), batch["label"], label_smoothing=0.2)
    assert out["loss"].item() == pytest.approx(expected.item(), rel=1e-6)


def _da(tmp_path, **options) -> DomainAdversarial:
    torch.manual_seed(0)
    context = method_context(compose_cfg(*tiny(tmp_path), TINY_MODEL))
    base = {**method_options("da"), "epochs": 4, "factors": ["x1", "x2", "x4"], "disc_hidden": 8}
    return DomainAdversarial(context, **{**base, **options})


def _da_batch() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return {
        "image": torch.randn(6, 3, 32, 32, generator=g),
        "label": torch.tensor([0, 3, 6, 1, 2, 5]),
        "factor": torch.tensor([1.0, 2.0, 4.0, 4.0, 3.0, 1.0]),  # x3 is the domain of x4 (log scale)
    }


def test_da_loss_adds_the_weighted_resolution_cross_entropy_and_reverses_it_into_the_features(tmp_path):
    """``loss = CE(fc(f), y) + w CE(D(GRL(f)), domain)``, the domain being the resolution index: D descends
    the domain loss; the feature extractor receives ``-lambda`` times its gradient (lambda at p = 1/4)."""
    method = _da(tmp_path, domain_weight=0.7).eval()  # eval: no dropout, so the recomputation matches
    method.steps_per_epoch.fill_(2)
    method.trained_steps.fill_(2)  # p = 2 / (2 * 4)
    lam = ganin_coefficient(0.25)
    batch = _da_batch()
    out = method.training_step(batch, method.stages()[0], "main")
    assert float(out["grl_coeff"]) == pytest.approx(lam)
    out["loss"].backward()
    got_disc = [p.grad.clone() for p in method.discriminator.parameters()]
    got_net = [p.grad.clone() for p in method.net.parameters()]
    method.zero_grad(set_to_none=True)
    domain = torch.tensor([0, 1, 2, 2, 2, 0])
    features = method.net.features(batch["image"])
    cls = torch.nn.functional.cross_entropy(method.net.fc(features), batch["label"])
    dom = torch.nn.functional.cross_entropy(method.discriminator(features), domain)
    assert out["loss"].item() == pytest.approx((cls + 0.7 * dom).item(), rel=1e-5)
    assert out["domain_loss"].item() == pytest.approx(dom.item(), rel=1e-5)
    disc_grads = torch.autograd.grad(0.7 * dom, list(method.discriminator.parameters()), retain_graph=True)
    net_grads = torch.autograd.grad(cls - lam * 0.7 * dom, list(method.net.parameters()), allow_unused=True)
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(got_disc, disc_grads))
    for a, b in zip(got_net, net_grads):
        assert torch.allclose(a, torch.zeros_like(a) if b is None else b, atol=1e-6)


def _rabn(tmp_path, bn_select: str) -> ResolutionAwareBNMethod:
    torch.manual_seed(0)
    context = method_context(compose_cfg(*tiny(tmp_path), TINY_MODEL))
    options = method_options("rabn", "method.factors=[x1,x2,x4]")
    return ResolutionAwareBNMethod(context, **{**options, "bn_select": bn_select})


def test_rabn_trains_and_evaluates_each_face_with_the_batchnorm_of_its_resolution(tmp_path):
    """Training and the ``train`` stage's validation normalise each face with the BN of its nearest trained
    resolution (x3 -> x4): a batch of x2 faces moves only BN 1's statistics; the test uses the same BN."""
    method = _rabn(tmp_path, "true_factor").train()
    stage = method.stages()[0]
    before = _bn_stats(method.net)
    batch = {"image": torch.randn(4, 3, 32, 32), "label": torch.arange(4), "factor": torch.full((4,), 2.0)}
    method.training_step(batch, stage, "main")
    after = _bn_stats(method.net)
    assert [all(torch.equal(a, b) for a, b in zip(before[k], after[k])) for k in range(3)] == [
        True,
        False,
        True,
    ]
    method.eval()
    batch["factor"] = torch.tensor([1.0, 2.0, 3.0, 4.0])
    for step_stage in (stage, None):
        logits = method.evaluate_step(batch, step_stage)["logits"]
        expected = method.net(batch["image"], torch.tensor([0, 1, 2, 2]))
        assert torch.allclose(logits, expected)
        assert not torch.allclose(logits, method.net(batch["image"], torch.tensor([0, 0, 0, 0])))


def test_rabn_with_an_rrn_picks_the_batchnorm_of_the_rrns_highest_score(tmp_path):
    """bn_select=rrn: the BN index is the RRN's argmax (not the true factor), and rrn_acc compares it with the
    true resolution."""
    method = _rabn(tmp_path, "rrn").eval()
    method.rrn = MarkerRouter(3)  # scores peak at the index in pixel [0, 0, 1]
    images = torch.randn(4, 3, 32, 32)
    images[:, 0, 0, 1] = torch.tensor([2.0, 0.0, 1.0, 2.0])
    factor = torch.tensor([4.0, 1.0, 1.0, 1.0])
    assert method.branch(images, factor).tolist() == [2, 0, 1, 2]
    assert torch.allclose(method.predict(images), method.net(images, torch.tensor([2, 0, 1, 2])))
    out = method.evaluate_step({"image": images, "factor": factor}, None)
    assert out["rrn_acc"].tolist() == [1.0, 1.0, 0.0, 0.0]
    assert torch.allclose(out["logits"], method.net(images, torch.tensor([2, 0, 1, 2])))


def test_da_trains_and_validates_on_its_factors_with_the_configured_discriminator(tmp_path):
    """One stage on ``factors`` (train and validation), the discriminator's dropout as configured, and
    ``domain_acc`` the fraction of faces whose resolution the discriminator names."""
    method = _da(tmp_path, disc_dropout=0.2)
    (stage,) = method.stages()
    assert stage.train_degrade == stage.val_degrade == ["x1", "x2", "x4"]
    dropouts = [m.p for m in method.discriminator.modules() if isinstance(m, torch.nn.Dropout)]
    assert dropouts and all(p == 0.2 for p in dropouts)

    class SaysX4(torch.nn.Module):  # a discriminator that names x4 (domain 2) for every face
        def forward(self, features):
            return torch.tensor([0.0, 0.0, 1.0]).expand(features.shape[0], 3) + 0 * features.sum()

    method.discriminator = SaysX4()
    batch = _da_batch()
    batch["factor"] = torch.tensor([4.0, 4.0, 4.0, 4.0, 1.0, 2.0])  # domains 2, 2, 2, 2, 0, 1
    out = method.training_step(batch, stage, "main")
    assert out["domain_acc"].item() == pytest.approx(4 / 6)


def test_rabn_stages_optimise_their_network_and_declare_the_values_they_return(tmp_path):
    """Stage ``train`` optimises the shared network, stage ``rrn`` the RRN; every stage's (and the test's)
    declared evaluation values are exactly the per-face values its evaluate_step returns."""
    batch = {
        "image": torch.randn(4, 3, 32, 32),
        "label": torch.arange(4),
        "factor": torch.tensor([1.0, 2, 4, 4]),
    }
    for bn_select in ("true_factor", "rrn"):
        method = _rabn(tmp_path, bn_select).eval()
        for stage in [*method.stages(), None]:
            if stage is not None:
                module = method.rrn if stage.name == "rrn" else method.net
                ids = [id(p) for p in method.stage_parameters(stage, "main")]
                assert ids == [id(p) for p in module.parameters()], stage.name
            with torch.no_grad():
                values = set(method.evaluate_step(batch, stage)) - {"logits"}
            assert values == set(method.evaluation_values(stage)), (bn_select, stage)


def _pooled_features(n: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Features like a ResNet-18's after global average pooling (non-negative, 512 of them, a common mode
    near 0.8) whose scale grows with the resolution index (5 domains), and those domains."""
    domain = torch.randint(0, 5, (n,), generator=generator)
    pooled = torch.relu(torch.randn(n, 512, generator=generator) * 0.6 + 0.8)
    return pooled * (1 + 0.15 * domain[:, None]), domain


def test_the_configured_discriminator_learns_the_resolution_under_the_trainers_adam():
    """Unopposed (lambda = 0), the default discriminator learns to name the resolution of pooled features
    with the trainer's default optimiser. Ganin & Lempitsky's plain dropout MLP does not: under Adam every
    hidden unit of its first layer is pushed below zero on such non-negative inputs within a few dozen steps
    (a fraction-1 DA run had 2 of its 1,024 units ever active at epoch 20, its domain accuracy at chance from
    the first epoch), so DA trained as MSTrain with a discriminator that passes back no gradient."""
    options = method_options("da")
    optimizer = compose_cfg().trainer.optimizer
    torch.manual_seed(0)
    discriminator = DomainDiscriminator(
        512, 5, options["disc_hidden"], options["disc_dropout"], options["disc_batch_norm"]
    )
    adam = torch.optim.Adam(discriminator.parameters(), lr=optimizer.lr, betas=tuple(optimizer.betas))
    g = torch.Generator().manual_seed(1)
    for _ in range(60):
        features, domain = _pooled_features(64, g)
        loss = F.cross_entropy(discriminator(features), domain)
        adam.zero_grad()
        loss.backward()
        adam.step()
    features, domain = _pooled_features(512, g)
    with torch.no_grad():
        accuracy = (discriminator.eval()(features).argmax(dim=1) == domain).float().mean().item()
    assert accuracy > 0.5  # chance: 0.2


def test_a_batch_normalised_discriminator_refuses_a_training_batch_of_one_face_naming_the_options(tmp_path):
    method = _da(tmp_path, disc_batch_norm=True)
    batch = {key: value[:1] for key, value in _da_batch().items()}
    with pytest.raises(UserError, match=r"disc_batch_norm=true needs at least 2 faces.*trainer\.batch_size"):
        method.training_step(batch, method.stages()[0], "main")


@pytest.mark.parametrize("batch_norm", [True, False])
def test_da_builds_its_discriminator_with_batch_norm_as_configured(tmp_path, batch_norm):
    method = _da(tmp_path, disc_batch_norm=batch_norm)
    norms = [m for m in method.discriminator.modules() if isinstance(m, torch.nn.BatchNorm1d)]
    assert len(norms) == (2 if batch_norm else 0)

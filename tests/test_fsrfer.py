"""FSR-FER: WGAN-div term, re-weighting, generator/critic shapes, frozen extractor, stages, a short run."""

from __future__ import annotations

import json
import math

import pytest
import torch
from conftest import FSR_FACTORS, TINY_FSRFER, compose_cfg, run_cli, tiny
from omegaconf import OmegaConf
from torch import nn

from lrfer.core.errors import UserError
from lrfer.data.degrade import parse_degradations
from lrfer.engine.run import build_parts, run_training
from lrfer.methods.fsrfer import (
    FSRFER,
    classification_aware_weights,
    feature_l2,
    generator_objective,
    perceptual_distance,
    wgan_div_penalty,
)
from lrfer.models.fsr import FeatureCritic, ResNetFeatureClassifier, RRDBGenerator
from lrfer.models.resnet import build_resnet

FACTORS = FSR_FACTORS


pytestmark = pytest.mark.usefixtures("one_thread")


def _overrides(tmp, *extra):
    return tiny(
        tmp,
        *TINY_FSRFER,
        "method.extractor_epochs=1",
        "method.pretrain_epochs=1",
        "method.gan_epochs=2",
        "method.gan_milestones=[1]",
        "method.schedule_scale=1.0",
        *extra,
    )


@pytest.fixture(scope="module")
def fsr_run(tmp_path_factory):
    """One short fsrfer run (extractor 1 epoch, pretrain 1, GAN 2) on tiny synthetic faces."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    tmp = tmp_path_factory.mktemp("fsr")
    cfg = compose_cfg(*_overrides(tmp))
    (tmp / "run" / ".hydra").mkdir(parents=True)
    OmegaConf.save(cfg, tmp / "run" / ".hydra" / "config.yaml")  # as the CLI writes it
    metrics = run_training(cfg, tmp / "run")
    torch.set_num_threads(before)
    return tmp, metrics


# -- losses --------
def test_wgan_div_term_on_a_linear_critic():
    critic = nn.Linear(4, 1, bias=True)
    with torch.no_grad():
        critic.weight.copy_(torch.tensor([[3.0, 4.0, 0.0, 0.0]]))
    real, fake = torch.randn(5, 4), torch.randn(5, 4)
    # grad_x D = w everywhere: k * ||w||^p = 2 * 5^6
    assert wgan_div_penalty(critic, real, fake, k=2.0, p=6.0).item() == pytest.approx(2 * 5**6)


def test_wgan_div_term_on_a_quadratic_critic_uses_the_interpolate():
    class Quadratic(nn.Module):
        def forward(self, x):
            return 0.5 * x.pow(2).flatten(1).sum(1)  # grad = x

    real = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    fake = torch.tensor([[3.0, 0.0], [0.0, 0.0]])
    alpha = torch.tensor([[0.5], [0.25]])
    # x_hat = [2, 0] and [0, 0.5]: mean of ||x_hat||^6 = (64 + 1/64) / 2, times k = 2
    value = wgan_div_penalty(Quadratic(), real, fake, k=2.0, p=6.0, alpha=alpha)
    assert value.item() == pytest.approx(64 + 1 / 64)


def test_wgan_div_term_trains_the_critic():
    critic = nn.Linear(3, 1)
    wgan_div_penalty(critic, torch.randn(4, 3), torch.randn(4, 3)).backward()
    assert critic.weight.grad is not None and critic.weight.grad.abs().sum() > 0


def test_reweighting_formula():
    probs = torch.tensor([[0.7, 0.2, 0.1], [0.1, 0.1, 0.8]])
    logits = probs.log()
    labels = torch.tensor([0, 0])
    w1 = classification_aware_weights(logits, labels, sigma=1.5, power=1.0)
    w2 = classification_aware_weights(logits, labels, sigma=1.5, power=2.0)
    assert torch.allclose(w1, torch.tensor([0.8, 1.4]))
    assert torch.allclose(w2, torch.tensor([0.64, 1.96]))


# -- networks --------
@pytest.mark.parametrize("shape", [(2, 1, 16, 16), (2, 512, 2, 2)])
def test_generator_output_has_the_input_feature_shape(shape):
    gen = RRDBGenerator(shape[1], channels=8, blocks=2, growth=4)
    f = torch.randn(shape)
    assert gen(f).shape == f.shape
    critic = FeatureCritic(shape[1], shape[-1], channels=(4, 4, 4), hidden=8)
    assert critic(f).shape == (2,)


def test_paper_generator_and_critic_on_the_128x128_map():
    gen = RRDBGenerator(1)  # 32 channels, 6 RRDBs of 3 dense blocks, growth 16
    assert sum(isinstance(m, nn.Conv2d) for m in gen.modules()) == 6 * 3 * 5 + 3
    critic = FeatureCritic(1, 128)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in critic.modules())
    assert critic.head[1].in_features == 64 * 4 * 4  # 5 stride-2 levels: 128 -> 4
    assert critic(torch.randn(2, 1, 128, 128)).shape == (2,)


def test_resnet18_feature_split_reproduces_the_classifier():
    net = build_resnet(7, 64).eval()
    split = ResNetFeatureClassifier(net)
    x = torch.randn(2, 3, 64, 64)
    fmap = split.feature_map(x)
    assert fmap.shape == (2, 512, 2, 2)
    assert torch.allclose(split.classify(split.embed(fmap)), net(x), atol=1e-5)


# -- the method --------
def _method(tmp, *extra) -> FSRFER:
    cfg = compose_cfg(*_overrides(tmp, *extra))
    return build_parts(cfg)


def test_stages_and_their_settings(tmp_path):
    method = _method(
        tmp_path, "method.schedule_scale=0.5", "method.gan_epochs=20", "method.gan_milestones=[4,10]"
    ).method
    stages = {s.name: s for s in method.stages()}
    assert list(stages) == ["extractor", "pretrain", "gan"]
    assert stages["extractor"].train_degrade == ["x1"] and not stages["extractor"].needs_hr
    for name in ("pretrain", "gan"):
        assert stages[name].train_degrade == FACTORS and stages[name].needs_hr
    gan = stages["gan"]
    assert gan.steps == ("critic", "generator") and gan.epochs == 10
    assert gan.optimizer["betas"] == [0.0, 0.9] and gan.optimizer["lr"] == 2e-4
    assert gan.scheduler == {"name": "multistep", "milestones": [2, 5], "gamma": 0.5}


def test_extractor_is_frozen_in_stages_2_and_3(tmp_path):
    parts = _method(tmp_path)
    method = parts.method
    extractor, pretrain, gan = method.stages()
    method.on_stage_start(extractor)
    assert all(p.requires_grad for p in method.classifier.parameters())
    for stage in (pretrain, gan):
        method.on_stage_start(stage)
        method.train()
        assert not any(p.requires_grad for p in method.classifier.parameters())
        assert not method.classifier.training  # BatchNorm statistics stay fixed
        ids = {id(p) for step in stage.steps for p in method.stage_parameters(stage, step)}
        assert not ids & {id(p) for p in method.classifier.parameters()}
    before = {k: v.clone() for k, v in method.classifier.state_dict().items()}
    batch = next(parts.datamodule.train_batches(parse_degradations(FACTORS), seed=0, need_hr=True))
    for step in gan.steps:
        method.training_step(batch, gan, step)["loss"].backward()
    assert all(p.grad is None for p in method.classifier.parameters())
    assert all(torch.equal(before[k], v) for k, v in method.classifier.state_dict().items())


def test_the_feature_cache_hits_when_ddp_rebuilds_the_batch_dict(tmp_path, monkeypatch):
    from torch.distributed.utils import _to_kwargs

    parts = _method(tmp_path)
    method = parts.method
    gan = method.stages()[-1]
    method.on_stage_start(gan)
    method.train()
    batch = next(parts.datamodule.train_batches(parse_degradations(FACTORS), seed=0, need_hr=True))
    calls = []
    original = method.classifier.feature_map
    monkeypatch.setattr(method.classifier, "feature_map", lambda x: calls.append(len(x)) or original(x))
    for step in gan.steps:
        # what DistributedDataParallel does to a forward's inputs on CUDA: a new dict, the same tensors
        (args,), _ = _to_kwargs((batch, gan, step), {}, batch["image"].device, False)
        assert args[0] is not batch and args[0]["image"] is batch["image"]
        method.training_step(*args)
    assert len(calls) == 1  # the extractor ran once for the critic and the generator step


def test_no_nan_or_inf_in_losses_or_gradients_during_a_short_training(tmp_path):
    parts = _method(tmp_path)
    method, dm = parts.method, parts.datamodule
    torch.manual_seed(0)
    for stage in method.stages():
        method.on_stage_start(stage)
        method.train()
        degs = parse_degradations(stage.train_degrade)
        opts = {s: torch.optim.Adam(method.stage_parameters(stage, s), lr=2e-3) for s in stage.steps}
        for i, batch in enumerate(dm.train_batches(degs, seed=1, need_hr=stage.needs_hr)):
            if i == 1:  # a near-singular batch: constant faces give (almost) zero covariances
                batch["image"] = torch.zeros_like(batch["image"])
                if "image_hr" in batch:
                    batch["image_hr"] = torch.zeros_like(batch["image_hr"]) + 1e-7
            if i == 3:
                break
            for step in stage.steps:
                out = method.training_step(batch, stage, step)
                for key, value in out.items():
                    assert torch.isfinite(value).all(), (stage.name, step, key)
                opts[step].zero_grad()
                out["loss"].backward()
                grads = [p.grad for p in method.stage_parameters(stage, step) if p.grad is not None]
                assert grads and all(torch.isfinite(g).all() for g in grads), (stage.name, step)
                opts[step].step()


def test_reweight_switch(tmp_path):
    for flag in ("true", "false"):
        parts = _method(tmp_path, f"method.reweight={flag}")
        method = parts.method
        gan = method.stages()[-1]
        method.on_stage_start(gan)
        batch = next(parts.datamodule.train_batches(parse_degradations(FACTORS), seed=0, need_hr=True))
        method.training_step(batch, gan, "critic")
        out = method.training_step(batch, gan, "generator")
        probs = out["logits"].softmax(1).gather(1, batch["label"][:, None]).squeeze(1)
        expected = (1.5 - probs).mean() if flag == "true" else torch.tensor(1.0)
        assert out["weight"].item() == pytest.approx(expected.item(), rel=1e-5)


def test_bare_method_config_tests_x2_to_x8():
    cfg = compose_cfg("method=fsrfer")
    assert list(cfg.degrade.test) == FACTORS and list(cfg.method.factors) == FACTORS
    assert list(compose_cfg("method=fsrfer", "degrade=default").degrade.test) == [
        "x1",
        "x2",
        "x4",
        "x6",
        "x8",
    ]


def test_short_run_reports_every_factor_and_keeps_the_validation_history(fsr_run):
    tmp, metrics = fsr_run
    assert list(metrics["test"]) == FACTORS
    for row in metrics["test"].values():
        assert 0.0 <= row["acc"] <= 1.0 and 0.0 <= row["direct_acc"] <= 1.0
    stages = metrics["train"]["stages"]
    assert [stages[s]["epochs"] for s in ("extractor", "pretrain", "gan")] == [1, 1, 2]
    for key in ("loss_critic", "loss_generator", "adv", "perceptual", "l2", "div_term", "weight"):
        assert math.isfinite(stages["gan"][key])
    last = torch.load(tmp / "run" / "checkpoints" / "last.pt", weights_only=True)
    hist = [(h["stage"], h["epoch"]) for h in last["val_history"]]
    assert hist == [("extractor", 1), ("pretrain", 1), ("gan", 1), ("gan", 2)]
    assert list(last["val_history"][-1]["val"]) == FACTORS


def test_loading_the_extractor_skips_stage_1_and_freezes_it(fsr_run, tmp_path):
    tmp, _ = fsr_run
    ckpt = tmp / "run" / "checkpoints" / "best.pt"
    method = _method(tmp_path, f"method.extractor_weights={ckpt}").method
    assert [s.name for s in method.stages()] == ["pretrain", "gan"]
    saved = torch.load(ckpt, weights_only=True)["method"]
    assert all(torch.equal(v, saved[f"classifier.{k}"]) for k, v in method.classifier.state_dict().items())
    assert not any(p.requires_grad for p in method.classifier.parameters())
    with pytest.raises(UserError, match="extractor"):
        _method(tmp_path, f"method.extractor_weights={ckpt}", "method.extractor=resnet18")


def test_convergence_script_reports_epochs_and_iterations(fsr_run):
    tmp, _ = fsr_run
    proc = run_cli(
        ["scripts/convergence.py", str(tmp / "run"), "--thresholds", "0.0", "1.01", "--of-best", "1.0"]
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = proc.stdout.splitlines()
    data = lines[lines.index(next(line for line in lines if line.startswith("| run"))) + 2]
    cells = [c.strip() for c in data.strip("|").split("|")]
    assert cells[1] == "5" and cells[2] == "2"  # 140 faces // batch 28; two GAN epochs
    assert cells[5] == "1 (5)" and cells[6] == "-"  # reached 0% at epoch 1 = 5 iterations; never 101%


def test_resnet18_extractor_trains_one_gan_step(tmp_path):
    parts = _method(tmp_path, "method.extractor=resnet18")
    method = parts.method
    assert (method.feature_channels, method.feature_side) == (512, 2)  # 32 px faces, conv3_pool stem
    gan = method.stages()[-1]
    method.on_stage_start(gan)
    batch = next(parts.datamodule.train_batches(parse_degradations(FACTORS), seed=0, need_hr=True))
    for step in gan.steps:
        loss = method.training_step(batch, gan, step)["loss"]
        loss.backward()
        assert torch.isfinite(loss)
    assert method.predict(batch["image"]).shape == (28, 7)


def test_metrics_json_on_disk_matches(fsr_run):
    tmp, metrics = fsr_run
    on_disk = json.loads((tmp / "run" / "metrics.json").read_text())
    assert on_disk["method"] == "fsrfer" and on_disk["test"] == metrics["test"]


def test_defaults_are_reduced_and_the_rafdb_experiment_has_the_paper_networks_and_schedule():
    quick = compose_cfg("method=fsrfer").method
    paper = compose_cfg("experiment=fsrfer/rafdb").method
    assert quick.covpool.bimap_dim < paper.covpool.bimap_dim == 128
    assert list(paper.covpool.fc_dims) == [2000, 128] and paper.schedule_scale == 1.0
    assert quick.generator.blocks == paper.generator.blocks == 6
    assert quick.generator.channels < paper.generator.channels
    isr = compose_cfg("experiment=fsrfer/rafdb_isr").method
    assert isr.covpool.bimap_dim == 128 and isr.sr_epochs == 50


# -- eq. 9 / eq. 10 by hand --------
def _two_samples():
    """Two samples, worked by hand: 2-d embeddings, 1x2x2 feature maps, 3 classes, both labelled 0."""
    e_sr = torch.tensor([[1.0, 2.0], [0.0, 0.0]])
    e_hr = torch.tensor([[0.0, 0.0], [1.0, 1.0]])
    f_sr = torch.tensor([[[[1.0, 0.0], [0.0, 1.0]]], [[[0.0, 0.0], [0.0, 0.0]]]])
    f_hr = torch.tensor([[[[0.0, 0.0], [0.0, 0.0]]], [[[1.0, 1.0], [1.0, 1.0]]]])
    adv = torch.tensor([0.5, -1.0])  # the critic's scores D(F_sr_i)
    logits = torch.log(torch.tensor([[2.0, 1.0, 1.0], [1.0, 1.0, 2.0]]))  # p_true = 0.5 and 0.25
    return e_sr, e_hr, f_sr, f_hr, adv, logits, torch.tensor([0, 0])


def test_eq9_perceptual_loss_is_a_per_sample_squared_norm_averaged_over_the_batch():
    e_sr, e_hr, f_sr, f_hr, *_ = _two_samples()
    # ||(1,2) - (0,0)||^2 = 5 and ||(0,0) - (1,1)||^2 = 2 (sums over the dimensions, not means)
    assert perceptual_distance(e_sr, e_hr).tolist() == [5.0, 2.0]
    # the feature L2 of eq. 10: 1 + 1 = 2 and 4 x 1 = 4 (sums over the 4 elements, not means)
    assert feature_l2(f_sr, f_hr).tolist() == [2.0, 4.0]
    # L_p = 1/m sum_i ||.||^2 = (5 + 2) / 2
    assert perceptual_distance(e_sr, e_hr).mean().item() == pytest.approx(3.5)


def test_eq10_with_eq11_by_hand():
    e_sr, e_hr, f_sr, f_hr, adv, logits, labels = _two_samples()
    p, l2 = perceptual_distance(e_sr, e_hr), feature_l2(f_sr, f_hr)
    # eq. 10 without re-weighting: ((0.5 + 5 + 2) + (-1 + 2 + 4)) / 2 = (7.5 + 5) / 2
    assert generator_objective(adv, p, l2).item() == pytest.approx(6.25)
    # eq. 11, sigma 1.5, r 1: w = (1.5 - 0.5, 1.5 - 0.25) = (1, 1.25): (7.5 + 1.25 * 5) / 2
    w = classification_aware_weights(logits, labels, 1.5, 1.0)
    assert w.tolist() == pytest.approx([1.0, 1.25])
    assert generator_objective(adv, p, l2, w).item() == pytest.approx(6.875)
    # the official code's weights (1, 10, 0.01) and r = 2: w = (1, 1.5625)
    # s_0 = 0.5 + 10 * 5 + 0.01 * 2 = 50.52, s_1 = -1 + 10 * 2 + 0.01 * 4 = 19.04
    w2 = classification_aware_weights(logits, labels, 1.5, 2.0)
    official = generator_objective(adv, p, l2, w2, 1.0, 10.0, 0.01)
    assert official.item() == pytest.approx((50.52 + 1.5625 * 19.04) / 2)


def _gan_step(tmp, step, *overrides):
    """(method, GAN stage, batch, the step's output, F_hr, F_sr) of one GAN step in eval mode (no BatchNorm
    update between the method's forward passes and the recomputation)."""
    parts = _method(tmp, *overrides)
    method = parts.method
    gan = method.stages()[-1]
    method.on_stage_start(gan)
    method.eval()
    batch = next(parts.datamodule.train_batches(parse_degradations(FACTORS), seed=0, need_hr=True))
    out = method.training_step(batch, gan, step)
    with torch.no_grad():
        c = method.classifier
        f_lr, f_hr = c.feature_map(batch["image"]).float(), c.feature_map(batch["image_hr"]).float()
        f_sr = method.generator(f_lr)
    return method, gan, batch, out, f_hr, f_sr


def test_generator_step_computes_eq10_on_the_method_networks(tmp_path):
    """The method's generator loss equals eq. 10/11 recomputed from its own networks' outputs."""
    weights = ("method.perceptual_weight=10", "method.l2_weight=0.01", "method.reweight_power=2")
    method, _, batch, out, f_hr, f_sr = _gan_step(tmp_path, "generator", *weights)
    with torch.no_grad():
        c = method.classifier
        e_sr, e_hr = c.embed(f_sr), c.embed(f_hr)
        adv = method.critic(f_sr)
        w = (1.5 - c.classify(e_sr).softmax(1).gather(1, batch["label"][:, None]).squeeze(1)) ** 2
        per = adv + 10 * (e_sr - e_hr).pow(2).sum(1) + 0.01 * (f_sr - f_hr).pow(2).flatten(1).sum(1)
    assert out["loss"].item() == pytest.approx((w * per).mean().item(), rel=1e-4)
    assert out["perceptual"].item() == pytest.approx((e_sr - e_hr).pow(2).sum(1).mean().item(), rel=1e-4)


def test_official_switches_reweight_the_critic_and_keep_the_gradient_through_w(tmp_path):
    switches = ("method.reweight_critic=true", "method.reweight_detach=false")
    method, gan, batch, out, f_hr, f_sr = _gan_step(tmp_path, "critic", *switches)
    with torch.no_grad():
        w = 1.5 - method.sr_logits(f_sr).softmax(1).gather(1, batch["label"][:, None]).squeeze(1)
        assert out["d_real"].item() == pytest.approx((w * method.critic(f_hr)).mean().item(), rel=1e-4)
        assert out["d_fake"].item() == pytest.approx((w * method.critic(f_sr)).mean().item(), rel=1e-4)
    # reweight_detach=false: the weight is part of the graph, so G's gradient differs from a detached w
    grads = {}
    for detach in (True, False):
        method.reweight_detach = detach
        method.generator.zero_grad()
        method.training_step(batch, gan, "generator")["loss"].backward()
        grads[detach] = method.generator.conv_last.weight.grad.clone()
    assert not torch.allclose(grads[True], grads[False])


def test_rafdb_official_follows_the_code():
    official = compose_cfg("experiment=fsrfer/rafdb_official").method
    paper = compose_cfg("experiment=fsrfer/rafdb").method
    assert (official.adv_weight, official.perceptual_weight, official.l2_weight) == (1.0, 10.0, 0.01)
    assert official.reweight_power == 2.0 and official.reweight_critic and not official.reweight_detach
    assert official.gan_lr == pytest.approx(2e-5) and list(official.gan_betas) == [0.0, 0.999]
    assert list(official.gan_milestones) == [58, 290, 580]  # 20k, 100k, 200k iterations at 345 per epoch
    assert (paper.adv_weight, paper.perceptual_weight, paper.l2_weight, paper.reweight_power) == (1, 1, 1, 1)
    assert paper.gan_lr is None and not paper.reweight_critic and paper.reweight_detach
    assert paper.covpool.fc_bn and paper.covpool.bottleneck == 7
    assert paper.extractor_optimizer.weight_decay == pytest.approx(0.05)


def test_extractor_weights_accepts_a_run_folder(fsr_run, tmp_path):
    tmp, _ = fsr_run
    method = _method(tmp_path, f"method.extractor_weights={tmp / 'run'}").method
    assert [s.name for s in method.stages()] == ["pretrain", "gan"]
    with pytest.raises(UserError, match="extractor_weights"):
        _method(tmp_path, f"method.extractor_weights={tmp_path / 'no_run'}")


def test_critic_steps_score_generated_features_above_real_ones(tmp_path):
    """WGAN: the critic plays against the generator. The generator minimises ``E[D(F_sr)]`` (eq. 7), so
    gradient steps on the critic's loss (eq. 8) must widen ``E[D(F_sr)] - E[D(F_hr)]`` and lower that loss."""
    method, gan, batch, _, f_hr, f_sr = _gan_step(tmp_path, "critic")

    def gap() -> float:
        with torch.no_grad():
            return (method.critic(f_sr).mean() - method.critic(f_hr).mean()).item()

    before = gap()
    optimizer = torch.optim.SGD(method.critic.parameters(), lr=1e-3)
    losses = []
    for _ in range(5):
        optimizer.zero_grad()
        loss = method.training_step(batch, gan, "critic")["loss"]
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert gap() > before
    assert losses[-1] < losses[0]


# -- the GAN's two objectives on the method's own networks --------
def test_critic_loss_is_eq8_real_minus_generated_plus_the_divergence_term(tmp_path):
    """Eq. 8 on the method's networks: ``L(D) = E[D(F_hr)] - E[D(F_sr)] + k E[||grad D(x_hat)||^p]`` with F_hr
    the x1 face's features, F_sr = G(F_lr) and the divergence term's interpolates drawn from the same seed."""
    parts = _method(tmp_path)
    method = parts.method
    gan = method.stages()[-1]
    method.on_stage_start(gan)
    method.eval()
    with torch.no_grad():  # a critic with gradients large enough for the p = 6 term to count
        for p in method.critic.parameters():
            p.mul_(3)
    batch = next(parts.datamodule.train_batches(parse_degradations(FACTORS), seed=0, need_hr=True))
    torch.manual_seed(3)
    out = method.training_step(batch, gan, "critic")
    with torch.no_grad():
        c = method.classifier
        f_hr = c.feature_map(batch["image_hr"]).float()
        f_sr = method.generator(c.feature_map(batch["image"]).float())
        d_real, d_fake = method.critic(f_hr).mean(), method.critic(f_sr).mean()
    torch.manual_seed(3)
    div = wgan_div_penalty(method.critic, f_hr, f_sr, k=2.0, p=6.0)
    assert out["d_real"].item() == pytest.approx(d_real.item(), rel=1e-5)
    assert out["d_fake"].item() == pytest.approx(d_fake.item(), rel=1e-5)
    assert out["div_term"].item() == pytest.approx(div.item(), rel=1e-4)
    assert div.item() > 10 * abs((d_real - d_fake).item())
    assert out["loss"].item() == pytest.approx((d_real - d_fake + div).item(), rel=1e-4)


def test_each_gan_step_trains_only_its_own_network(tmp_path):
    """The critic's loss reaches the critic only (G(F_lr) is a constant there); the generator's loss reaches G
    through D without giving D a gradient, and D is trainable again afterwards."""
    parts = _method(tmp_path)
    method = parts.method
    gan = method.stages()[-1]
    method.on_stage_start(gan)
    method.train()
    batch = next(parts.datamodule.train_batches(parse_degradations(FACTORS), seed=0, need_hr=True))
    method.training_step(batch, gan, "critic")["loss"].backward()
    assert all(p.grad is None for p in method.generator.parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in method.critic.parameters())
    method.critic.zero_grad(set_to_none=True)
    method.training_step(batch, gan, "generator")["loss"].backward()
    assert all(p.grad is None for p in method.critic.parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in method.generator.parameters())
    assert all(p.requires_grad for p in method.critic.parameters())


@pytest.mark.parametrize("detach", [True, False])
def test_the_reweighting_weight_is_a_constant_unless_reweight_detach_is_off(tmp_path, detach):
    """reweight_detach=true (the paper's default): G's gradient is that of ``mean_i w_i s_i`` with ``w_i``
    held constant; false (the official code): ``w_i`` is differentiated too."""
    method, gan, batch, _, f_hr, _ = _gan_step(
        tmp_path, "critic", f"method.reweight_detach={str(detach).lower()}"
    )
    method.generator.zero_grad(set_to_none=True)
    method.training_step(batch, gan, "generator")["loss"].backward()
    got = method.generator.conv_last.weight.grad.clone()
    method.generator.zero_grad(set_to_none=True)
    c = method.classifier
    with torch.no_grad():
        f_lr = c.feature_map(batch["image"]).float()
        e_hr = c.embed(f_hr)
    f_sr = method.generator(f_lr)
    e_sr = c.embed(f_sr)
    p_true = c.classify(e_sr).softmax(1).gather(1, batch["label"][:, None]).squeeze(1)
    w = 1.5 - (p_true.detach() if detach else p_true)
    per = method.critic(f_sr) + (e_sr - e_hr).pow(2).sum(1) + (f_sr - f_hr).pow(2).flatten(1).sum(1)
    (w * per).mean().backward()
    expected = method.generator.conv_last.weight.grad
    assert torch.allclose(got, expected, rtol=1e-4, atol=1e-7)


def test_pretraining_minimises_the_per_sample_feature_l2_of_g_of_the_lr_features(tmp_path):
    """Stage 2: ``mean_i ||G(F_lr_i) - F_hr_i||^2`` (a sum over the feature elements, a batch mean)."""
    parts = _method(
        tmp_path, "method.extractor=resnet18"
    )  # F_lr and F_hr of an untrained CovPoolFER coincide
    method = parts.method
    pretrain = method.stages()[1]
    assert pretrain.name == "pretrain"
    method.on_stage_start(pretrain)
    method.eval()
    batch = next(parts.datamodule.train_batches(parse_degradations(FACTORS), seed=0, need_hr=True))
    out = method.training_step(batch, pretrain, "main")
    with torch.no_grad():
        c = method.classifier
        f_sr = method.generator(c.feature_map(batch["image"]).float())
        f_hr = c.feature_map(batch["image_hr"]).float()
        expected = (f_sr - f_hr).pow(2).flatten(1).sum(1).mean()
        assert (f_sr - c.feature_map(batch["image"])).abs().max() > 1e-3  # G is not the identity
    assert out["loss"].item() == pytest.approx(expected.item(), rel=1e-5)


def test_evaluation_classifies_g_of_the_features_and_direct_acc_the_features_alone(tmp_path):
    """Prediction is C(G(F(x))); ``direct_acc`` is the frozen classifier on F(x) without G ("Bicubic")."""
    parts = _method(tmp_path, "method.extractor=resnet18")  # an untrained CovPoolFER predicts one class
    method = parts.method
    gan = method.stages()[-1]
    method.on_stage_start(gan)
    method.eval()
    with torch.no_grad():  # a generator far from the identity, so that the two predictions differ
        method.generator.conv_last.weight.normal_(0, 5.0)
    batch = next(parts.datamodule.train_batches(parse_degradations(FACTORS), seed=0, need_hr=True))
    with torch.no_grad():
        out = method.evaluate_step(batch, None)
        c = method.classifier
        f = c.feature_map(batch["image"]).float()
        with_g = c.classify(c.embed(method.generator(f)))
        direct = c.classify(c.embed(f)).argmax(1)
    assert torch.allclose(out["logits"], with_g, atol=1e-5)
    assert torch.allclose(method.predict(batch["image"]), with_g, atol=1e-5)
    direct_acc, acc = (direct == batch["label"]).float(), (with_g.argmax(1) == batch["label"]).float()
    assert not torch.equal(direct_acc, acc)
    assert out["direct_acc"].tolist() == direct_acc.tolist()


def test_reweighting_defaults_are_the_papers_sigma_and_power():
    """Eq. 11 with the paper's sigma = 1.5 and r = 1 when none are given."""
    logits = torch.log(torch.tensor([[0.6, 0.4], [0.1, 0.9]]))
    weights = classification_aware_weights(logits, torch.tensor([0, 0]))
    assert weights.tolist() == pytest.approx([0.9, 1.4])

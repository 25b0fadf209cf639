"""FSR-FER's extractor recipe (CovPoolFER's centre loss, its schedule) and GAN precision (float32 islands)."""

from __future__ import annotations

import pytest
import torch
from conftest import FSR_FACTORS, TINY_FSRFER, compose_cfg, tiny

from lrfer.data.degrade import parse_degradations
from lrfer.engine.run import build_parts
from lrfer.methods.center_loss import CenterLoss
from lrfer.methods.fsrfer import wgan_div_penalty
from lrfer.models.fsr import FeatureCritic

pytestmark = pytest.mark.usefixtures("one_thread")


# -- the centre loss --------
def _toy_center_loss() -> tuple[CenterLoss, torch.Tensor, torch.Tensor]:
    loss = CenterLoss(num_classes=3, dim=2, alpha=0.9)
    loss.centers.copy_(torch.tensor([[1.0, 0.0], [0.0, 2.0], [5.0, 5.0]]))
    features = torch.tensor([[2.0, 1.0], [0.0, 0.0], [1.0, -1.0]], requires_grad=True)
    labels = torch.tensor([0, 1, 0])
    return loss, features, labels


def test_center_loss_value_and_gradient_on_a_toy_batch():
    """L_c = 1/(N d) sum_i ||f_i - c_{y_i}||^2 and dL_c/df_i = 2 (f_i - c_{y_i}) / (N d), by hand."""
    loss, features, labels = _toy_center_loss()
    value = loss(features, labels)
    # f - c: [1, 1], [0, -2], [0, -1] -> squares 1 + 1 + 0 + 4 + 0 + 1 = 7, over N d = 6
    assert value.item() == pytest.approx(7 / 6)
    value.backward()
    expected = 2 * torch.tensor([[1.0, 1.0], [0.0, -2.0], [0.0, -1.0]]) / 6
    assert torch.allclose(features.grad, expected)


def test_center_loss_moves_the_centres_after_the_batch_and_only_in_training():
    """Training: c_y <- c_y - (1 - alpha) sum_{i: y_i = y} (c_y - f_i), after the loss used the old centres;
    class 2 (absent from the batch) keeps its centre; evaluation leaves every centre alone."""
    loss, features, labels = _toy_center_loss()
    loss.eval()
    loss(features, labels)
    assert torch.equal(loss.centers, torch.tensor([[1.0, 0.0], [0.0, 2.0], [5.0, 5.0]]))
    loss.train()
    assert loss(features, labels).item() == pytest.approx(7 / 6)  # the old centres
    # class 0: c - 0.1 ((c - f_0) + (c - f_2)) = [1, 0] - 0.1 ([-1, -1] + [0, 1]) = [1.1, 0.0]
    # class 1: [0, 2] - 0.1 [0, 2] = [0, 1.8]
    expected = torch.tensor([[1.1, 0.0], [0.0, 1.8], [5.0, 5.0]])
    assert torch.allclose(loss.centers, expected)
    assert not loss.centers.requires_grad


@pytest.mark.parametrize(("alpha", "moved"), [(None, 0.1), (0.0, 1.0), (1.0, 0.0)])
def test_a_centre_moves_one_minus_alpha_of_the_way_alpha_from_zero_to_one_by_default_covpoolfers(
    alpha, moved
):
    """alpha = 0: the centre jumps onto the feature; alpha = 1: it never moves; default 0.9 (CovPoolFER)."""
    loss = CenterLoss(2, 1) if alpha is None else CenterLoss(2, 1, alpha=alpha)
    loss(torch.tensor([[10.0]]), torch.tensor([1]))
    assert loss.centers[:, 0].tolist() == pytest.approx([0.0, 10.0 * moved])


@pytest.mark.parametrize("alpha", [-0.01, 1.01, 1.5])
def test_a_centre_loss_alpha_outside_zero_to_one_is_refused_naming_it(alpha):
    with pytest.raises(ValueError, match=rf"^the centre-loss alpha must be in \[0, 1\], got {alpha}$"):
        CenterLoss(2, 1, alpha=alpha)


def _method(tmp, *extra):
    return build_parts(
        compose_cfg(
            *tiny(
                tmp,
                *TINY_FSRFER,
                "method.extractor_epochs=1",
                "method.pretrain_epochs=1",
                "method.gan_epochs=1",
                "method.schedule_scale=1.0",
                *extra,
            )
        )
    )


def test_extractor_stage_adds_the_weighted_centre_loss_on_the_prelogits(tmp_path):
    """method.center_loss=w: stage 1's loss = cross-entropy + w * L_c on what the final fc reads (the 7-d
    bottleneck with covpool.bottleneck=7), and the step moves the centres."""
    parts = _method(tmp_path, "method.center_loss=0.5", "method.covpool.bottleneck=7")
    method = parts.method
    stage = method.stages()[0]
    assert stage.name == "extractor"
    method.on_stage_start(stage)
    method.train()
    batch = next(parts.datamodule.train_batches(parse_degradations(["x1"]), seed=0))
    assert method.center_loss.centers.shape == (method.context.num_classes, 7)
    before = method.center_loss.centers.clone()
    out = method.training_step(batch, stage, "main")
    assert out["loss"].item() == pytest.approx(out["ce"].item() + 0.5 * out["center"].item(), rel=1e-6)
    # the first batch sees zero centres: L_c is the mean square of the prelogits (training-mode BatchNorm)
    with torch.no_grad():
        c = method.classifier
        pre = c.prelogits(c.embed(c.feature_map(batch["image"])))
    assert torch.equal(before, torch.zeros_like(before))
    assert out["center"].item() == pytest.approx(pre.pow(2).mean().item(), rel=1e-4)
    assert not torch.equal(method.center_loss.centers, before)


def test_center_loss_off_by_default_keeps_the_plain_cross_entropy(tmp_path):
    method = _method(tmp_path).method
    assert method.center_loss is None
    assert "center_loss" not in "".join(method.state_dict())


# -- precision --------
#: Float32 islands must make the loss terms under bf16 autocast equal the float32 ones to this relative
#: tolerance (float32 rounding only; bf16 keeps 8 significant bits, a relative error of about 4e-3).
ISLAND_RTOL = 1e-5


def test_divergence_penalty_under_bf16_autocast_matches_float32():
    """The p = 6 term on feature maps whose entries differ by a few hundredths (as CovPoolFER's log-covariance
    maps of an LR and an HR face do): the same value with and without bf16 autocast."""
    gen = torch.Generator().manual_seed(0)
    critic = FeatureCritic(1, 16, channels=[4, 8], hidden=8)
    with torch.no_grad():  # a critic with gradients large enough for the p = 6 term to be far above zero
        for p in critic.parameters():
            p.mul_(3)
    base = torch.randn(4, 1, 16, 16, generator=gen)
    real, fake = base + 0.03 * torch.randn(4, 1, 16, 16, generator=gen), base
    alpha = torch.rand(4, 1, 1, 1, generator=gen)
    reference = wgan_div_penalty(critic, real, fake, alpha=alpha)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        mixed = wgan_div_penalty(critic, real, fake, alpha=alpha)
    assert mixed.dtype == torch.float32 and reference.item() > 1.0
    assert mixed.item() == pytest.approx(reference.item(), rel=ISLAND_RTOL, abs=0)


def test_gan_loss_terms_on_one_batch_under_bf16_autocast_match_float32(tmp_path):
    """Every term of eq. 8 (critic) and eq. 10 (generator) on one batch, computed under the trainer's bf16
    autocast, equals the float32 value within ISLAND_RTOL. G is set to the identity (its last conv zeroed,
    the global skip keeps F_lr) so that only the float32 islands (extractor features, critic, divergence
    term, classifier head) decide; the generator itself runs in bf16 by design."""
    parts = _method(  # untrained: keep the eigenvalues unclipped; w also on the critic (sr_logits)
        tmp_path, "method.covpool.eig_eps=1e-12", "method.reweight_critic=true"
    )
    method = parts.method
    gan = method.stages()[-1]
    assert gan.name == "gan"
    method.on_stage_start(gan)
    method.eval()  # no BatchNorm statistics move between the two passes
    torch.nn.init.zeros_(method.generator.conv_last.weight)
    torch.nn.init.zeros_(method.generator.conv_last.bias)
    with torch.no_grad():  # a critic with gradients large enough for the p = 6 term to be far above zero
        for p in method.critic.parameters():
            p.mul_(3)
    batch = next(parts.datamodule.train_batches(parse_degradations(FSR_FACTORS), seed=0, need_hr=True))

    def terms() -> dict[str, float]:
        torch.manual_seed(0)  # the divergence term's interpolation weights
        method._cache = None
        out = {**method.training_step(batch, gan, "critic"), **method.training_step(batch, gan, "generator")}
        keys = ("d_real", "d_fake", "div_term", "adv", "perceptual", "l2", "weight")
        return {k: float(out[k]) for k in keys}

    reference = terms()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        mixed = terms()
    assert reference["div_term"] > 1.0 and reference["l2"] > 1.0
    for key, value in reference.items():
        assert mixed[key] == pytest.approx(value, rel=ISLAND_RTOL, abs=0), key


# -- CovPoolFER's learning-rate file --------
def test_multistep_with_one_factor_per_milestone_gives_covpoolfers_piecewise_schedule(tmp_path):
    """scheduler.gammas: lr 5e-3 until epoch 2, 2e-3 until 4, 1e-4 after (CovPoolFER's learning_rate.txt,
    shortened); the state survives a weights_only checkpoint round trip."""
    from omegaconf import OmegaConf

    from lrfer.engine.optim import EpochScheduler

    cfg = compose_cfg("trainer.scheduler.name=multistep").trainer.scheduler
    cfg = OmegaConf.merge(cfg, {"milestones": [2, 4], "gammas": [0.4, 0.05]})
    param = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.Adam([param], lr=5e-3)
    sched = EpochScheduler(opt, cfg, epochs=6)
    lrs = []
    for _ in range(6):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step(None, None)
    assert lrs == pytest.approx([5e-3, 5e-3, 2e-3, 2e-3, 1e-4, 1e-4])
    torch.save(sched.state_dict(), tmp_path / "s.pt")
    again = EpochScheduler(opt, cfg, epochs=6)
    again.load_state_dict(torch.load(tmp_path / "s.pt", weights_only=True))
    assert again.sched.last_epoch == 6


def test_gammas_must_match_the_milestones():
    from lrfer.config.validate import validate_config
    from lrfer.core.errors import UserError

    with pytest.raises(UserError, match="gammas"):
        validate_config(compose_cfg("trainer.scheduler.milestones=[2]", "trainer.scheduler.gammas=[0]"))

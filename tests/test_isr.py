"""ISR baselines of FSR-FER: bicubic / per-factor RCAN / one Meta-SR, routing, shapes, a short run each."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from conftest import FSR_FACTORS, TINY_COVPOOL, compose_cfg, tiny
from torch import nn

from lrfer.core.errors import UserError
from lrfer.data.degrade import parse_degradations
from lrfer.engine.run import build_method, build_parts, method_context, run_training
from lrfer.methods.base import Stage
from lrfer.models.fsr import build_feature_classifier
from lrfer.models.image_sr import MetaSRLite, MetaUpscale, RCANLite

FACTORS = FSR_FACTORS
TINY_NET = [
    *TINY_COVPOOL,
    "method.rcan.channels=4",
    "method.rcan.groups=1",
    "method.rcan.blocks=1",
    "method.rcan.reduction=2",
    "method.metasr.channels=4",
    "method.metasr.blocks=1",
    "method.metasr.layers=2",
    "method.metasr.growth=4",
    "method.metasr.hidden=8",
]


pytestmark = pytest.mark.usefixtures("one_thread")


def _overrides(tmp, sr, *extra):
    return tiny(
        tmp,
        "method=isr",
        f"method.sr={sr}",
        *TINY_NET,
        "method.extractor_epochs=1",
        "method.sr_epochs=1",
        "trainer.max_epochs=1",
        *extra,
    )


def _parts(tmp, sr, *extra):
    return build_parts(compose_cfg(*_overrides(tmp, sr, *extra)))


def test_meta_upscale_positions_follow_meta_sr():
    src, off = MetaUpscale.positions(3, 6, torch.device("cpu"))  # scale 2
    assert src.tolist() == [0, 0, 1, 1, 2, 2] and off.tolist() == [0.0, 0.5] * 3
    src, off = MetaUpscale.positions(22, 64, torch.device("cpu"))  # non-integer scale 64 / 22
    assert src.max().item() == 21 and (off >= 0).all() and (off < 1).all()


def test_sr_networks_output_the_input_size_and_start_as_identity():
    images = torch.randn(2, 3, 20, 20)
    assert torch.equal(RCANLite(3, channels=4, groups=1, blocks=1)(images), images)
    lr = torch.randn(2, 3, 7, 7)
    net = MetaSRLite(3, channels=4, blocks=1, layers=2, growth=4, hidden=8)
    up = torch.randn(2, 3, 20, 20)
    assert torch.equal(net(lr, 20, up), up)  # zero-initialised weight prediction: residual 0
    nn.init.normal_(net.upscale.weight_net[-1].weight)
    out = net(lr, 20, up)
    assert out.shape == (2, 3, 20, 20) and not torch.equal(out, up)


def test_stages_per_sr_choice(tmp_path):
    names = {
        sr: [s.name for s in _parts(tmp_path, sr).method.stages()] for sr in ("bicubic", "rcan", "metasr")
    }
    assert names["bicubic"] == ["extractor"]
    assert names["rcan"] == ["extractor", *[f"sr_{f}" for f in FACTORS]]
    assert names["metasr"] == ["extractor", "sr"]
    stage = _parts(tmp_path, "rcan").method.stages()[2]
    assert stage.train_degrade == ["x3"] and stage.needs_hr
    with pytest.raises(UserError, match=r"method\.sr"):
        _parts(tmp_path, "edsr")


def test_rcan_routes_each_face_to_its_factors_model(tmp_path):
    method = _parts(tmp_path, "rcan").method

    class AddConstant(nn.Module):
        def __init__(self, value):
            super().__init__()
            self.value = value

        def forward(self, x):
            return x + self.value

    for i, f in enumerate(FACTORS):
        method.rcan[f] = AddConstant(float(i + 1))
    images = torch.zeros(4, 3, 32, 32)
    out = method.restore(images, torch.tensor([1.0, 2.0, 8.0, 100 / 14]))
    assert out[:, 0, 0, 0].tolist() == [0.0, 1.0, 7.0, 6.0]  # x1: no SR; 14 px of 100 -> nearest x7


def test_sr_stage_trains_only_its_network(tmp_path):
    parts = _parts(tmp_path, "rcan")
    method = parts.method
    stage = method.stages()[2]  # sr_x3
    method.on_stage_start(stage)
    params = {id(p) for p in method.stage_parameters(stage, "main")}
    assert params == {id(p) for p in method.rcan["x3"].parameters()}
    batch = next(parts.datamodule.train_batches(parse_degradations(["x3"]), seed=0, need_hr=True))
    method.training_step(batch, stage, "main")["loss"].backward()
    assert all(p.grad is None for p in method.classifier.parameters())
    assert method.rcan["x3"].tail.weight.grad.abs().sum() > 0 and method.rcan["x2"].tail.weight.grad is None


@pytest.mark.parametrize("sr", ["bicubic", "rcan", "metasr"])
def test_short_run_reports_every_factor(tmp_path, sr):
    metrics = run_training(compose_cfg(*_overrides(tmp_path, sr)), None)
    assert list(metrics["test"]) == FACTORS
    expected = ["extractor"] + {"bicubic": [], "rcan": [f"sr_{f}" for f in FACTORS], "metasr": ["sr"]}[sr]
    assert list(metrics["train"]["stages"]) == expected
    if sr != "bicubic":
        assert all(0.0 <= row["direct_acc"] <= 1.0 for row in metrics["test"].values())


def test_bicubic_with_a_loaded_classifier_trains_nothing(tmp_path):
    run_training(compose_cfg(*_overrides(tmp_path, "bicubic")), tmp_path / "hr")
    ckpt = tmp_path / "hr" / "checkpoints" / "best.pt"
    metrics = run_training(
        compose_cfg(*_overrides(tmp_path, "bicubic", f"method.extractor_weights={ckpt}")), None
    )
    assert list(metrics["train"]["stages"]) == ["evaluate"] and list(metrics["test"]) == FACTORS


def test_sr_loss_is_l1_to_the_high_resolution_face_and_evaluation_classifies_the_restored_face(tmp_path):
    """SR stages minimise ``|SR(x_lr) - x_hr|_1`` (mean); the test prediction is C(SR(x)) and ``direct_acc``
    the frozen classifier on x itself (a stand-in classifier whose class follows the image's brightness)."""
    parts = _parts(tmp_path, "rcan")
    method = parts.method
    stage = method.stages()[2]  # sr_x3
    method.on_stage_start(stage)
    method.eval()

    class Brighten(nn.Module):
        def forward(self, x):
            return x + 5.0

    class ByBrightness(nn.Module):  # class 6 for a bright face, 0 for a dark one
        def forward(self, x):
            return x.mean(dim=(1, 2, 3))[:, None] * (torch.arange(7.0) - 3)

    method.rcan["x3"] = Brighten()
    batch = next(parts.datamodule.train_batches(parse_degradations(["x3"]), seed=0, need_hr=True))
    out = method.training_step(batch, stage, "main")
    expected = (batch["image"] + 5.0 - batch["image_hr"]).abs().mean()
    assert out["loss"].item() == pytest.approx(expected.item(), rel=1e-5)
    method.classifier = ByBrightness()
    row = method.evaluate_step(batch, None)
    restored, direct = method.classifier(batch["image"] + 5.0), method.classifier(batch["image"]).argmax(1)
    assert torch.allclose(row["logits"], restored)
    direct_acc, acc = (direct == batch["label"]).float(), (restored.argmax(1) == batch["label"]).float()
    assert not torch.equal(direct_acc, acc)
    assert row["direct_acc"].tolist() == direct_acc.tolist()


def _method(tmp, sr, *extra):
    """The ISR method alone (no data), built as a run builds it."""
    cfg = compose_cfg(*_overrides(tmp, sr, *extra))
    return build_method(cfg, method_context(cfg))


@pytest.mark.parametrize("sr", ["rcan", "metasr"])
def test_sr_stages_train_their_network_with_the_sr_optimiser_at_sr_lr_decayed_every_sr_step_epochs(
    tmp_path, sr
):
    """RCAN's and Meta-SR's recipe: Adam at ``sr_lr``, multiplied by ``sr_gamma`` every ``sr_step_epochs``
    (at least every epoch); stage ``sr`` (Meta-SR) and ``sr_x<f>`` (RCAN) optimise only their SR network."""
    options = ("method.sr_lr=3e-4", "method.sr_step_epochs=0", "method.sr_gamma=0.25")
    method = _method(tmp_path, sr, *options, "method.sr_optimizer.weight_decay=0.01")
    stage = method.stages()[1]
    assert stage.optimizer == {"name": "adam", "betas": [0.9, 0.999], "weight_decay": 0.01, "lr": 3e-4}
    assert stage.scheduler == {"name": "step", "step_size": 1, "gamma": 0.25}
    assert _method(tmp_path, sr, "method.sr_step_epochs=4").stages()[1].scheduler["step_size"] == 4
    network = method.metasr if sr == "metasr" else method.rcan["x2"]
    assert [id(p) for p in method.stage_parameters(stage, "main")] == [id(p) for p in network.parameters()]


def test_meta_sr_sees_the_face_at_its_low_resolution_ceil_native_over_factor(tmp_path):
    """x2 of a 32 px face: 16 px (not 17); x3: ceil(10.67) = 11; x32: 1 px (not 2)."""
    method = _method(tmp_path, "metasr")

    sides = []

    class Record(nn.Module):
        def forward(self, lr, size, up):
            sides.append(lr.shape[-1])
            return up

    method.metasr = Record()
    method.restore(torch.zeros(3, 3, 32, 32), torch.tensor([2.0, 3.0, 32.0]))
    assert sorted(sides) == [1, 11, 16]
    message = "isr with method.sr=rcan or metasr needs each face's downsampling factor"
    with pytest.raises(UserError, match=f"^{message}$"):
        method.restore(torch.zeros(1, 3, 32, 32), None)


@pytest.mark.parametrize("sr", ["bicubic", "rcan", "metasr"])
def test_the_values_each_stage_declares_are_the_ones_its_evaluation_returns(tmp_path, sr):
    method = _method(tmp_path, sr).eval()
    batch = {
        "image": torch.randn(2, 3, 32, 32),
        "label": torch.tensor([0, 1]),
        "factor": torch.tensor([2.0, 4.0]),
    }
    for stage in [*method.stages(), None]:
        with torch.no_grad():
            returned = set(method.evaluate_step(batch, stage)) - {"logits"}
        assert set(method.evaluation_values(stage)) == returned, (sr, stage)


def test_the_extractor_stage_is_cross_entropy_of_the_classifier_and_reports_its_logits(tmp_path):
    method = _method(tmp_path, "bicubic")
    stage = method.stages()[0]
    method.on_stage_start(stage)
    g = torch.Generator().manual_seed(0)
    batch = {"image": torch.randn(4, 3, 32, 32, generator=g), "label": torch.tensor([0, 3, 6, 2])}
    out = method.training_step(batch, stage, "main")
    logits = method.classifier(batch["image"])
    assert stage.name == "extractor" and not out["logits"].requires_grad
    torch.testing.assert_close(out["logits"], logits.detach())
    assert out["loss"].item() == pytest.approx(F.cross_entropy(logits, batch["label"]).item(), rel=1e-5)


def test_a_resnet_extractor_loads_from_an_isr_or_a_baseline_run_and_a_misfit_names_torchs_reason(tmp_path):
    """``classifier.*`` (an fsrfer / isr run) and ``net.*`` (a baseline run) both load the same weights and
    freeze the classifier; weights of another class count stop in one line with torch's reason."""
    torch.manual_seed(0)
    trained = build_feature_classifier("resnet18", 7, 32)
    isr_run, baseline_run, misfit = tmp_path / "isr.pt", tmp_path / "baseline.pt", tmp_path / "five.pt"
    torch.save({"method": {f"classifier.{k}": v for k, v in trained.state_dict().items()}}, isr_run)
    torch.save({"method": trained.state_dict()}, baseline_run)  # Baseline.net: net.backbone.*, net.fc.*
    five = build_feature_classifier("resnet18", 5, 32).state_dict()
    torch.save({"method": {f"classifier.{k}": v for k, v in five.items()}}, misfit)
    for path in (isr_run, baseline_run):
        method = _method(tmp_path, "bicubic", "method.extractor=resnet18", f"method.extractor_weights={path}")
        loaded = method.classifier.state_dict()
        assert all(torch.equal(loaded[k], v) for k, v in trained.state_dict().items())
        assert [s.name for s in method.stages()] == ["evaluate"]
        assert not any(p.requires_grad for p in method.classifier.parameters())
    reason = r"size mismatch for net\.fc\.bias: copying a param with shape torch\.Size\(\[5\]\)"
    with pytest.raises(UserError, match=rf"fit method\.extractor=resnet18 \({reason}.*\)$"):
        _method(tmp_path, "bicubic", "method.extractor=resnet18", f"method.extractor_weights={misfit}")


def test_stage_one_trains_and_validates_the_classifier_on_x1_with_its_own_recipe(tmp_path):
    options = (
        "method.extractor_epochs=3",
        "+method.extractor_optimizer.lr=0.02",
        "method.extractor_scheduler.step_size=2",
    )
    (stage,) = _method(tmp_path, "bicubic", *options).stages()
    assert stage == Stage(
        "extractor",
        epochs=3,
        train_degrade=["x1"],
        val_degrade=["x1"],
        optimizer={"lr": 0.02},
        scheduler={"name": "step", "step_size": 2, "gamma": 0.1},
    )


@pytest.mark.parametrize(
    ("option", "message"),
    [
        ("method.center_loss=-0.1", r"^method\.center_loss must be >= 0 \(0 = off\), got -0\.1$"),
        ("method.center_loss_alpha=1.5", r"^method\.center_loss_alpha must be in \[0, 1\], got 1\.5$"),
        ("method.center_loss_alpha=-0.5", r"^method\.center_loss_alpha must be in \[0, 1\], got -0\.5$"),
    ],
)
def test_a_centre_loss_weight_below_zero_or_an_alpha_outside_zero_to_one_stops_in_one_line(
    tmp_path, option, message
):
    """Refused when the method is built, also while the centre loss is off (alpha is not used then)."""
    with pytest.raises(UserError, match=message):
        _method(tmp_path, "bicubic", option)


@pytest.mark.parametrize("alpha", [0.0, 1.0])
def test_a_centre_loss_alpha_of_zero_or_one_is_accepted(tmp_path, alpha):
    method = _method(tmp_path, "bicubic", "method.center_loss=0.01", f"method.center_loss_alpha={alpha}")
    assert method.center_loss.alpha == alpha

"""Residual voting network: crop geometry, crops through the network, loss over crops, voting, Table 2."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from conftest import compose_cfg
from torch.utils.flop_counter import FlopCounterMode

from lrfer.core.errors import UserError
from lrfer.engine.run import build_method, method_context
from lrfer.methods.base import Stage
from lrfer.methods.voting import Voting, load_matching_weights
from lrfer.models.voting import VotingResNet, crop_boxes, ten_crops, vote

STAGE = Stage(name="train", epochs=1)


pytestmark = pytest.mark.usefixtures("one_thread")


def _method(*overrides: str) -> Voting:
    # the paper's stem at the dataset's own 24 px (the method's quick default is the ImageNet stem at 32 px)
    paper = ("method.stem=conv3", "degrade.input_size=null")
    cfg = compose_cfg("method=voting", "dataset.image_size=24", *paper, *overrides)
    torch.manual_seed(0)
    return build_method(cfg, method_context(cfg))


@pytest.mark.parametrize(("side", "size", "centre"), [(48, 40, 4), (24, 20, 2), (12, 10, 1)])
def test_crop_boxes_are_five_sixths_at_four_corners_and_centre(side, size, centre):
    got, boxes = crop_boxes(side)
    far = side - size
    assert got == size
    assert boxes == [(0, 0), (0, far), (far, 0), (far, far), (centre, centre)]


def test_ten_crops_take_corners_centre_then_the_mirrored_map_sample_major():
    x = torch.arange(2 * 48 * 48, dtype=torch.float32).view(2, 1, 48, 48)
    crops = ten_crops(x)
    assert crops.shape == (20, 1, 40, 40)
    for n in range(2):
        img, mirrored = x[n], x[n].flip(-1)
        own = crops[10 * n : 10 * n + 10]
        assert torch.equal(own[0], img[:, :40, :40])
        assert torch.equal(own[1], img[:, :40, 8:])
        assert torch.equal(own[2], img[:, 8:, :40])
        assert torch.equal(own[3], img[:, 8:, 8:])
        assert torch.equal(own[4], img[:, 4:44, 4:44])
        for k in range(5):
            assert torch.equal(own[5 + k], ten_crops(mirrored[None])[k])
        # the mirrored top-left crop is the flipped top-right crop of the image
        assert torch.equal(own[5], img[:, :40, 8:].flip(-1))


@pytest.mark.parametrize(
    ("split_after", "crop_shape"), [(1, (64, 20, 20)), (2, (128, 10, 10)), (3, (256, 5, 5))]
)
def test_modules_after_the_split_run_on_ten_crops(split_after, crop_shape):
    net = VotingResNet(7, 24, split_after=split_after).eval()
    layers = [net.backbone.layer1, net.backbone.layer2, net.backbone.layer3, net.backbone.layer4]
    seen = []
    layers[split_after].register_forward_pre_hook(lambda m, args: seen.append(tuple(args[0].shape)))
    with torch.no_grad():
        out = net(torch.randn(3, 3, 24, 24))
    assert out.shape == (30, 7)
    assert seen == [(30, *crop_shape)]


def test_split_after_zero_is_the_plain_resnet18_with_a_3x3_stride_1_stem():
    net = VotingResNet(7, 48, split_after=0).eval()
    assert net.num_crops == 1
    assert net.backbone.conv1.kernel_size == (3, 3) and net.backbone.conv1.stride == (1, 1)
    assert isinstance(net.backbone.maxpool, torch.nn.Identity)
    with torch.no_grad():
        assert net(torch.randn(2, 3, 48, 48)).shape == (2, 7)


def test_split_after_outside_zero_to_three_is_a_user_error():
    with pytest.raises(UserError, match="split_after"):
        VotingResNet(7, 48, split_after=4)


def test_training_loss_is_cross_entropy_over_every_crop():
    method = _method("method.split_after=3").eval()  # eval: BatchNorm identical in both forwards
    images, labels = torch.randn(2, 3, 24, 24), torch.tensor([1, 5])
    out = method.training_step({"image": images, "label": labels}, STAGE, "main")
    with torch.no_grad():
        crop_logits = method.net(images)
    expected = F.cross_entropy(crop_logits, labels.repeat_interleave(10))
    assert crop_logits.shape == (20, 7)
    assert torch.allclose(out["loss"], expected, atol=1e-6)
    assert out["logits"].shape == (2, 7)  # voted, for the training accuracy


def test_soft_and_hard_voting_can_disagree():
    weak = torch.log(torch.tensor([0.40, 0.35, 0.25]))  # 6 crops: class 0 by a little
    strong = torch.log(torch.tensor([0.005, 0.99, 0.005]))  # 4 crops: class 1 by far
    crops = torch.stack([weak] * 6 + [strong] * 4)
    assert vote(crops, "hard").argmax(1).item() == 0
    assert vote(crops, "soft").argmax(1).item() == 1
    mean = F.softmax(crops, 1).mean(0)
    assert torch.allclose(vote(crops, "soft")[0].exp(), mean, atol=1e-6)


def test_hard_voting_breaks_ties_by_the_mean_probability():
    a = torch.log(torch.tensor([0.51, 0.49, 0.0001]))
    b = torch.log(torch.tensor([0.01, 0.98, 0.01]))
    crops = torch.stack([a] * 5 + [b] * 5)  # 5 votes each for classes 0 and 1
    assert vote(crops, "hard").argmax(1).item() == 1


def test_predict_votes_per_sample_with_the_configured_mode():
    method = _method("method.split_after=3").eval()
    x = torch.randn(4, 3, 24, 24)
    with torch.no_grad():
        crop_logits = method.net(x)
        assert torch.allclose(method.predict(x), vote(crop_logits, "soft"))
        method.voting = "hard"
        assert torch.allclose(method.predict(x), vote(crop_logits, "hard"))


class _FixedCrops(torch.nn.Module):
    """Crop outputs where the votes disagree: 6 crops say class 0 weakly, 4 say class 1 strongly."""

    num_crops = 10

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weak = torch.log(torch.tensor([0.40, 0.35, 0.25]))
        strong = torch.log(torch.tensor([0.005, 0.99, 0.005]))
        return torch.stack([weak] * 6 + [strong] * 4).repeat(x.shape[0], 1)


def test_eval_all_votings_reports_both_votes_of_one_network_at_the_test():
    """One trained network gives Table 3's soft and hard columns (the findings compare them per seed)."""
    method = _method("method.split_after=1", "method.eval_all_votings=true").eval()
    assert method.evaluation_values() == ("acc_soft", "acc_hard")
    method.net = _FixedCrops()
    batch = {"image": torch.zeros(2, 3, 24, 24), "label": torch.tensor([0, 1]), "factor": torch.ones(2)}
    out = method.evaluate_step(batch)
    assert out["acc_hard"].tolist() == [1.0, 0.0]  # hard voting says class 0
    assert out["acc_soft"].tolist() == [0.0, 1.0]  # soft voting says class 1
    assert out["logits"].argmax(1).tolist() == [1, 1]  # the configured (soft) vote
    assert method.evaluation_values(STAGE) == ()  # validation: the configured vote only
    assert _method("method.split_after=1").evaluation_values() == ()


def test_unknown_voting_mode_is_a_user_error():
    with pytest.raises(UserError, match="voting"):
        _method("method.voting=median")


# Table 2 of the paper: 11.17 M parameters; GMACs ("GFLOPs" in the paper) per image, 7 classes.
TABLE2 = [(0, 40, 0.87), (0, 48, 1.26), (1, 48, 6.66), (2, 48, 4.85), (3, 48, 3.05)]


@pytest.mark.parametrize(("split_after", "size", "gmacs"), TABLE2)
def test_table2_parameters_and_macs_within_two_percent(split_after, size, gmacs):
    with torch.device("meta"):  # shapes only: counting needs no arithmetic
        net = VotingResNet(7, size, split_after=split_after).eval()
        x = torch.empty(1, 3, size, size)
    with FlopCounterMode(display=False) as counter:
        net(x)
    params = sum(p.numel() for p in net.parameters())
    assert abs(params / 11.17e6 - 1) < 0.02
    assert abs(counter.get_total_flops() / 2e9 / gmacs - 1) < 0.02


def test_init_from_copies_matching_tensors_and_skips_the_other_classifier(tmp_path):
    source = _method("dataset.num_classes=8", "dataset.class_names=[a,b,c,d,e,f,g,h]")
    path = tmp_path / "best.pt"
    torch.save({"method": source.state_dict()}, path)
    target = _method()
    skipped = load_matching_weights(target, path)
    assert skipped == ["net.fc.bias", "net.fc.weight"]
    conv = "net.backbone.layer2.0.conv1.weight"
    assert torch.equal(target.state_dict()[conv], source.state_dict()[conv])
    excluded = load_matching_weights(target, path, exclude=["net.backbone.layer4."])
    assert "net.backbone.layer4.0.conv1.weight" in excluded and "net.backbone.conv1.weight" not in excluded


def test_init_from_is_loaded_when_training_starts(tmp_path):
    source = _method()
    torch.save({"method": source.state_dict()}, tmp_path / "last.pt")
    target = _method(f"method.init_from={tmp_path / 'last.pt'}", "method.init_exclude=[net.fc.]")
    fc_before = target.net.fc.weight.clone()
    target.on_stage_start(STAGE)
    assert torch.equal(target.net.backbone.conv1.weight, source.net.backbone.conv1.weight)
    assert torch.equal(target.net.fc.weight, fc_before)


def test_init_from_a_missing_file_is_a_user_error(tmp_path):
    method = _method(f"method.init_from={tmp_path / 'nothing.pt'}")
    with pytest.raises(UserError, match="does not exist"):
        method.on_stage_start(STAGE)


def test_experiment_configs_hold_the_paper_recipe():
    affectnet = compose_cfg("experiment=voting/affectnet")
    rafdb = compose_cfg("experiment=voting/rafdb")
    for cfg, gamma, epochs in [(affectnet, 0.65, 20), (rafdb, 0.95, 40)]:
        assert cfg.method.name == "voting" and cfg.method.epochs == epochs
        assert cfg.trainer.batch_size == 135 and cfg.trainer.optimizer.lr == pytest.approx(2e-4)
        assert cfg.trainer.scheduler.name == "exponential" and cfg.trainer.scheduler.gamma == gamma
        assert cfg.dataset.image_size == 48 and cfg.dataset.num_classes == 7
    assert affectnet.dataset.sampler == "balanced" and rafdb.dataset.sampler == "random"


def test_soft_targets_follow_their_sample_to_every_crop_and_training_logits_are_voted():
    """Mixed-up (soft) targets: each of a sample's 10 crops is trained towards that sample's target (crops are
    sample-major); the training step's ``logits`` are the configured vote of the crops (training accuracy)."""
    method = _method("method.split_after=3", "method.voting=hard").eval()
    images = torch.randn(2, 3, 24, 24)
    target = torch.tensor([[0.0, 0.7, 0.0, 0.3, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0, 0.0, 1.0, 0.0]])
    batch = {"image": images, "label": torch.tensor([1, 5]), "target": target}
    out = method.training_step(batch, STAGE, "main")
    with torch.no_grad():
        crop_logits = method.net(images)
    expected = F.cross_entropy(crop_logits, target.repeat_interleave(10, dim=0))
    assert torch.allclose(out["loss"], expected, atol=1e-6)
    assert not torch.allclose(out["loss"], F.cross_entropy(crop_logits, target.repeat(10, 1)), atol=1e-6)
    assert torch.allclose(out["logits"], vote(crop_logits, "hard"))


def test_init_from_also_reads_a_bare_state_dict(tmp_path):
    """A file holding the method's state dict itself (not wrapped in {"method": ...}) is read as well."""
    source = _method()
    torch.save(source.state_dict(), tmp_path / "bare.pt")
    target = _method("method.split_after=3")
    load_matching_weights(target, tmp_path / "bare.pt")
    assert torch.equal(target.net.backbone.conv1.weight, source.net.backbone.conv1.weight)


@pytest.mark.parametrize("value", ["none", "None", "NULL"])
def test_init_from_none_in_any_case_trains_from_scratch(value):
    """``init_from: none`` (the string, as experiment=voting/rafdb asks for) means no initialisation."""
    assert _method(f"method.init_from={value}").init_from is None


def test_the_stem_option_reaches_the_network():
    """method.stem=conv3 is the paper's 3x3 stride-1 stem; another stem (the quick default) is not."""
    assert _method("method.stem=conv3").net.backbone.conv1.kernel_size == (3, 3)
    assert _method("method.stem=imagenet").net.backbone.conv1.kernel_size != (3, 3)


def test_init_from_logs_what_it_copied_from_and_what_stayed_fresh(tmp_path, caplog):
    source = _method("dataset.num_classes=8", "dataset.class_names=[a,b,c,d,e,f,g,h]")
    torch.save({"method": source.state_dict()}, tmp_path / "best.pt")
    target = _method(f"method.init_from={tmp_path / 'best.pt'}")
    with caplog.at_level("INFO", logger="lrfer.methods.voting"):
        target.on_stage_start(STAGE)
    assert f"initialised from {tmp_path / 'best.pt'}; kept fresh: net.fc.bias, net.fc.weight" in caplog.text
    same = _method(f"method.init_from={tmp_path / 'best.pt'}", "dataset.num_classes=8")
    caplog.clear()
    with caplog.at_level("INFO", logger="lrfer.methods.voting"):
        same.on_stage_start(STAGE)
    assert caplog.text.rstrip().endswith("kept fresh: nothing")


def test_model_weights_initialise_the_voting_network(tmp_path):
    """``model.weights=<file>`` (a local ResNet-18 checkpoint) reaches the voting network's backbone."""
    from lrfer.models.resnet import build_resnet

    torch.manual_seed(5)
    state = build_resnet(7, 100, stem="imagenet").state_dict()
    torch.save(state, tmp_path / "r18.pth")
    method = _method(f"model.weights={tmp_path / 'r18.pth'}", "method.split_after=3")
    assert torch.equal(method.net.backbone.layer2[0].conv1.weight, state["backbone.layer2.0.conv1.weight"])

"""GME-Net: DCAM/DSAM/MCB shapes, the attention-similarity loss (eq. 9-13), teacher freezing, ablations."""

from __future__ import annotations

import inspect
import json
import math

import pytest
import torch
from conftest import compose_cfg, method_options, tiny

from lrfer.core.checkpoint import save_checkpoint
from lrfer.core.errors import UserError
from lrfer.data.degrade import parse_degradations
from lrfer.engine.run import run_training
from lrfer.methods.base import MethodContext
from lrfer.methods.gmenet import GMENetMethod, attention_similarity_loss
from lrfer.models.gmenet import (
    BlockAttention,
    ChannelAttention,
    DepthwiseExtractor,
    GMENet,
    MixedChannelBlock,
    SpatialAttention,
)

SMALL = dict(width=8, layers=[1, 1, 1, 1], global_blocks=[1, 1, 1, 1])
#: The network options of method=gmenet (configs/method/gmenet.yaml: the one place they are set).
NETWORK = {k: v for k, v in method_options("gmenet").items() if k in inspect.signature(GMENet).parameters}


pytestmark = pytest.mark.usefixtures("one_thread")


def _context(size: int = 32, classes: int = 7) -> MethodContext:
    return MethodContext(
        num_classes=classes,
        input_size=size,
        native_size=size,
        in_channels=3,
        train_degradations=parse_degradations(["14px"]),
    )


def _method(**kw) -> GMENetMethod:
    torch.manual_seed(0)
    return GMENetMethod(_context(), **{**method_options("gmenet"), "epochs": 1, **SMALL, **kw})


def _batch(n: int = 4, size: int = 32, factor: float = 32 / 14) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return {
        "image": torch.randn(n, 3, size, size, generator=g),
        "image_hr": torch.randn(n, 3, size, size, generator=g),
        "label": torch.randint(0, 7, (n,), generator=g),
        "factor": torch.full((n,), factor),
    }


# -- attention modules --------
@pytest.mark.parametrize(
    ("build", "map_shape"),
    [
        (lambda: ChannelAttention(16, reduction=4, extractor=DepthwiseExtractor(16)), (2, 16, 1, 1)),  # DCAM
        (lambda: SpatialAttention(16, kernel_size=3, extractor=DepthwiseExtractor(16)), (2, 1, 7, 7)),  # DSAM
    ],
    ids=["dcam", "dsam"],
)
def test_attention_returns_input_shape_and_its_pre_sigmoid_map(build, map_shape):
    torch.manual_seed(0)
    module = build().eval()
    x = torch.randn(2, 16, 7, 7)
    out, attention_map = module(x)
    assert out.shape == x.shape and attention_map.shape == map_shape
    assert torch.allclose(out, torch.sigmoid(attention_map) * x)
    assert (attention_map < 0).any()  # not squashed: the map before the sigmoid


def test_the_distillation_loss_uses_the_pre_sigmoid_maps_of_every_attention_block():
    method = _method()
    captured = {"student": [], "teacher": []}
    for role in captured:
        net = getattr(method, role)
        for mod in net.modules():
            if isinstance(mod, (ChannelAttention, SpatialAttention)):
                mod.register_forward_hook(lambda _m, _i, out, role=role: captured[role].append(out[1]))
    method.on_stage_start(method.stages()[-1])
    out = method.training_step(_batch(), method.stages()[-1], "main")
    pairs = {r: list(zip(c[0::2], c[1::2])) for r, c in captured.items()}
    assert len(pairs["student"]) == len(pairs["teacher"]) == 4  # one (M_c, M_s) per Mixed-Attention Block
    assert torch.allclose(out["kd"], attention_similarity_loss(pairs["student"], pairs["teacher"]))
    sig = [(torch.sigmoid(c), torch.sigmoid(s)) for c, s in pairs["student"]]
    sig_t = [(torch.sigmoid(c), torch.sigmoid(s)) for c, s in pairs["teacher"]]
    assert not torch.allclose(out["kd"], attention_similarity_loss(sig, sig_t))  # not the post-sigmoid maps
    assert torch.allclose(out["loss"], out["ce"] + 5.0 * out["kd"])  # eq. 13, kd_weight = 5


# -- the loss --------
def test_attention_similarity_loss_is_zero_for_identical_maps_and_positive_otherwise():
    torch.manual_seed(0)
    maps = [(torch.randn(3, 8, 1, 1), torch.randn(3, 1, 5, 5)) for _ in range(2)]
    assert attention_similarity_loss(maps, maps).abs().item() < 1e-6
    other = [(c + torch.randn_like(c), s) for c, s in maps]
    assert attention_similarity_loss(other, maps).item() > 0.01


def test_attention_similarity_loss_matches_eq_9_to_11_on_a_hand_example():
    s_c, t_c = torch.tensor([1.0, 0.0, 0.0]).view(1, 3, 1, 1), torch.tensor([1.0, 1.0, 0.0]).view(1, 3, 1, 1)
    s_s, t_s = (
        torch.tensor([[1.0, 2.0], [3.0, 4.0]]).view(1, 1, 2, 2),
        torch.tensor([[4.0, 3.0], [2.0, 1.0]]).view(1, 1, 2, 2),
    )
    cos_c, cos_s = 1 / math.sqrt(2), 20 / 30  # eq. 9-10: (1*1)/(1*sqrt 2), (4+6+6+4)/(sqrt30*sqrt30)
    block = (1 - cos_c) + (1 - cos_s)  # eq. 11, one block's two maps
    students, teachers = [(s_c, s_s), (t_c, t_s)], [(t_c, t_s), (t_c, t_s)]  # the second block: distance 0
    # sum over the 4 maps (A-SKD's code, the default), or their mean
    assert attention_similarity_loss(students, teachers).item() == pytest.approx(block, abs=1e-6)
    assert attention_similarity_loss(students, teachers, "mean").item() == pytest.approx(block / 4, abs=1e-6)
    with pytest.raises(UserError, match="kd_reduction"):
        attention_similarity_loss(students, teachers, "max")


def test_kd_reduction_reaches_the_method_and_defaults_to_sum():
    assert compose_cfg("method=gmenet").method.kd_reduction == "sum"
    assert _method(kd_reduction="mean").kd_reduction == "mean"
    with pytest.raises(UserError, match="kd_reduction"):
        _method(kd_reduction="median")


def test_paper_sized_network_is_within_5_percent_of_the_paper():
    """method=gmenet_paper: 18.75 M parameters, 2.99 GFLOPs (= GMACs at 224 px), within 5 %."""
    from lrfer.config import compose_config
    from lrfer.tools.model_stats import model_stats

    overrides = ["method=gmenet_paper", "method.kd_weight=0", "input_size=224"]
    stats = model_stats(compose_config(overrides))
    assert abs(stats["params"] / 18.75e6 - 1) < 0.05, stats["params"]
    assert abs(stats["gmacs"] / 2.99 - 1) < 0.05, stats["gmacs"]
    for table in ("rafdb", "ferplus", "fer2013", "expw"):
        exp = compose_cfg(f"experiment=gmenet/{table}")
        assert (exp.method.width, list(exp.method.layers)) == (64, [2, 2, 2, 2])
        assert exp.degrade.input_size == 224 and exp.trainer.optimizer.weight_decay == pytest.approx(5e-4)
    quick = compose_cfg("method=gmenet").method
    assert (quick.width, list(quick.layers)) == (32, [3, 4, 6, 3])  # the quick default stays small


# -- teacher / student --------
def test_the_teacher_is_frozen_during_the_student_stage():
    method = _method()
    teacher_stage, student_stage = method.stages()
    assert (teacher_stage.name, teacher_stage.train_degrade, student_stage.needs_hr) == (
        "teacher",
        ["x1"],
        True,
    )
    method.on_stage_start(student_stage)
    method.train()
    before = {k: v.clone() for k, v in method.teacher.state_dict().items()}
    student_before = {k: v.clone() for k, v in method.student.state_dict().items()}
    params = list(method.stage_parameters(student_stage, "main"))
    opt = torch.optim.SGD(params, lr=0.1)
    for _ in range(2):
        out = method.training_step(_batch(), student_stage, "main")
        opt.zero_grad()
        out["loss"].backward()
        opt.step()
    assert not method.teacher.training  # BatchNorm statistics not updated
    assert all(not p.requires_grad and p.grad is None for p in method.teacher.parameters())
    assert all(torch.equal(before[k], v) for k, v in method.teacher.state_dict().items())
    assert not all(torch.equal(student_before[k], v) for k, v in method.student.state_dict().items())
    assert {id(p) for p in params}.isdisjoint(id(p) for p in method.teacher.parameters())


def test_the_student_is_distilled_towards_the_teachers_maps_of_the_high_resolution_face():
    """Eq. 12: L_kd compares the student's maps of the low-resolution face with the frozen teacher's maps
    of the same face at high resolution (``image_hr``), never of the low-resolution input."""
    method = _method()
    student_stage = method.stages()[-1]
    method.on_stage_start(student_stage)
    method.eval()
    batch = _batch()
    out = method.training_step(batch, student_stage, "main")
    with torch.no_grad():
        _, student_maps = method.student(
            method._student_input(batch["image"], batch["factor"]), return_maps=True
        )
        _, hr_maps = method.teacher(batch["image_hr"], return_maps=True)
        _, lr_maps = method.teacher(batch["image"], return_maps=True)
    assert torch.allclose(out["kd"], attention_similarity_loss(student_maps, hr_maps))
    assert not torch.allclose(out["kd"], attention_similarity_loss(student_maps, lr_maps))
    # the same low-resolution input with another high-resolution face gives another distillation target
    other = method.training_step({**batch, "image_hr": batch["image_hr"].flip(0)}, student_stage, "main")
    assert torch.equal(other["ce"], out["ce"]) and not torch.allclose(other["kd"], out["kd"])


def test_kd_weight_zero_builds_no_teacher_and_skips_its_stage():
    method = _method(kd_weight=0.0)
    assert method.teacher is None
    stages = method.stages()
    assert [s.name for s in stages] == ["student"] and stages[0].needs_hr is False
    batch = _batch()
    del batch["image_hr"]
    out = method.training_step(batch, stages[0], "main")
    assert "kd" not in out and torch.allclose(out["loss"], out["ce"])


def test_a_teacher_checkpoint_replaces_the_teacher_stage(tmp_path):
    trained = _method()
    with torch.no_grad():
        for p in trained.teacher.parameters():
            p.add_(1.0)
    path = tmp_path / "best.pt"
    save_checkpoint({"method": trained.state_dict()}, path)
    method = _method(teacher_checkpoint=str(path))
    assert [s.name for s in method.stages()] == ["student"]
    method.on_stage_start(method.stages()[0])
    assert all(
        torch.equal(a, b)
        for a, b in zip(method.teacher.state_dict().values(), trained.teacher.state_dict().values())
    )
    assert not any(p.requires_grad for p in method.teacher.parameters())


def test_only_low_resolution_inputs_are_blurred():
    method = _method()
    images = torch.randn(2, 3, 32, 32)
    out = method._student_input(images, torch.tensor([1.0, 32 / 14]))
    assert torch.equal(out[0], images[0]) and not torch.allclose(out[1], images[1])
    assert torch.allclose(out.mean(dim=(2, 3)), images.mean(dim=(2, 3)), atol=0.05)  # a low-pass filter


# -- ablations and networks --------
@pytest.mark.parametrize("attention", ["dbam", "cbam", "none"])
@pytest.mark.parametrize("global_branch", [True, False])
def test_every_ablation_builds_and_runs_forward(attention, global_branch):
    torch.manual_seed(0)
    options = {**NETWORK, **SMALL, "attention": attention, "global_branch": global_branch}
    net = GMENet(7, 32, **options).eval()
    logits, maps = net(torch.randn(2, 3, 32, 32), return_maps=True)
    assert logits.shape == (2, 7) and torch.isfinite(logits).all()
    assert len(maps) == (0 if attention == "none" else 4)
    assert (net.global_branch is not None) == global_branch


def test_attention_none_with_distillation_is_a_user_error():
    with pytest.raises(UserError, match="kd_weight=0"):
        _method(attention="none")


def test_dbam_adds_depthwise_separable_convolutions_to_cbam():
    dbam, cbam = BlockAttention(32, "dbam"), BlockAttention(32, "cbam", spatial_kernel=7)
    n = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert n(cbam) == 2 * 32 * 2 + 2 + 32 + 2 * 49  # CBAM: MLP 32-2-32 with biases + 7x7 conv on 2 maps
    assert n(dbam) - (n(cbam) - 2 * 49 + 2 * 9) == 4 * (32 + 32 * 32 + 2 * 32)  # 4 DWSep (dw 1x1, pw, BN)


def test_mixed_channel_block_keeps_the_shape_and_follows_eq_5_to_8():
    torch.manual_seed(0)
    mcb = MixedChannelBlock(16).eval()
    x = torch.randn(2, 16, 6, 6)
    assert mcb(x).shape == x.shape
    for conv in (*mcb.branch1.convs, *mcb.branch2.convs):  # DWConv outputs 0: F_1 = 0, F_i = 0 + X_i
        torch.nn.init.zeros_(conv[1].weight)
    f = mcb.conv(x)
    r, y = mcb.reduce(f), torch.chunk(f, 4, dim=1)
    zero = torch.zeros_like(r)
    o1, o2 = torch.cat([zero, r, r, r], 1), torch.cat([zero, y[1], y[2], y[3]], 1)  # eq. 4-7
    assert torch.allclose(mcb(x), o1 + o2 + x, atol=1e-6)  # eq. 8


def test_default_network_size():
    net = GMENet(7, 100, **NETWORK)
    assert sum(p.numel() for p in net.parameters()) == 7_899_661


# -- configuration and a real run --------
def test_method_gmenet_alone_trains_and_tests_on_14px():
    cfg = compose_cfg("method=gmenet")
    assert list(cfg.degrade.train) == ["14px"] and list(cfg.degrade.test) == ["14px"]
    assert cfg.method.kd_weight == 5.0 and cfg.method.width == 32


def test_a_tiny_run_trains_teacher_then_student_and_logs_kd(tmp_path):
    small = ["method.width=8", "method.layers=[1,1,1,1]", "trainer.max_epochs=1", "trainer.num_threads=1"]
    metrics = run_training(compose_cfg(*tiny(tmp_path, "method=gmenet", *small)), tmp_path / "run")
    on_disk = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert list(on_disk["test"]) == ["14px"] and on_disk["test"] == metrics["test"]
    assert list(on_disk["train"]["stages"]) == ["teacher", "student"]
    student = on_disk["train"]["stages"]["student"]
    assert "kd" not in on_disk["train"]["stages"]["teacher"] and student["kd"] == on_disk["train"]["kd"]
    # eq. 13 on the logged epoch means: the student's loss is L_ce + kd_weight (5) * L_kd
    assert student["loss"] == pytest.approx(student["ce"] + 5.0 * student["kd"], rel=1e-5)
    assert student["kd"] > 0


def test_the_distillation_loss_gives_no_gradient_to_the_teachers_maps():
    """The teacher's maps are targets: L_kd's gradient reaches the student's maps only (even when the
    teacher's maps were computed with gradients on)."""
    g = torch.Generator().manual_seed(0)
    student = [(torch.randn(2, 4, 1, 1, generator=g), torch.randn(2, 1, 3, 3, generator=g)) for _ in range(2)]
    teacher = [(torch.randn(2, 4, 1, 1, generator=g), torch.randn(2, 1, 3, 3, generator=g)) for _ in range(2)]
    for maps in (*student, *teacher):
        for m in maps:
            m.requires_grad_(True)
    attention_similarity_loss(student, teacher).backward()
    assert all(m.grad is None for maps in teacher for m in maps)
    assert all(m.grad is not None and m.grad.abs().sum() > 0 for maps in student for m in maps)


def test_the_teacher_stage_trains_the_teacher_on_the_high_resolution_faces_alone():
    """Stage ``teacher``: its parameters are the teacher's, its loss the teacher's cross-entropy on the
    batch's (x1) images without blur or distillation; its validation reads the teacher, not the student."""
    method = _method()
    teacher_stage = method.stages()[0]
    method.on_stage_start(teacher_stage)
    method.eval()
    params = {id(p) for p in method.stage_parameters(teacher_stage, "main")}
    assert params == {id(p) for p in method.teacher.parameters()}
    assert all(p.requires_grad for p in method.teacher.parameters())
    batch = _batch(factor=1.0)
    out = method.training_step(batch, teacher_stage, "main")
    with torch.no_grad():
        logits = method.teacher(batch["image"])
    assert torch.allclose(out["logits"], logits)
    assert out["loss"].item() == pytest.approx(method.classification_loss(logits, batch).item(), rel=1e-6)
    assert "kd" not in out
    out["loss"].backward()
    assert all(p.grad is None for p in method.student.parameters())
    with torch.no_grad():
        assert torch.allclose(method.evaluate_step(batch, teacher_stage)["logits"], logits)
        student_stage = method.stages()[-1]
        student = method.student(method._student_input(batch["image"], batch["factor"]))
        assert torch.allclose(method.evaluate_step(batch, student_stage)["logits"], student)
        assert torch.allclose(method.evaluate_step(batch, None)["logits"], student)


def test_the_distillation_loss_refuses_maps_that_do_not_pair_up():
    """A different number of attention blocks, no blocks, or a channel OR a spatial map of another shape is
    an error naming what differs (zip would silently drop blocks); an unknown reduction lists the choices."""
    block = (torch.ones(1, 4, 1, 1), torch.ones(1, 1, 3, 3))
    with pytest.raises(ValueError, match="got 2 and 1"):
        attention_similarity_loss([block, block], [block])
    with pytest.raises(ValueError, match="got 0 and 0"):
        attention_similarity_loss([], [])
    for other in ((torch.ones(1, 4, 1, 1), torch.ones(1, 1, 2, 2)), (torch.ones(1, 2, 1, 1), block[1])):
        with pytest.raises(ValueError, match="differ in shape"):
            attention_similarity_loss([block], [other])
    with pytest.raises(UserError, match="choose sum, paper, mean"):
        attention_similarity_loss([block], [block], "median")

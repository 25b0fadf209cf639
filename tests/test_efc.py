"""EFC network (eq. 3-9), its parameter/FLOP budget, the torchvision zoo at small inputs, the recipes."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from conftest import compose_cfg
from torch.utils.flop_counter import FlopCounterMode

from lrfer.core.errors import UserError
from lrfer.engine.run import build_method, method_context
from lrfer.methods.efc import EFC
from lrfer.methods.zoo import Zoo
from lrfer.models.efc import EFCBlock, EFCNet, SSwish, s_swish
from lrfer.models.zoo import ZOO_ARCHS, build_zoo

PAPER_PARAMS = 513_484


pytestmark = pytest.mark.usefixtures("one_thread")


def _counts(net: torch.nn.Module) -> tuple[int, int]:
    params = sum(p.numel() for p in net.parameters())
    stats = sum(b.numel() for n, b in net.named_buffers() if n.rsplit(".", 1)[-1].startswith("running_"))
    return params, params + stats


def test_efc_has_the_papers_parameter_count_within_five_percent():
    params, keras_style = _counts(EFCNet(7))
    assert abs(params / PAPER_PARAMS - 1) < 0.05
    assert abs(keras_style / PAPER_PARAMS - 1) < 0.01  # the paper's Keras count includes BN statistics


def test_efc_costs_about_0_007_gflops_at_32px():
    net = EFCNet(7).eval()
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        out = net(torch.randn(1, 3, 32, 32))
    assert out.shape == (1, 7)
    assert 0.006 <= counter.get_total_flops() / 1e9 <= 0.008


@pytest.mark.parametrize("beta", [0.5, 1.0, 2.0])
def test_s_swish_is_x_over_one_plus_exp_minus_beta_x(beta):
    x = torch.linspace(-6, 6, 49)
    expected = torch.tensor([v / (1 + math.exp(-beta * v)) for v in x.tolist()])
    assert torch.allclose(s_swish(x, beta), expected, atol=1e-6)
    if beta == 1.0:
        assert torch.allclose(s_swish(x, beta), F.silu(x), atol=1e-6)


def test_efc_block_follows_equations_4_to_9():
    block = EFCBlock(16, 24, stride=2, expansion=2, beta=1.5).eval()
    x = torch.randn(2, 16, 8, 8)
    with torch.no_grad():
        sp = torch.sigmoid(block.sp_att.conv(x))  # eq. 8: one channel
        h = block.bn1(block.dw(x) * sp)  # eq. 4, 6
        h = s_swish(block.expand(h), 1.5)  # eq. 5, 3
        ch = torch.sigmoid(block.ch_att.conv(h.mean(dim=(2, 3), keepdim=True)))  # eq. 9
        expected = block.bn2(block.project(h) * ch)  # eq. 4, 7
        got = block(x)
    assert sp.shape == (2, 1, 4, 4) and ch.shape == (2, 24, 1, 1)
    assert got.shape == (2, 24, 4, 4)
    assert torch.allclose(got, expected, atol=1e-6)


def test_efc_block_has_no_residual_connection():
    block = EFCBlock(8, 8, stride=1).eval()
    for module in (block.bn2,):
        torch.nn.init.zeros_(module.weight)
        torch.nn.init.zeros_(module.bias)
    with torch.no_grad():
        assert torch.count_nonzero(block(torch.randn(1, 8, 6, 6))) == 0


@pytest.mark.parametrize("size", [32, 20, 10, 5])
def test_efc_runs_at_every_resolution_of_the_paper(size):
    with torch.no_grad():
        assert EFCNet(7).eval()(torch.randn(2, 3, size, size)).shape == (2, 7)


def test_method_efc_builds_the_efc_network():
    cfg = compose_cfg("method=efc", "dataset.image_size=32")
    method = build_method(cfg, method_context(cfg))
    assert isinstance(method, EFC) and isinstance(method.net, EFCNet)
    assert method.predict(torch.randn(2, 3, 32, 32)).shape == (2, 7)


def test_the_efc_methods_options_and_input_channels_reach_its_network():
    cfg = compose_cfg(
        "method=efc",
        "dataset.image_size=32",
        "method.stem_channels=8",
        "method.blocks=[[16,2,3]]",
        "method.head_channels=40",
        "method.beta=2.0",
    )
    net = build_method(cfg, method_context(cfg, in_channels=1)).net
    assert (net.stem[0].in_channels, net.stem[0].out_channels) == (1, 8)
    assert len(net.blocks) == 1 and net.blocks[0].expand.out_channels == 24  # 3 x 8: expansion 3
    assert net.blocks[0].dw.stride == (2, 2) and net.head[0].out_channels == 40
    assert {m.beta for m in net.modules() if isinstance(m, SSwish)} == {2.0}


def test_bad_block_spec_is_a_user_error():
    with pytest.raises(UserError, match="out_channels, stride, expansion"):
        EFCNet(7, blocks=[[32, 1]])


@pytest.mark.parametrize("arch", ZOO_ARCHS)
def test_zoo_archs_run_at_32_and_5px(arch):
    with torch.device("meta"):  # shapes only (no arithmetic): fast even for VGG
        net = build_zoo(7, 32, arch).eval()
        assert net(torch.empty(2, 3, 32, 32)).shape == (2, 7)
        assert net(torch.empty(2, 3, 5, 5)).shape == (2, 7)


def test_zoo_reduces_the_stem_stride_only_when_asked():
    small, stock = build_zoo(7, 32, "mobilenet_v2"), build_zoo(7, 32, "mobilenet_v2", small_input=False)
    assert small.features[0][0].stride == (1, 1) and stock.features[0][0].stride == (2, 2)
    assert _counts(small) == _counts(stock)


def test_zoo_parameter_counts_match_the_papers_keras_counts():
    # Table 1: MobileNetV2 2,266,951 (exactly, BN statistics included); VGG11 28,137,607 (head on 512-d)
    with torch.device("meta"):
        assert _counts(build_zoo(7, 32, "mobilenet_v2"))[1] == 2_266_951
        assert abs(_counts(build_zoo(7, 32, "vgg11"))[1] / 28_137_607 - 1) < 0.001


def test_method_zoo_selects_the_arch():
    cfg = compose_cfg("method=zoo", "method.arch=shufflenet_v2_x1_0", "dataset.image_size=32")
    method = build_method(cfg, method_context(cfg))
    assert isinstance(method, Zoo) and type(method.net).__name__ == "ShuffleNetV2"


@pytest.mark.parametrize(("small_input", "stride"), [(True, (1, 1)), (False, (2, 2))])
def test_the_zoo_methods_small_input_and_input_channels_reach_its_network_which_predicts(small_input, stride):
    cfg = compose_cfg("method=zoo", f"method.small_input={small_input}", "dataset.image_size=32")
    method = build_method(cfg, method_context(cfg, in_channels=1)).eval()
    stem = method.net.features[0][0]
    assert stem.stride == stride and stem.in_channels == 1
    images = torch.randn(2, 1, 32, 32)
    with torch.no_grad():
        assert torch.equal(method.predict(images), method.net(images))


def test_unknown_zoo_arch_is_a_user_error():
    with pytest.raises(UserError, match="zoo arch"):
        build_zoo(7, 32, "alexnet")


@pytest.mark.parametrize("experiment", ["efc/kdef", "efc/rafdb", "efc/ferplus"])
def test_experiment_configs_hold_the_papers_recipe(experiment):
    cfg = compose_cfg("method=efc", f"experiment={experiment}", "degrade.train=[10px]")
    sched = cfg.trainer.scheduler
    assert cfg.trainer.optimizer.name == "adam" and cfg.trainer.optimizer.lr == pytest.approx(1e-4)
    assert (sched.name, sched.monitor, sched.factor, sched.patience) == ("plateau", "train_acc", 0.75, 20)
    assert list(cfg.degrade.test) == ["10px"]  # tested at the resolution it was trained on
    assert cfg.degrade.resize_back is False and cfg.degrade.kernel == "bilinear"
    assert method_context(cfg).input_size == 10  # the network sees the small face itself
    if experiment == "efc/kdef":
        assert cfg.trainer.batch_size == 128 and cfg.method.epochs == 50 and cfg.dataset.num_folds == 10

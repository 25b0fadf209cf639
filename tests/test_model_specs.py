"""The networks of lrfer/models as documented: EFC's sizes, the voting crops and votes, MRAFER's routing.

Specifications that complement test_efc.py, test_voting.py and test_drgfer.py where a plausible one-line
change (a width, a stride, a bias, a dtype, a refused input) would pass them.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from lrfer.core.errors import UserError
from lrfer.models.efc import DEFAULT_BLOCKS, EFCBlock, EFCNet, SpatialAttention, SSwish, build_efc, s_swish
from lrfer.models.mrafer import MRAFER, gather
from lrfer.models.voting import VotingResNet, crop_boxes, ten_crops, vote

# -- EFC (Section 3, Figure 1; the widths are ours, documented in lrfer/models/efc.py) --------


def test_efc_has_exactly_the_documented_size_and_feature_maps_at_32px():
    """506,643 parameters (510,643 with BatchNorm statistics) for 7 classes; maps 16, 16, 8, 4, 2 px with
    24, 32, 64, 128, 224 channels, then the 1280-channel head."""
    net = EFCNet(7).eval()
    params = sum(p.numel() for p in net.parameters())
    stats = sum(b.numel() for n, b in net.named_buffers() if n.rsplit(".", 1)[-1].startswith("running_"))
    assert (params, params + stats) == (506_643, 510_643)
    shapes = []
    for module in (net.stem, *net.blocks, net.head):
        module.register_forward_hook(lambda m, i, o: shapes.append(tuple(o.shape[1:])))
    with torch.no_grad():
        out = net(torch.randn(2, 3, 32, 32))
    assert out.shape == (2, 7)
    assert shapes == [(24, 16, 16), (32, 16, 16), (64, 8, 8), (128, 4, 4), (224, 2, 2), (1280, 2, 2)]


def test_efc_blocks_are_depthwise_then_expanded_by_their_factor_with_the_documented_biases():
    net = EFCNet(7)
    widths = [24] + [b[0] for b in DEFAULT_BLOCKS]
    for block, (out, stride, expansion), width in zip(net.blocks, DEFAULT_BLOCKS, widths):
        assert block.dw.groups == width and block.dw.kernel_size == (3, 3) and block.dw.padding == (1, 1)
        assert block.dw.stride == (stride, stride) and block.sp_att.conv.stride == (stride, stride)
        assert block.sp_att.conv.out_channels == 1
        assert block.expand.out_channels == width * expansion
        assert (block.project.in_channels, block.project.out_channels) == (width * expansion, out)
        assert block.ch_att.conv.out_channels == out
        assert block.dw.bias is None and block.project.bias is None  # followed by BatchNorm
        assert block.expand.bias is not None and block.sp_att.conv.bias is not None
        assert block.ch_att.conv.bias is not None
    stem_conv = net.stem[0]
    assert (stem_conv.stride, stem_conv.kernel_size, stem_conv.bias) == ((2, 2), (3, 3), None)
    assert net.head[0].bias is None and net.classifier.bias is not None


def test_an_efc_block_by_default_expands_twice_with_s_swish_beta_1_at_stride_1():
    block = EFCBlock(8, 16)
    assert block.expand.out_channels == 16 and block.act.beta == 1.0
    assert block.dw.stride == (1, 1) and SSwish().beta == 1.0


def test_the_efc_builders_defaults_are_the_documented_network_down_to_one_pixel_faces():
    """Stem 3 -> 24 and head -> 1280, each conv + BN + S-Swish; S-Swish beta 1 everywhere (also ``s_swish``'s
    own default); SP_att at stride 1 unless given; ``build_efc`` accepts any positive input size."""
    x = torch.linspace(-4, 4, 17)
    assert torch.allclose(s_swish(x), x * torch.sigmoid(x))
    assert SpatialAttention(4).conv.stride == (1, 1)
    for net in (EFCNet(7), build_efc(7, 32), build_efc(7, 1)):
        assert (net.stem[0].in_channels, net.stem[0].out_channels, net.head[0].out_channels) == (3, 24, 1280)
        assert [type(m).__name__ for m in (*net.stem, *net.head)] == ["Conv2d", "BatchNorm2d", "SSwish"] * 2
        assert {m.beta for m in net.modules() if isinstance(m, SSwish)} == {1.0}
    with torch.no_grad():
        assert build_efc(7, 1).eval()(torch.randn(1, 3, 1, 1)).shape == (1, 7)


def test_efc_options_reach_the_network():
    net = build_efc(5, 32, in_channels=1, stem_channels=8, blocks=[[16, 2, 3]], head_channels=40, beta=2.0)
    assert net.stem[0].in_channels == 1 and net.stem[0].out_channels == 8
    assert net.blocks[0].expand.out_channels == 24 and net.blocks[0].dw.stride == (2, 2)
    assert net.head[0].out_channels == 40 and net.classifier.out_channels == 5
    betas = {m.beta for m in net.modules() if isinstance(m, SSwish)}
    assert betas == {2.0}
    with torch.no_grad():
        assert net(torch.randn(1, 1, 20, 20)).shape == (1, 5)
    with pytest.raises(UserError, match="positive input size"):
        build_efc(5, 0)
    with pytest.raises(UserError, match=r"\[out_channels, stride, expansion\]"):
        EFCNet(5, blocks=[[16, 2]])


# -- Residual voting network: 10 crops, soft and hard votes --------


def test_crops_of_an_impossible_size_or_a_non_square_map_are_refused():
    with pytest.raises(UserError, match="cannot take"):
        crop_boxes(6, ratio=0.05)  # round(0.3) = 0 px
    with pytest.raises(UserError, match="cannot take"):
        crop_boxes(6, ratio=1.2)
    assert crop_boxes(6, ratio=1.0) == (6, [(0, 0)] * 5)
    with pytest.raises(UserError, match="square"):
        ten_crops(torch.zeros(1, 1, 12, 10))


def test_a_one_pixel_map_gives_ten_one_pixel_crops():
    """A map shrunk to one pixel (a small face split after module 3) is cut into 1 px crops, not refused."""
    assert crop_boxes(1) == (1, [(0, 0)] * 5)
    x = torch.randn(2, 4, 1, 1)
    assert torch.equal(ten_crops(x), x.repeat_interleave(10, dim=0))


def test_the_crop_ratio_reaches_the_crops():
    net = VotingResNet(7, 24, split_after=1, crop_ratio=0.5).eval()
    seen = []
    net.backbone.layer2.register_forward_pre_hook(lambda m, args: seen.append(tuple(args[0].shape)))
    with torch.no_grad():
        net(torch.randn(1, 3, 24, 24))
    assert seen == [(10, 64, 12, 12)]


def test_the_voting_network_splits_after_module_1_by_default_and_its_options_reach_the_resnet():
    """Default ``split_after=1`` (the paper's best, Table 2): module 2 sees the ten crops; ``arch``,
    ``in_channels`` and ``stem`` (``auto`` chosen by the input size) reach the torchvision ResNet."""
    net = VotingResNet(7, 24).eval()
    seen = []
    net.backbone.layer2.register_forward_pre_hook(lambda m, args: seen.append(tuple(args[0].shape)))
    with torch.no_grad():
        net(torch.randn(1, 3, 24, 24))
    assert seen == [(10, 64, 20, 20)]
    with torch.device("meta"):
        deeper = VotingResNet(7, 24, arch="resnet34", in_channels=1)
        assert len(deeper.backbone.layer3) == 6 and deeper.backbone.conv1.in_channels == 1
        auto_small, auto_large = VotingResNet(7, 24, stem="auto"), VotingResNet(7, 64, stem="auto")
    assert auto_small.backbone.conv1.kernel_size == (3, 3) and auto_large.backbone.conv1.kernel_size == (7, 7)


def test_votes_are_per_sample_over_its_own_ten_crops():
    """Two samples, sample-major: sample 0's ten crops all say class 2, sample 1's all say class 0."""
    crops = torch.cat(
        [torch.tensor([[0.0, 0.0, 5.0]]).repeat(10, 1), torch.tensor([[5.0, 0.0, 0.0]]).repeat(10, 1)]
    )
    for mode in ("soft", "hard"):
        assert vote(crops, mode).argmax(1).tolist() == [2, 0]
    hard = vote(crops, "hard").exp()
    assert hard[0, 2] == pytest.approx(1.0 + 1e-3 * F.softmax(crops[0], 0)[2].item(), rel=1e-5)


def test_hard_voting_scores_are_the_vote_shares():
    """7 crops for class 0 and 3 for class 1: the hard score is log(0.7) and log(0.3) up to the 1e-3
    tie-break term; soft voting is log of the mean softmax."""
    crops = torch.cat([torch.tensor([[3.0, 0.0]]).repeat(7, 1), torch.tensor([[0.0, 3.0]]).repeat(3, 1)])
    mean = F.softmax(crops, 1).mean(0)
    assert torch.allclose(vote(crops, "hard")[0].exp(), torch.tensor([0.7, 0.3]) + 1e-3 * mean, atol=1e-6)
    assert torch.allclose(vote(crops, "soft")[0].exp(), mean, atol=1e-6)
    assert torch.isfinite(vote(torch.tensor([[100.0, -100.0]] * 10), "hard")).all()  # no log(0)
    assert vote(crops.repeat(1, 1), "soft", num_crops=5).shape == (2, 2)


def test_the_default_vote_is_soft_and_an_unknown_one_is_refused_naming_the_choices():
    crops = torch.randn(20, 7)
    assert torch.equal(vote(crops), vote(crops, "soft"))
    with pytest.raises(UserError, match=r"^unknown voting 'median': choose one of soft, hard$"):
        vote(crops, "median")


def test_bf16_crop_logits_are_voted_in_float32():
    crops = torch.randn(20, 7).to(torch.bfloat16)
    assert vote(crops, "soft").dtype == torch.float32


# -- MRAFER (DRGFER sec. 4.2): Assign / Gather --------


class Scale(nn.Module):
    def __init__(self, factor: float, dtype=torch.float32) -> None:
        super().__init__()
        self.factor, self.dtype = factor, dtype

    def forward(self, x):
        return (x.flatten(1)[:, :2] * self.factor).to(self.dtype)


def test_route_sends_each_image_to_the_expert_its_index_names():
    net = MRAFER([Scale(1.0), Scale(10.0), Scale(100.0)])
    images = torch.arange(1.0, 9.0).view(4, 1, 1, 2)
    out = net.route(images, torch.tensor([2, 0, 1, 2]))
    expected = images.flatten(1) * torch.tensor([[100.0], [1.0], [10.0], [100.0]])
    assert torch.equal(out, expected)
    unused_last = net.route(images[:2], torch.tensor([1, 0]))  # the last expert gets nobody
    assert torch.equal(unused_last, images[:2].flatten(1) * torch.tensor([[10.0], [1.0]]))


def test_experts_of_different_precisions_are_gathered_in_the_wider_one():
    net = MRAFER([Scale(1.0, torch.bfloat16), Scale(1.0, torch.float32)])
    images = torch.tensor([[1.5, 2.5], [3.25, 4.125]]).view(2, 1, 1, 2)
    out = net.route(images, torch.tensor([0, 1]))
    assert out.dtype == torch.float32
    assert out[1].tolist() == [3.25, 4.125]  # not rounded through bfloat16


def test_an_empty_batch_and_a_wrong_routing_shape():
    net = MRAFER([Scale(1.0), Scale(2.0)])
    assert net(torch.zeros(0, 1, 1, 2), torch.zeros(0, 2, dtype=torch.long)).shape == (0, 2)
    with pytest.raises(ValueError, match=r"onehot must be \(3, 2\)"):
        net(torch.zeros(3, 1, 1, 2), torch.zeros(3, 3, dtype=torch.long))
    with pytest.raises(ValueError, match="at least one expert"):
        MRAFER([])
    with pytest.raises(ValueError, match=r"^gather needs at least one non-empty group$"):
        gather([None, None], [torch.tensor([], dtype=torch.long)] * 2, 0)
    with pytest.raises(ValueError, match="cover 1 rows, expected 2"):
        gather([torch.ones(1, 2)], [torch.tensor([0])], 2)


def test_expert_probabilities_are_every_experts_softmax_in_float32():
    net = MRAFER([Scale(1.0, torch.bfloat16), Scale(3.0)])
    images = torch.tensor([[0.5, -0.5], [1.0, 2.0], [0.0, 0.0]]).view(3, 1, 1, 2)
    probs = net.expert_probabilities(images)
    assert probs.shape == (2, 3, 2) and probs.dtype == torch.float32
    assert torch.allclose(probs[1], (images.flatten(1) * 3.0).softmax(1))
    low = images.flatten(1).to(torch.bfloat16)  # the bf16 expert's logits, softmaxed in float32
    assert torch.equal(probs[0], low.float().softmax(1))
    assert torch.allclose(probs.sum(2), torch.ones(2, 3))


def test_an_empty_groups_output_is_ignored_whatever_its_shape_or_dtype():
    """Gather: a group nobody was routed to may come with an empty output instead of None."""
    empty = torch.tensor([], dtype=torch.long)
    outputs = [torch.empty(0, dtype=torch.float64), torch.tensor([[1.0, 2.0], [3.0, 4.0]])]
    out = gather(outputs, [empty, torch.tensor([1, 0])], 2)
    assert out.dtype == torch.float32 and out.tolist() == [[3.0, 4.0], [1.0, 2.0]]

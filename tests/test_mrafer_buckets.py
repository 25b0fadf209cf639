"""MRAFER's routing in evaluation mode runs every expert on a few fixed batch sizes (issue 28, defect 5):
the data-dependent group sizes would make cudnn.benchmark time the algorithms again, and compile and CUDA
graphs specialise again, for every new size. The outputs are those of the unpadded groups."""

from __future__ import annotations

import re

import pytest
import torch
from torch import nn

from lrfer.engine.syncs import SyncCounter
from lrfer.models.mrafer import MRAFER, bucket_size

BUCKETS = {1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64, 96, 128}


class ShapeLog(nn.Module):
    """A small conv net with BatchNorm (random running statistics) that records its batch sizes."""

    def __init__(self, seed: int) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.net = nn.Sequential(
            nn.Conv2d(3, 4, 3),
            nn.BatchNorm2d(4),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
            nn.Linear(4, 5),
        )
        self.net[1].running_mean.uniform_(-1, 1)
        self.net[1].running_var.uniform_(0.5, 2)
        self.sizes: list[int] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.sizes.append(x.shape[0])
        return self.net(x)


def routed(n: int, k: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    images = torch.randn(n, 3, 6, 6, generator=g)
    return images, nn.functional.one_hot(torch.randint(k, (n,), generator=g), k)


def test_bucket_sizes_are_the_smallest_power_of_two_or_three_times_one_that_holds_the_group():
    assert [bucket_size(n) for n in range(1, 18)] == [1, 2, 3, 4, 6, 6, 8, 8, *[12] * 4, *[16] * 4, 24]
    assert {bucket_size(n) for n in range(1, 129)} == BUCKETS


def test_in_evaluation_every_expert_sees_only_the_fixed_sizes():
    experts = [ShapeLog(k) for k in range(3)]
    model = MRAFER(experts).eval()
    with torch.no_grad():
        for seed, n in enumerate([5, 7, 9, 13, 17, 29, 33, 50, 64, 100]):
            model(*routed(n, 3, seed))
    seen = {s for e in experts for s in e.sizes}
    assert seen <= BUCKETS, sorted(seen - BUCKETS)
    assert len(seen) <= 12


def test_bucketed_routing_gives_every_image_its_own_experts_output():
    """Against each image run alone through the expert its row selects (eval: no image affects another)."""
    experts = [ShapeLog(k) for k in range(3)]
    model = MRAFER(experts).eval()
    images, onehot = routed(23, 3, seed=1)
    with torch.no_grad():
        out = model(images, onehot)
        alone = torch.cat([experts[int(k)](images[i : i + 1]) for i, k in enumerate(onehot.argmax(1))])
    assert sorted({s for e in experts for s in e.sizes} - {1}) and out.shape == (23, 5)
    torch.testing.assert_close(out, alone, rtol=1e-5, atol=1e-6)


def test_in_training_every_expert_sees_its_group_unpadded():
    """BatchNorm's batch statistics must not see padding rows: group sizes as they are."""
    experts = [ShapeLog(k) for k in range(3)]
    images, onehot = routed(17, 3, seed=2)
    MRAFER(experts).train()(images, onehot)
    assert [e.sizes for e in experts] == [[int(c)] for c in onehot.sum(0)]


def test_routing_reads_the_group_sizes_on_the_host_once():
    """One host read per forward (the sizes of the K groups together), not one nonzero per group."""
    model = MRAFER([ShapeLog(k) for k in range(4)]).eval()
    images, onehot = routed(30, 4, seed=3)
    with torch.no_grad(), SyncCounter() as counter:
        model(images, onehot)
    assert sum(sum(c.values()) for c in counter.counts.values()) == 1, dict(counter.counts)


def test_an_empty_batch_is_answered_by_the_first_expert_even_when_there_is_only_one():
    """No group to route: the output is the first expert's, empty, with its class count and dtype."""
    for model in (MRAFER([ShapeLog(0)]).eval(), MRAFER([ShapeLog(0), ShapeLog(1)]).eval()):
        with torch.no_grad():
            out = model(torch.zeros(0, 3, 6, 6), torch.zeros(0, model.num_experts, dtype=torch.long))
        assert out.shape == (0, 5) and model.experts[0].sizes == [0]


def test_a_routing_row_that_is_not_one_hot_is_refused_even_when_the_group_sizes_add_up():
    """A row with two 1s and a row with none give group sizes that add up to the batch: still refused,
    instead of the empty row being sent to some expert."""
    model = MRAFER([ShapeLog(0), ShapeLog(1)]).eval()
    images = torch.zeros(2, 3, 6, 6)
    cases = [([[1, 1], [0, 0]], [1, 1]), ([[1, 0], [0, 0]], [1, 0]), ([[2, -1], [0, 1]], [2, 0])]
    for onehot, sizes in cases:
        message = f"every row of onehot must hold exactly one 1, got group sizes {sizes}"
        with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
            model(images, torch.tensor(onehot))

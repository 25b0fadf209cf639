"""GME-Net eq. 11: ``kd_reduction=paper``, ((1 - S_c) + (1 - S_s)) / 2 per block, summed over blocks."""

from __future__ import annotations

import glob
import math
from pathlib import Path

import pytest
import torch
from conftest import REPO, compose_cfg

from lrfer.methods.gmenet import attention_similarity_loss


def _maps(channel: list[float], spatial: list[list[float]]) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.tensor(channel).view(1, -1, 1, 1), torch.tensor(spatial).view(1, 1, 2, 2)


def test_paper_reduction_is_eq_11_summed_over_blocks_on_hand_made_maps():
    """Block 1: S_c = cos([1,0,0], [1,1,0]) = 1/sqrt 2, S_s = cos([1,2,3,4], [4,3,2,1]) = 20/30; block 2:
    S_c = cos([0,1,0], [0,2,0]) = 1, S_s = cos([1,0,0,0], [0,1,0,0]) = 0. Eq. 11 per block, then the sum."""
    students = [_maps([1, 0, 0], [[1, 2], [3, 4]]), _maps([0, 1, 0], [[1, 0], [0, 0]])]
    teachers = [_maps([1, 1, 0], [[4, 3], [2, 1]]), _maps([0, 2, 0], [[0, 1], [0, 0]])]
    block1 = ((1 - 1 / math.sqrt(2)) + (1 - 20 / 30)) / 2
    block2 = ((1 - 1.0) + (1 - 0.0)) / 2
    assert attention_similarity_loss(students, teachers, "paper").item() == pytest.approx(
        block1 + block2, abs=1e-6
    )
    # A-SKD's sum over the maps is twice that
    assert attention_similarity_loss(students, teachers, "sum").item() == pytest.approx(
        2 * (block1 + block2), abs=1e-6
    )


def test_paper_reduction_averages_over_the_batch():
    """Each map's 1 - cos is averaged over the samples before eq. 11 (two samples: distances 1 and 0)."""
    s = (torch.tensor([[1.0, 0.0], [1.0, 0.0]]).view(2, 2, 1, 1), torch.ones(2, 1, 2, 2))
    t = (torch.tensor([[0.0, 1.0], [1.0, 0.0]]).view(2, 2, 1, 1), torch.ones(2, 1, 2, 2))
    assert attention_similarity_loss([s], [t], "paper").item() == pytest.approx((0.5 + 0.0) / 2, abs=1e-6)


def test_every_gmenet_experiment_config_uses_eq_11():
    names = sorted(Path(p).stem for p in glob.glob(str(REPO / "configs/experiment/gmenet/*.yaml")))
    assert names, "no gmenet experiment configs found"
    for name in names:
        assert compose_cfg(f"experiment=gmenet/{name}").method.kd_reduction == "paper", name

"""Degradation labels, low-resolution views and their errors."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from lrfer.core.errors import UserError
from lrfer.data.degrade import degrade_uint8, parse_degradation, parse_degradations, resize_to


@pytest.mark.parametrize(
    "label,factor,size",
    [("x1", 1.0, None), ("x6", 6.0, None), ("X16", 16.0, None), ("x1.5", 1.5, None), ("14px", None, 14)],
)
def test_labels_parse(label, factor, size):
    d = parse_degradation(label)
    assert (d.factor, d.size) == (factor, size)


@pytest.mark.parametrize("label", ["x0", "x0.5", "0px", "foo", "x", "14", "-2px", ""])
def test_impossible_or_unreadable_labels_are_one_line_user_errors(label):
    with pytest.raises(UserError) as err:
        parse_degradation(label)
    assert "\n" not in str(err.value) and label.strip().lower() in str(err.value).lower()


def test_duplicate_and_empty_lists_are_refused():
    with pytest.raises(UserError):
        parse_degradations(["x2", "x2"])
    with pytest.raises(UserError):
        parse_degradations([])


@pytest.mark.parametrize("factor", [2, 3, 4, 6, 8, 16])
def test_output_side_is_ceil_of_side_over_factor(factor):
    images = torch.randint(0, 256, (2, 3, 100, 100), dtype=torch.uint8)
    out = degrade_uint8(images, parse_degradation(f"x{factor}"))
    assert out.shape[-2:] == (math.ceil(100 / factor),) * 2 and out.dtype == torch.uint8


FIXTURE = Path(__file__).parent / "fixtures" / "imresize_octave.npz"


@pytest.mark.parametrize("factor", [2, 3, 4, 6, 8])
def test_factor_views_are_matlabs_uint8_images(factor):
    """``x<factor>`` views of a batch equal MATLAB's ``imresize(I, 1/factor)`` on uint8 (the GNU Octave
    fixtures of tests/test_imresize.py), bit for bit, also when computed in several chunks."""
    with np.load(FIXTURE) as ref:
        face = torch.from_numpy(ref["input__rgb100"].transpose(2, 0, 1).copy())
        expected = torch.from_numpy(ref[f"matlab_uint8__rgb100_x{factor}"].transpose(2, 0, 1).copy())
    view = degrade_uint8(torch.stack([face] * 3), parse_degradation(f"x{factor}"), chunk=2)
    assert view.dtype == torch.uint8 and view.shape == (3, *expected.shape)
    assert all(torch.equal(v, expected) for v in view)


def test_factor_views_use_matlabs_grid_not_the_rounded_size():
    # x6 of 100 px samples every 6 px (MATLAB), not every 100 / 17 = 5.88 px (an imresize to 17x17)
    with np.load(FIXTURE) as ref:
        face = torch.from_numpy(ref["input__rgb100"].transpose(2, 0, 1).copy())
        expected = torch.from_numpy(ref["matlab_uint8__rgb100_x6"].transpose(2, 0, 1).copy())
    by_size = degrade_uint8(face[None], parse_degradation("17px"))[0]
    assert by_size.shape == expected.shape and not torch.equal(by_size, expected)


def test_absolute_size_and_too_large_size():
    images = torch.randint(0, 256, (1, 3, 100, 100), dtype=torch.uint8)
    assert degrade_uint8(images, parse_degradation("14px")).shape[-2:] == (14, 14)
    with pytest.raises(UserError, match="larger than the 100x100"):
        degrade_uint8(images, parse_degradation("120px"))


def test_x1_is_the_native_image():
    images = torch.randint(0, 256, (1, 3, 20, 20), dtype=torch.uint8)
    assert degrade_uint8(images, parse_degradation("x1")) is images


def test_resize_back_and_unknown_kernel():
    small = torch.rand(2, 3, 13, 13)
    assert resize_to(small, 100).shape == (2, 3, 100, 100)
    assert resize_to(small, 100, "bilinear").shape == (2, 3, 100, 100)
    with pytest.raises(UserError):
        resize_to(small, 100, "lanczos")

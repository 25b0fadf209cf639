"""Degradation labels, low-resolution views and their errors."""

from __future__ import annotations

import math

import pytest
import torch

from lrfer.data.degrade import degrade_uint8, parse_degradation, parse_degradations, resize_to
from lrfer.data.imresize import imresize_uint8
from lrfer.errors import UserError


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


def test_factor_views_use_matlabs_grid_not_the_rounded_size():
    images = torch.randint(0, 256, (2, 3, 100, 100), dtype=torch.uint8)
    by_factor = degrade_uint8(images, parse_degradation("x6"))
    assert torch.equal(by_factor, imresize_uint8(images, scale=1 / 6))
    assert not torch.equal(by_factor, imresize_uint8(images, size=(17, 17)))


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

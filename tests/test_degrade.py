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


@pytest.mark.parametrize(
    ("label", "shape", "expected"),
    [
        ("x4", (37, 53), (10, 14)),
        ("x1.5", (100, 100), (67, 67)),
        ("x3", (99, 100), (33, 34)),
        ("14px", (28, 56), (14, 28)),
        ("14px", (56, 28), (28, 14)),
        ("28px", (28, 56), (28, 56)),
        ("20px", (30, 45), (20, 30)),
    ],
)
def test_the_low_resolution_size_of_factors_and_sizes_on_any_image(label, shape, expected):
    """x<f>: ceil(side / f) per side; <s>px: the shorter side becomes s, the other keeps the aspect."""
    deg = parse_degradation(label)
    assert deg.output_size(*shape) == expected
    images = torch.randint(0, 256, (2, 3, *shape), dtype=torch.uint8)
    assert degrade_uint8(images, deg).shape == (2, 3, *expected)


def test_a_size_above_the_shorter_side_is_refused_saying_the_largest_possible():
    with pytest.raises(UserError, match="at most 28px"):
        parse_degradation("29px").output_size(28, 56)


@pytest.mark.parametrize(("label", "factor"), [("x4", 4.0), ("x1", 1.0), ("25px", 4.0), ("14px", 100 / 14)])
def test_the_effective_factor_is_relative_to_the_native_side(label, factor):
    assert parse_degradation(label).effective_factor(100) == pytest.approx(factor)


@pytest.mark.parametrize(
    ("label", "canonical"),
    [("x4.0", "x4"), (" X2 ", "x2"), ("x1.50", "x1.5"), ("014px", "14px"), ("x1", "x1")],
)
def test_labels_are_written_in_one_canonical_form(label, canonical):
    assert parse_degradation(label).label == canonical


def test_the_smallest_factor_is_one():
    assert parse_degradation("x1").factor == 1.0
    with pytest.raises(UserError, match=">= 1"):
        parse_degradation("x0.99")


def test_views_follow_the_kernel_and_antialias_settings():
    from lrfer.data.imresize import imresize_uint8

    images = torch.randint(
        0, 256, (3, 3, 40, 40), dtype=torch.uint8, generator=torch.Generator().manual_seed(0)
    )
    x4 = parse_degradation("x4")
    for kernel in ("bicubic", "bilinear"):
        for antialias in (True, False):
            view = degrade_uint8(images, x4, kernel=kernel, antialias=antialias, chunk=2)
            assert torch.equal(view, imresize_uint8(images, scale=0.25, kernel=kernel, antialias=antialias))
    sized = degrade_uint8(images, parse_degradation("14px"), kernel="bilinear")
    assert torch.equal(sized, imresize_uint8(images, size=(14, 14), kernel="bilinear"))
    with pytest.raises(UserError, match="unknown degradation kernel"):
        degrade_uint8(images, x4, kernel="lanczos")


def test_an_empty_split_has_an_empty_view_of_the_low_resolution_size():
    empty = torch.zeros(0, 3, 40, 40, dtype=torch.uint8)
    assert degrade_uint8(empty, parse_degradation("x3")).shape == (0, 3, 14, 14)


def test_resize_back_is_matlab_bicubic_to_the_given_size_and_nearest_on_request():
    from lrfer.data.imresize import imresize

    small = torch.rand(2, 3, 13, 13, generator=torch.Generator().manual_seed(0))
    assert torch.equal(resize_to(small, 40), imresize(small, size=(40, 40), kernel="bicubic"))
    assert torch.equal(resize_to(small, 40, "bilinear"), imresize(small, size=(40, 40), kernel="bilinear"))
    centres = ((torch.arange(20) + 0.5) * 13 / 20).floor().long()  # the nearest pixel centre
    assert torch.equal(resize_to(small, 20, "nearest"), small[..., centres, :][..., centres])
    assert resize_to(small, 13) is small


@pytest.mark.parametrize("images", [torch.zeros(1, 3, 8, 8), torch.zeros(3, 8, 8, dtype=torch.uint8)])
def test_views_are_made_of_uint8_batches_only(images):
    with pytest.raises(ValueError, match=r"degrade_uint8 expects uint8 images of shape \(N, C, H, W\)"):
        degrade_uint8(images, parse_degradation("x2"))


@pytest.mark.parametrize("device", ["cpu", "cpu:0"], ids=["same", "other"])
def test_a_view_computed_on_a_named_device_is_the_same_view_kept_beside_the_images(device):
    """``cpu:0`` is not the images' ``cpu`` device: it takes the path of host images resized on a GPU a
    chunk at a time (the view filled in place, kept on the host)."""
    images = torch.randint(
        0, 256, (5, 3, 24, 24), dtype=torch.uint8, generator=torch.Generator().manual_seed(0)
    )
    deg = parse_degradation("x3+noise4")
    view = degrade_uint8(images, deg, device=torch.device(device), chunk=2)
    assert torch.equal(view, degrade_uint8(images, deg)) and view.device == images.device

"""Realistic degradations after the resize: x4+blur1.5, x4+noise8, x4+jpeg30 and chains of them."""

from __future__ import annotations

import io
import math

import numpy as np
import pytest
import torch
from conftest import compose_cfg
from PIL import Image

from lrfer.core.degradation import (
    apply_operations,
    gaussian_blur_uint8,
    gaussian_noise_uint8,
    hashed_normal,
    jpeg_uint8,
)
from lrfer.core.errors import UserError
from lrfer.data.degrade import degrade_uint8, parse_degradation, parse_degradations
from lrfer.report.tables import degradation_sort_key


def _faces(n: int = 6, size: int = 32, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    smooth = torch.rand(n, 3, size // 4, size // 4, generator=gen)
    big = torch.nn.functional.interpolate(smooth, size=(size, size), mode="bilinear", align_corners=False)
    return (big * 255).round().to(torch.uint8)


def test_labels_chain_operations_after_the_size_in_canonical_form():
    deg = parse_degradation("12PX+Blur1.0+jpeg40")
    assert deg.label == "12px+blur1+jpeg40" and deg.size == 12
    assert [(op.name, op.value) for op in deg.operations] == [("blur", 1.0), ("jpeg", 40.0)]
    assert parse_degradation("x4").operations == ()


@pytest.mark.parametrize("label", ["x4+", "x4+sharpen2", "x4+jpeg0", "x4+jpeg30.5", "x4+noise-1", "x4+blurx"])
def test_bad_operations_stop_with_one_line(label):
    with pytest.raises(UserError) as err:
        parse_degradation(label)
    assert "\n" not in str(err.value) and label.split("+")[0] in str(err.value)


def test_the_same_label_written_twice_is_refused():
    with pytest.raises(UserError, match="twice"):
        parse_degradations(["x4+jpeg30", "x4+JPEG30"])


def test_operations_keep_shape_and_dtype_and_differ_from_plain_resize():
    images = _faces()
    plain = degrade_uint8(images, parse_degradation("x4"))
    for label in ("x4+blur1.5", "x4+noise8", "x4+jpeg30", "x4+blur1+noise4+jpeg40"):
        view = degrade_uint8(images, parse_degradation(label))
        assert view.shape == plain.shape and view.dtype == torch.uint8
        assert not torch.equal(view, plain), label


def test_x1_with_an_operation_is_applied_to_the_native_image():
    images = _faces()
    assert not torch.equal(degrade_uint8(images, parse_degradation("x1+noise8")), images)


def test_noise_is_a_function_of_seed_and_sample_index_only():
    images = _faces(n=10)
    deg = parse_degradation("x2+noise8")
    whole = degrade_uint8(images, deg, seed=3)
    chunked = degrade_uint8(images, deg, seed=3, chunk=3)
    assert torch.equal(whole, chunked)
    assert torch.equal(whole, degrade_uint8(images, deg, seed=3))
    assert not torch.equal(whole, degrade_uint8(images, deg, seed=4))
    same_faces = images[:1].expand(4, -1, -1, -1).contiguous()
    noisy = gaussian_noise_uint8(same_faces, 8.0, seed=0)
    assert not torch.equal(noisy[0], noisy[1])  # every sample draws its own noise


def test_hashed_normal_has_unit_variance_and_zero_mean():
    draws = hashed_normal(0, torch.arange(64), 4096).double()
    assert abs(draws.mean().item()) < 0.01 and abs(draws.std().item() - 1.0) < 0.01
    assert abs(torch.corrcoef(torch.stack([draws[:, :-1].flatten(), draws[:, 1:].flatten()]))[0, 1]) < 0.01


def test_noise_sigma_is_in_grey_levels():
    flat = torch.full((8, 3, 32, 32), 128, dtype=torch.uint8)
    noisy = gaussian_noise_uint8(flat, 8.0, seed=0).double()
    assert noisy.std().item() == pytest.approx(8.0, rel=0.05)
    assert noisy.mean().item() == pytest.approx(128.0, abs=0.2)


def test_blur_preserves_flat_images_and_smooths_an_edge():
    flat = torch.full((1, 1, 16, 16), 77, dtype=torch.uint8)
    assert torch.equal(gaussian_blur_uint8(flat, 1.5), flat)
    edge = torch.zeros(1, 1, 16, 16, dtype=torch.uint8)
    edge[..., 8:] = 255
    row = gaussian_blur_uint8(edge, 1.0)[0, 0, 0].int()
    assert 0 < row[7] < 128 < row[8] < 255 and row[0] == 0 and row[-1] == 255


def test_jpeg_matches_a_pillow_round_trip():
    images = _faces(n=3, size=24)
    got = jpeg_uint8(images, 30)
    for k in range(3):
        buffer = io.BytesIO()
        Image.fromarray(images[k].permute(1, 2, 0).numpy()).save(buffer, format="JPEG", quality=30)
        expected = np.asarray(Image.open(io.BytesIO(buffer.getvalue())).convert("RGB"))
        assert np.array_equal(got[k].permute(1, 2, 0).numpy(), expected)


def test_lower_jpeg_quality_loses_more():
    images = _faces(n=4, size=32)
    err = {q: (jpeg_uint8(images, q).float() - images.float()).abs().mean().item() for q in (10, 50, 95)}
    assert err[10] > err[50] > err[95]


def test_report_columns_put_a_realistic_variant_after_its_plain_size():
    labels = ["x4+jpeg30", "x8", "x4", "14px", "x1", "x4+blur1.5"]
    assert sorted(labels, key=degradation_sort_key) == ["x1", "x4", "x4+blur1.5", "x4+jpeg30", "x8", "14px"]


def test_an_operation_is_one_registry_entry_that_works_wherever_a_label_does(monkeypatch):
    """Registering ``+invert`` here, and nothing else, makes it parse, validate, describe and degrade."""
    from lrfer.config.validate import validate_config
    from lrfer.core import degradation as realistic

    monkeypatch.setattr(realistic, "OPERATIONS", dict(realistic.OPERATIONS))  # the toy leaves with the test

    def invert(images, strength, seed, first_index):
        return (images.float() + strength * (255 - 2 * images.float())).round().clamp(0, 255).to(torch.uint8)

    realistic.register_operation(
        realistic.OperationKind("invert", "share", "share of the grey-level inversion", 0.0, 1.0, invert)
    )
    deg = parse_degradation("X2+Invert1")
    assert deg.label == "x2+invert1" and deg.operations[0].name == "invert"
    images = _faces()
    assert torch.equal(degrade_uint8(images, deg), 255 - degrade_uint8(images, parse_degradation("x2")))
    with pytest.raises(UserError, match=r"invert takes a number from 0 to 1 \(share of the grey-level"):
        parse_degradation("x2+invert3")
    with pytest.raises(UserError, match=r"\+invert<share>"):
        parse_degradation("x2+sharpen1")
    validate_config(compose_cfg("degrade.test=[x1,x2+invert0.5]"), warn=False)


@pytest.mark.parametrize(
    "label", ["x4+blur0", "x4+blur20", "x4+noise0", "x4+noise255", "x4+jpeg1", "x4+jpeg100"]
)
def test_every_operation_accepts_the_ends_of_its_range(label):
    assert parse_degradation(label).label == label


@pytest.mark.parametrize("label", ["x4+blur20.5", "x4+blur-0.5", "x4+noise255.5", "x4+jpeg101", "x4+jpeg-5"])
def test_values_beyond_an_operation_s_range_are_refused(label):
    with pytest.raises(UserError, match="takes a"):
        parse_degradation(label)


def test_operations_apply_in_the_order_written():
    images = _faces(n=3)
    small = degrade_uint8(images, parse_degradation("x2"))
    blur_then_jpeg = degrade_uint8(images, parse_degradation("x2+blur1+jpeg40"))
    jpeg_then_blur = degrade_uint8(images, parse_degradation("x2+jpeg40+blur1"))
    assert torch.equal(blur_then_jpeg, jpeg_uint8(gaussian_blur_uint8(small, 1.0), 40))
    assert torch.equal(jpeg_then_blur, gaussian_blur_uint8(jpeg_uint8(small, 40), 1.0))
    assert not torch.equal(blur_then_jpeg, jpeg_then_blur)


@pytest.mark.parametrize(("sigma", "size"), [(1.5, 16), (0.4, 9), (2.0, 4)])
def test_blur_is_a_gaussian_of_sigma_in_pixels_with_mirrored_borders(sigma, size):
    """Truncated at ceil(3 sigma) (at most the image side - 1), borders mirrored about the edge pixel
    (scipy's ``mirror``), rounded to the nearest grey level."""
    from scipy.ndimage import gaussian_filter

    images = torch.randint(
        0, 256, (2, 3, size, size), dtype=torch.uint8, generator=torch.Generator().manual_seed(1)
    )
    radius = min(max(1, math.ceil(3 * sigma)), size - 1)
    expected = gaussian_filter(
        images.double().numpy(), sigma=(0, 0, sigma, sigma), mode="mirror", truncate=radius / sigma
    )
    got = gaussian_blur_uint8(images, sigma).double().numpy()
    diff = np.abs(got - np.clip(np.round(expected), 0, 255))
    assert diff.max() <= 1 and (diff > 0).mean() < 0.005  # float32 against float64: a rare tie rounds apart


def test_blur_of_sigma_zero_is_the_image():
    images = _faces(n=2)
    assert torch.equal(degrade_uint8(images, parse_degradation("x1+blur0")), images)


def test_noise_is_clipped_at_black_and_white_not_wrapped():
    black = torch.zeros(4, 3, 16, 16, dtype=torch.uint8)
    white = torch.full((4, 3, 16, 16), 255, dtype=torch.uint8)
    dark, bright = gaussian_noise_uint8(black, 20.0, seed=0), gaussian_noise_uint8(white, 20.0, seed=0)
    assert dark.max() < 128 and bright.min() > 127
    assert (dark == 0).float().mean() == pytest.approx(0.5, abs=0.05)  # half the draws are negative
    assert (bright == 255).float().mean() == pytest.approx(0.5, abs=0.05)


def test_noise_rounds_to_the_nearest_grey_level():
    flat = torch.full((4, 3, 16, 16), 100, dtype=torch.uint8)
    noisy = gaussian_noise_uint8(flat, 0.3, seed=0)
    assert (noisy == 100).float().mean() > 0.85  # |N(0, 0.3)| < 0.5 for 90 % of the draws
    assert set(noisy.unique().tolist()) <= {99, 100, 101}


def test_noise_of_a_sample_depends_on_its_index_in_the_split_not_on_its_batch():
    images = _faces(n=8)
    whole = gaussian_noise_uint8(images, 8.0, seed=2)
    assert torch.equal(gaussian_noise_uint8(images[5:], 8.0, seed=2, first_index=5), whole[5:])
    assert not torch.equal(gaussian_noise_uint8(images[5:], 8.0, seed=2), whole[5:])


def test_jpeg_of_grey_images_uses_the_grey_codec():
    grey = _faces(n=2, size=24)[:, :1].contiguous()
    got = jpeg_uint8(grey, 20)
    assert got.shape == grey.shape
    for k in range(2):
        buffer = io.BytesIO()
        Image.fromarray(grey[k, 0].numpy()).save(buffer, format="JPEG", quality=20)
        expected = np.asarray(Image.open(io.BytesIO(buffer.getvalue())).convert("L"))
        assert np.array_equal(got[k, 0].numpy(), expected)


@pytest.mark.parametrize("label", ["x2+noise8", "x2+blur1", "x2+jpeg30", "x1+noise4"])
def test_an_empty_split_has_an_empty_realistic_view(label):
    empty = torch.zeros(0, 3, 16, 16, dtype=torch.uint8)
    deg = parse_degradation(label)
    assert degrade_uint8(empty, deg).shape == (0, 3, *deg.output_size(16, 16))
    assert apply_operations(empty, deg.operations, seed=1).shape == (0, 3, 16, 16)  # called directly too


def test_the_noise_stream_is_the_one_the_committed_results_were_made_with():
    """Realistic views are recomputed in every run, never stored: a changed hash (a constant, a shift)
    would still be deterministic but would silently change every committed ``+noise`` result."""
    flat = torch.full((2, 1, 2, 4), 128, dtype=torch.uint8)
    assert gaussian_noise_uint8(flat, 20.0, seed=0, first_index=5).flatten().tolist() == [
        160, 94, 81, 110, 100, 124, 145, 129, 114, 134, 121, 123, 144, 111, 125, 134,
    ]  # fmt: skip
    assert gaussian_noise_uint8(flat, 20.0, seed=7, first_index=5).flatten().tolist() == [
        154, 158, 148, 125, 145, 123, 134, 106, 129, 97, 106, 115, 119, 133, 138, 138,
    ]  # fmt: skip


def test_blur_works_down_to_two_pixel_faces():
    tiny = torch.tensor([[[[0, 255], [255, 0]]]], dtype=torch.uint8)
    blurred = gaussian_blur_uint8(tiny, 1.0)
    assert 0 < int(blurred.min()) <= int(blurred.max()) < 255
    one = torch.full((1, 1, 1, 5), 9, dtype=torch.uint8)
    assert torch.equal(gaussian_blur_uint8(one, 1.0), one)  # a side of 1 pixel: nothing to blur against

"""Realistic degradations after the resize: x4+blur1.5, x4+noise8, x4+jpeg30 and chains of them."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from conftest import compose_cfg
from PIL import Image

from lrfer.core.degradation import gaussian_blur_uint8, gaussian_noise_uint8, hashed_normal, jpeg_uint8
from lrfer.data.degrade import degrade_uint8, parse_degradation, parse_degradations
from lrfer.errors import UserError
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

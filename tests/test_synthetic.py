"""Tests of the procedurally drawn synthetic face-expression dataset."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
from conftest import compose_cfg

from lrfer.config.validate import validate_config
from lrfer.core.errors import UserError
from lrfer.data.datasets.synthetic import SyntheticFaces
from lrfer.data.synthetic import (
    COARSE_PARTNER,
    CUE_TABLE,
    EDGE_SOFTNESS_PX,
    EXPRESSIONS,
    MOUTH_KEYS,
    NEUTRAL_EXPRESSION,
    SyntheticDifficulty,
    _Canvas,
    _draw_parameters,
    make_synthetic_faces,
)

# Everything but the expression held fixed: no pose, lighting, clutter, noise or identity variation,
# every face at full expression intensity.
_CONTROLLED = SyntheticDifficulty(
    max_rotation_deg=0.0,
    max_translation=0.0,
    min_scale=1.0,
    max_scale=1.0,
    min_ambient=1.0,
    max_ambient=1.0,
    light_gradient=0.0,
    color_cast=0.0,
    background_blobs=0,
    clutter_contrast=0.0,
    noise_std=0.0,
    identity_variation=0.0,
    min_cue_strength=1.0,
    cue_jitter=0.0,
    coarse_swap=0.0,
    max_edge_softness_px=1.0,
)


def _class_faces(expressions) -> dict[str, torch.Tensor]:
    """The mean face interior (eyes to mouth) of each class, by the expression the class is named."""
    images, labels = make_synthetic_faces(
        14, image_size=64, seed=3, difficulty=_CONTROLLED, expressions=expressions
    )
    face = images[:, :, 14:48, 22:42].float()
    return {name: face[labels == c].mean(0) for c, name in enumerate(expressions)}


def test_a_class_shows_the_expression_it_is_named():
    """The classes' names choose their faces: in any order, a class named "fear" shows fear."""
    usual, reversed_ = _class_faces(EXPRESSIONS), _class_faces(EXPRESSIONS[::-1])
    for name in EXPRESSIONS:
        assert (usual[name] - reversed_[name]).abs().max() <= 1, name


def test_the_synthetic_dataset_draws_the_classes_its_config_names(tmp_path):
    """dataset.class_names is the one list of the synthetic classes: the adapter draws and names them."""
    names = list(EXPRESSIONS[::-1])
    cfg = compose_cfg(f"dataset.class_names=[{','.join(names)}]", "dataset.image_size=32").dataset
    cfg.num_train, cfg.num_val, cfg.num_test = 14, 0, 7
    data = SyntheticFaces(cfg).load()
    assert data.class_names == names
    images, labels = make_synthetic_faces(14, image_size=32, seed=cfg.seed * 1000, expressions=names)
    assert torch.equal(data.splits["train"].images, images) and torch.equal(
        data.splits["train"].labels, labels
    )


def test_a_synthetic_class_the_generator_cannot_draw_is_refused_at_start_up():
    cfg = compose_cfg("dataset.class_names=[surprise,fear,disgust,happiness,sadness,anger,contempt]")
    with pytest.raises(UserError, match=r"dataset\.class_names=.*the synthetic faces show surprise, fear"):
        validate_config(cfg)


@pytest.mark.parametrize("size", [32, 48, 100, 256])
def test_shapes_and_dtypes(size):
    n = 9 if size < 256 else 3
    images, labels = make_synthetic_faces(n, image_size=size, seed=0)
    assert images.shape == (n, 3, size, size) and images.dtype == torch.uint8
    assert labels.shape == (n,) and labels.dtype == torch.int64
    assert int(labels.min()) >= 0 and int(labels.max()) < len(EXPRESSIONS)
    # A real picture, not a blank or saturated one.
    assert 30 < images.float().mean() < 225 and images.float().std() > 20


def test_deterministic_for_a_seed():
    a_images, a_labels = make_synthetic_faces(30, image_size=40, seed=7)
    b_images, b_labels = make_synthetic_faces(30, image_size=40, seed=7)
    assert torch.equal(a_images, b_images) and torch.equal(a_labels, b_labels)
    c_images, _ = make_synthetic_faces(30, image_size=40, seed=8)
    assert not torch.equal(a_images, c_images)
    assert (a_images.float() - c_images.float()).abs().mean() > 10


def test_classes_are_balanced():
    _, labels = make_synthetic_faces(70, image_size=32, seed=1)
    assert torch.bincount(labels, minlength=7).tolist() == [10] * 7
    _, labels = make_synthetic_faces(23, image_size=32, num_classes=5, seed=1)
    counts = torch.bincount(labels, minlength=5)
    assert int(labels.max()) < 5 and int(counts.max() - counts.min()) <= 1 and int(counts.sum()) == 23


def test_each_class_draws_a_different_face():
    images, labels = make_synthetic_faces(14, image_size=64, seed=3, difficulty=_CONTROLLED)
    # The face's interior (eyes to mouth), away from the randomly coloured background.
    face = images[:, :, 14:48, 22:42].float()
    mean = torch.stack([face[labels == c].mean(0) for c in range(7)])
    for c in range(7):
        same = face[labels == c]
        assert (same[0] - same[1]).abs().max() <= 1  # nothing but the expression varies
    for a in range(7):
        for b in range(a + 1, 7):
            diff = (mean[a] - mean[b]).abs()
            assert diff.max() > 60, (EXPRESSIONS[a], EXPRESSIONS[b])


def test_fewer_classes_take_the_first_ones():
    _, labels = make_synthetic_faces(12, image_size=32, num_classes=3, seed=0)
    assert set(labels.tolist()) == {0, 1, 2}


def test_bad_arguments():
    with pytest.raises(ValueError, match="num_classes"):
        make_synthetic_faces(10, num_classes=8)
    with pytest.raises(ValueError, match="num_classes"):
        make_synthetic_faces(10, num_classes=0)
    with pytest.raises(ValueError, match="image_size"):
        make_synthetic_faces(10, image_size=4)
    with pytest.raises(ValueError, match="expressions must name each of surprise"):
        make_synthetic_faces(10, expressions=EXPRESSIONS[:6])
    with pytest.raises(ValueError):
        SyntheticDifficulty(min_scale=1.2, max_scale=1.0)
    images, labels = make_synthetic_faces(0, image_size=32)
    assert images.shape == (0, 3, 32, 32) and labels.shape == (0,)


@pytest.mark.parametrize("swap", [0.0, 1.0])
def test_a_swapped_face_shows_its_partners_mouth_and_keeps_its_own_fine_cues(swap):
    labels = torch.arange(len(EXPRESSIONS))
    difficulty = replace(_CONTROLLED, coarse_swap=swap)
    p = _draw_parameters(labels, EXPRESSIONS, difficulty, torch.Generator().manual_seed(0))
    for c, name in enumerate(EXPRESSIONS):
        mouth_of = COARSE_PARTNER[name] if swap else name
        for key in MOUTH_KEYS:
            expected = CUE_TABLE[mouth_of].get(key, NEUTRAL_EXPRESSION[key])
            assert float(p[key][c]) == pytest.approx(expected), (name, key)
        for key in ("brow_raise", "brow_tilt", "eye_open"):
            assert float(p[key][c]) == pytest.approx(CUE_TABLE[name].get(key, NEUTRAL_EXPRESSION[key]))


def test_every_partner_is_a_class_and_every_class_has_its_own_mouth():
    assert set(COARSE_PARTNER) == set(EXPRESSIONS) and set(COARSE_PARTNER.values()) <= set(EXPRESSIONS)
    mouths = {tuple(CUE_TABLE[c].get(k, NEUTRAL_EXPRESSION[k]) for k in MOUTH_KEYS) for c in EXPRESSIONS}
    assert len(mouths) == len(EXPRESSIONS)


def test_edge_softness_scales_with_the_image_side_and_never_drops_below_one_pixel():
    def ramp_per_side(size: int, softness_px: float) -> float:
        """Width of an edge's anti-aliasing ramp as a fraction of the image side."""
        one = torch.ones(1)
        p = {"angle": 0 * one, "scale": one, "tx": 0 * one, "ty": 0 * one, "softness": softness_px * one}
        canvas = _Canvas(torch.zeros(3, 1, size, size), p)
        return 1.0 / float(canvas.inv_px.flatten()[0]) / 2.0  # u units per ramp / u units per side (2)

    # given at 100 px: as soft relative to the face at 64 px (no sharper, no blurrier)
    assert ramp_per_side(64, 8.0) == pytest.approx(ramp_per_side(100, 8.0))
    # the sharpest faces: 1 px at 100 px would be 0.64 px at 64 px; it stays one pixel
    assert ramp_per_side(64, EDGE_SOFTNESS_PX) * 64 == pytest.approx(
        ramp_per_side(100, EDGE_SOFTNESS_PX) * 100
    )

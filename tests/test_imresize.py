"""lrfer.data.imresize against GNU Octave's imresize (fixtures from scripts/make_imresize_fixtures.py).

Reference keys (see the script's docstring): ``double__*`` is Octave on double input, ``uint8__*`` Octave on
uint8 input (rounded once, at the end), ``matlab_uint8__*`` MATLAB's uint8 behaviour rebuilt in Octave
from two 1-D uint8 passes (rounded and clamped between the passes, as MATLAB's imresizemex does).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from lrfer.data.imresize import _weight_matrix, imresize, imresize_uint8, output_size

FIXTURE = Path(__file__).parent / "fixtures" / "imresize_octave.npz"
FACTORS = (2, 3, 4, 6, 8)
IMAGES = ("rgb100", "grey37x53")
#: float64 input agrees with Octave's double result to rounding error (measured at most 4e-15 relative); a
#: sampling grid computed in float32 (an ``arange`` without its dtype) is 7e-7 off when enlarging
DOUBLE = 1e-12


@pytest.fixture(scope="module")
def ref() -> dict[str, np.ndarray]:
    # Missing fixtures are an error, not a skip: regenerate with scripts/make_imresize_fixtures.py.
    assert FIXTURE.is_file(), (
        f"{FIXTURE} is missing: run python scripts/make_imresize_fixtures.py (needs Octave)"
    )
    with np.load(FIXTURE) as data:
        return {k: data[k] for k in data.files}


def _chw(a: np.ndarray) -> np.ndarray:
    """MATLAB layout (H, W[, C]) -> torch layout ((C,) H, W)."""
    return a.transpose(2, 0, 1) if a.ndim == 3 else a


def _input(ref, image: str) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(_chw(ref[f"input__{image}"])))


def _expected(ref, kind: str, case: str) -> np.ndarray:
    return np.ascontiguousarray(_chw(ref[f"{kind}__{case}"]))


def _case(ref, case: str) -> tuple[str, dict, str]:
    i = list(ref["case_names"]).index(case)
    arg = str(ref["case_arg"][i])
    if arg.startswith("1/"):
        kwargs = {"scale": 1 / int(arg[2:])}
    else:
        kwargs = {"size": tuple(int(v) for v in arg.strip("[]").split())}
    return str(ref["case_image"][i]), kwargs, str(ref["case_method"][i])


def _rel(actual: np.ndarray, expected: np.ndarray) -> float:
    return float(np.abs(actual - expected).max() / np.abs(expected).max())


def _uint8_diff(actual: torch.Tensor, expected: np.ndarray) -> np.ndarray:
    return np.abs(actual.numpy().astype(np.int64) - expected.astype(np.int64))


def test_fixture_metadata(ref):
    versions = list(ref["versions"])
    assert versions[0].startswith("octave ") and versions[1].startswith("image ")
    major, minor = (int(v) for v in versions[1].split()[1].split(".")[:2])
    assert (major, minor) >= (2, 14), "image < 2.14 has no MATLAB-compatible (antialiased) imresize"
    for name in ref["case_names"]:
        for kind in ("double", "uint8", "matlab_uint8"):
            assert f"{kind}__{name}" in ref


@pytest.mark.parametrize("factor", FACTORS)
@pytest.mark.parametrize("image", IMAGES)
def test_output_shapes_are_ceil(ref, image, factor):
    x = _input(ref, image)
    h, w = x.shape[-2:]
    expected = (math.ceil(h / factor), math.ceil(w / factor))
    assert output_size(h, w, scale=1 / factor) == expected
    assert tuple(imresize(x.double(), scale=1 / factor).shape[-2:]) == expected
    assert tuple(imresize_uint8(x, scale=1 / factor).shape[-2:]) == expected
    assert _expected(ref, "double", f"{image}_x{factor}").shape[-2:] == expected


def test_output_shapes_known_values():
    assert output_size(100, 100, scale=1 / 6) == (17, 17)
    assert output_size(100, 100, scale=1 / 8) == (13, 13)
    assert output_size(100, 100, scale=1 / 3) == (34, 34)
    assert output_size(17, 17, scale=2.0) == (34, 34)
    assert output_size(37, 53, size=(20, 30)) == (20, 30)
    assert output_size(37, 53, size=14) == (14, 14)


@pytest.mark.parametrize("factor", FACTORS)
@pytest.mark.parametrize("image", IMAGES)
def test_double_matches_octave(ref, image, factor):
    case = f"{image}_x{factor}"
    out = imresize(_input(ref, image).double(), scale=1 / factor)
    assert out.dtype == torch.float64
    assert _rel(out.numpy(), _expected(ref, "double", case)) < DOUBLE


CASES = (
    *(f"{image}_x{factor}" for image in IMAGES for factor in FACTORS),
    "rgb100_14px",
    "grey37x53_20x30",
    "grey17_up100",
    "rgb100_x4_bilinear",
    "rgb100_x6_bilinear",
)
# MATLAB renormalises every output pixel's weights to sum 1; Octave does not, which changes non-integer
# shrinks (100 -> 14 px, 37x53 -> 20x30) by a grey level or two. These cases are checked with Octave's
# weights plugged into our code, so that the rest of the arithmetic (passes, rounding, clamping) must match.
OCTAVE_WEIGHTS = ("rgb100_14px", "grey37x53_20x30")
# Octave computes uint8 input in single precision, so a value on a half-way point (exactly, or within
# single-precision error of it) may land on either side. These fixtures hold such ties; the tests below
# allow a difference only at the ties and check that every other pixel matches exactly.
TIED = {("matlab_uint8", "rgb100_x6_bilinear"), ("uint8", "grey17_up100")}


def _octave_weights(monkeypatch) -> None:
    """Make lrfer's imresize use Octave's unnormalised weights (the module-level caches are bypassed)."""
    import lrfer.data.imresize as mod

    def unnormalised(in_len, out_len, scale, kernel, antialias, device, dtype):
        weights = mod._weight_matrix(in_len, out_len, scale, kernel, antialias, normalize=False)
        return weights.to(device=device, dtype=dtype)

    monkeypatch.setattr(mod, "_device_weights", unnormalised)


@pytest.mark.parametrize(
    ("kind", "case"), [(k, c) for c in CASES for k in ("matlab_uint8", "uint8") if (k, c) not in TIED]
)
def test_uint8_is_bit_exact_on_every_fixture(ref, kind, case, monkeypatch):
    """Bit for bit. ``matlab_uint8``: the default (rounded between the passes, like MATLAB's imresizemex);
    ``uint8``: ``round_intermediate=False`` (rounded once, like Octave). Halves round up: floor(x + 0.5)."""
    if case in OCTAVE_WEIGHTS:
        _octave_weights(monkeypatch)
    image, kwargs, method = _case(ref, case)
    out = imresize_uint8(
        _input(ref, image), kernel=method, round_intermediate=kind == "matlab_uint8", **kwargs
    )
    assert out.dtype == torch.uint8
    assert _uint8_diff(out, _expected(ref, kind, case)).max() == 0


def test_uint8_renormalised_weights_differ_from_octave_on_non_integer_shrinks(ref):
    # Why OCTAVE_WEIGHTS exists: with MATLAB's (renormalised) weights the result is off by 1-2 grey levels.
    image, kwargs, _ = _case(ref, "grey37x53_20x30")
    diff = _uint8_diff(
        imresize_uint8(_input(ref, image), **kwargs), _expected(ref, "matlab_uint8", "grey37x53_20x30")
    )
    assert 0 < diff.max() <= 2


def test_uint8_differs_only_at_single_precision_ties(ref):
    # Octave mode, enlarging 17 -> 100: the one differing pixel is a half-way value (x.5 within 1e-4).
    image, kwargs, method = _case(ref, "grey17_up100")
    x = _input(ref, image)
    exact = imresize(x.double(), kernel=method, **kwargs).numpy()
    out = imresize_uint8(x, kernel=method, round_intermediate=False, **kwargs)
    diff = _uint8_diff(out, _expected(ref, "uint8", "grey17_up100"))
    tie = np.abs(exact - np.floor(exact) - 0.5) < 1e-4
    assert diff[~tie].max() == 0 and diff.max() <= 1 and tie.sum() <= 3  # 3 of 10,000 pixels

    # MATLAB mode, bilinear x6: both passes give exact half-way values (weights are multiples of 1/72),
    # which Octave's single precision breaks either way. Every output pixel that no tie reaches (a tie of
    # the second pass, or a tie of the first pass inside its kernel) must match exactly.
    x = _input(ref, "rgb100").double()
    w = _weight_matrix(100, 17, 1 / 6, "bilinear", True)
    first = (w @ x).clamp(0, 255)
    second = torch.floor(first + 0.5) @ w.T
    first_tie = (first - torch.floor(first) - 0.5).abs() < 1e-6
    reached = ((first_tie.double() @ (w.T > 0).double()) > 0) | (
        (second - torch.floor(second) - 0.5).abs() < 1e-6
    )
    ours = imresize_uint8(_input(ref, "rgb100"), scale=1 / 6, kernel="bilinear")
    diff = torch.from_numpy(_uint8_diff(ours, _expected(ref, "matlab_uint8", "rgb100_x6_bilinear")))
    assert diff[~reached].max() == 0 and diff.max() <= 1
    assert reached.float().mean() < 0.15  # 129 of 867 pixels


def test_intermediate_rounding_matters(ref):
    # MATLAB's uint8 result differs from Octave's where the first pass overshoots [0, 255] and is clamped.
    x = _input(ref, "grey37x53")
    matlab = imresize_uint8(x, scale=1 / 4)
    octave = imresize_uint8(x, scale=1 / 4, round_intermediate=False)
    assert (matlab != octave).any()
    assert _uint8_diff(octave, _expected(ref, "matlab_uint8", "grey37x53_x4")).max() > 1


def test_upscale_matches_octave(ref):
    image, kwargs, method = _case(ref, "grey17_up100")
    x = _input(ref, image)
    out = imresize(x.double(), kernel=method, **kwargs)
    assert out.shape == (100, 100)
    assert _rel(out.numpy(), _expected(ref, "double", "grey17_up100")) < DOUBLE


@pytest.mark.parametrize("case", ["rgb100_14px", "grey37x53_20x30"])
def test_absolute_size_matches_octave(ref, case):
    image, kwargs, method = _case(ref, case)
    x = _input(ref, image).double()
    expected = _expected(ref, "double", case)
    out = imresize(x, kernel=method, **kwargs)
    assert tuple(out.shape[-2:]) == kwargs["size"]
    # MATLAB renormalises the weights of every output pixel to sum 1; Octave does not, which only matters
    # for non-integer shrink factors. Rebuild Octave's arithmetic with unnormalised weights: exact match.
    h, w = x.shape[-2:]
    out_h, out_w = kwargs["size"]
    wh = _weight_matrix(h, out_h, out_h / h, method, True, normalize=False)
    ww = _weight_matrix(w, out_w, out_w / w, method, True, normalize=False)
    assert _rel((wh @ x @ ww.T).numpy(), expected) < 1e-6
    # ... and the normalised (MATLAB) result stays within the size of that normalisation.
    assert _rel(out.numpy(), expected) < 1e-2
    row_sums = _weight_matrix(h, out_h, out_h / h, method, True).sum(1)
    torch.testing.assert_close(row_sums, torch.ones(out_h, dtype=torch.float64))


@pytest.mark.parametrize("factor", [4, 6])
def test_bilinear_matches_octave(ref, factor):
    case = f"rgb100_x{factor}_bilinear"
    x = _input(ref, "rgb100")
    out = imresize(x.double(), scale=1 / factor, kernel="bilinear")
    assert _rel(out.numpy(), _expected(ref, "double", case)) < DOUBLE


def test_float32_and_value_range(ref):
    x = _input(ref, "rgb100")
    expected = _expected(ref, "double", "rgb100_x6")
    out = imresize(x.float() / 255.0, scale=1 / 6)
    assert out.dtype == torch.float32
    assert _rel(out.double().numpy() * 255.0, expected) < 1e-5


def test_ranks_and_batch(ref):
    x = _input(ref, "rgb100").double()
    single = imresize(x, scale=0.25)
    assert single.shape == (3, 25, 25)
    batch = torch.stack([x, x.flip(-1)])
    out = imresize(batch, scale=0.25)
    assert out.shape == (2, 3, 25, 25)
    torch.testing.assert_close(out[0], single)
    torch.testing.assert_close(out[1], imresize(x.flip(-1), scale=0.25))
    assert imresize(x[0], scale=0.25).shape == (25, 25)
    torch.testing.assert_close(imresize(x[0], scale=0.25), single[0])
    u8 = _input(ref, "grey37x53")
    assert imresize_uint8(u8, scale=0.5).shape == (19, 27)
    assert imresize_uint8(u8[None, None], scale=0.5).shape == (1, 1, 19, 27)


def test_identity_and_anisotropic(ref):
    x = _input(ref, "grey37x53").double()
    torch.testing.assert_close(imresize(x, scale=1.0), x)
    out = imresize(x, size=(37, 20))  # columns only
    assert out.shape == (37, 20)
    torch.testing.assert_close(out, imresize(x.T, size=(20, 37)).T)
    out = imresize(x, size=(20, 30))  # both dimensions, different scales
    torch.testing.assert_close(out, imresize(x.T.contiguous(), size=(30, 20)).T)


def test_torch_interpolate_differs_at_x6(ref):
    # torch derives the grid from the output size (100 / 17 = 5.88, not 6) and clamps at the borders.
    x = _input(ref, "rgb100").double()[None]
    expected = torch.from_numpy(_expected(ref, "double", "rgb100_x6"))
    ours = imresize(x, scale=1 / 6)[0]
    theirs = torch.nn.functional.interpolate(x, size=(17, 17), mode="bicubic", antialias=True)[0]
    assert (ours - expected).abs().max() < 1e-9
    diff = (theirs - expected).abs()
    assert diff.max() > 10.0  # observed ~50 grey levels
    assert diff.mean() > 1.0  # observed ~5 grey levels


def test_weight_cache_is_reused():
    from lrfer.data.imresize import _cached_weights

    a = _cached_weights(100, 17, 1 / 6, "bicubic", True)
    b = _cached_weights(100, 17, 1 / 6, "bicubic", True)
    assert a is b and a.dtype == torch.float64 and a.shape == (17, 100)
    torch.testing.assert_close(a.sum(1), torch.ones(17, dtype=torch.float64))


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({}, "exactly one of scale and size"),
        ({"scale": 0.5, "size": (10, 10)}, "exactly one of scale and size"),
        ({"scale": 0.0}, "scale must be positive"),
        ({"scale": -2.0}, "scale must be positive"),
        ({"size": (0, 10)}, "size entries must be positive"),
        ({"size": (10, -1)}, "size entries must be positive"),
        ({"size": (10, 10, 10)}, "pair of ints"),
        ({"scale": 0.5, "kernel": "lanczos3"}, "kernel must be one of"),
    ],
)
def test_errors(kwargs, match):
    x = torch.zeros(1, 1, 8, 8)
    with pytest.raises(ValueError, match=match):
        imresize(x, **kwargs)
    with pytest.raises(ValueError, match=match):
        imresize_uint8(x.to(torch.uint8), **kwargs)


def test_dtype_errors():
    with pytest.raises(ValueError, match="floating-point tensor"):
        imresize(torch.zeros(8, 8, dtype=torch.uint8), scale=0.5)
    with pytest.raises(ValueError, match="floating-point tensor"):
        imresize(np.zeros((8, 8)), scale=0.5)
    with pytest.raises(ValueError, match="uint8 tensor"):
        imresize_uint8(torch.zeros(8, 8), scale=0.5)
    with pytest.raises(ValueError, match=r"\(H, W\)"):
        imresize(torch.zeros(8), scale=0.5)


def test_a_wrong_dtype_is_named_in_the_error():
    with pytest.raises(ValueError, match=r"use imresize_uint8 for uint8\), got torch\.uint8"):
        imresize(torch.zeros(8, 8, dtype=torch.uint8), scale=0.5)
    with pytest.raises(ValueError, match=r"got float64"):
        imresize(np.zeros((8, 8)), scale=0.5)
    with pytest.raises(ValueError, match=r"got list"):
        imresize([[0.0, 1.0]], scale=0.5)
    with pytest.raises(ValueError, match=r"uint8 tensor, got torch\.float32"):
        imresize_uint8(torch.zeros(8, 8), scale=0.5)
    with pytest.raises(ValueError, match=r"uint8 tensor, got list"):
        imresize_uint8([[0, 1]], scale=0.5)


@pytest.mark.parametrize("size", [(1, 10), (10, 1), (1, 1)])
def test_a_side_of_one_pixel_is_a_valid_size(size):
    x = torch.rand(2, 3, 12, 14, dtype=torch.float64)
    assert imresize(x, size=size).shape == (2, 3, *size)
    assert imresize_uint8((x * 255).to(torch.uint8), size=size).shape == (2, 3, *size)

"""Make ``tests/fixtures/imresize_octave.npz``: GNU Octave ``imresize`` outputs that test lrfer's imresize.

How to run (from the repository root; rerunnable, it overwrites the file)::

    apt-get install -y octave octave-image      # GNU Octave >= 7 and its image package >= 2.14
    python scripts/make_imresize_fixtures.py    # optional: --out PATH, --octave /path/to/octave

Needs: numpy and an ``octave`` executable with the ``image`` package (``pkg load image`` must work).
Octave 7 may print "error: ignoring const execution_exception& while preparing to exit" when it quits;
that message is harmless (the exit status is 0 and every output is written before it).
Image package 2.14 rewrote ``imresize`` to follow MATLAB (antialiased kernels, grid from the scale,
symmetric padding); older versions interpolate without antialiasing and would give useless fixtures.

What it does: builds deterministic uint8 test images (fixed seed), writes them as raw bytes to a
temporary directory, runs one Octave script that computes ``imresize`` for every case on the uint8
image AND on ``double(image)``, and saves inputs, outputs and the Octave / image-package versions into
one compressed ``.npz`` (about 0.3 MB).

Keys in the archive:

* ``input__<image>``: uint8 (H, W) or (H, W, C), in MATLAB's row/column/channel layout.
* ``uint8__<case>`` / ``double__<case>``: Octave's result for the uint8 / double input (uint8 / float64).
* ``case_image``, ``case_arg``, ``case_method``, ``case_names``: string arrays describing every case;
  ``case_arg`` is the second argument of ``imresize`` exactly as given to Octave (``1/6``, ``[14 14]``).
* ``versions``: string array ``["octave <version>", "image <version>"]``.

Known differences between Octave's image package 2.14 and MATLAB (the tests account for them): Octave
always resizes columns first, computes uint8 input in single precision and rounds only the final image
(MATLAB rounds the intermediate image between the two passes too), and does not renormalise the kernel
weights to sum to 1 (the same for integer shrink factors and enlargements; not for e.g. 100 -> 14 px).
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUT = ROOT / "tests" / "fixtures" / "imresize_octave.npz"
SEED = 20240607


def make_images() -> dict[str, np.ndarray]:
    """Deterministic uint8 test images: smooth gradients, sharp edges, fine texture and noise."""
    rng = np.random.default_rng(SEED)

    # 100x100 RGB: gradients + a bright square + a dark disc + a checkerboard + noise (covers clipping).
    yy, xx = np.mgrid[0:100, 0:100].astype(np.float64)
    r = 40 + 1.6 * xx
    g = 30 + 1.2 * yy + 40 * np.sin(xx / 7.0)
    b = 128 + 90 * np.cos((xx + yy) / 15.0)
    rgb = np.stack([r, g, b], axis=-1)
    rgb[20:45, 55:85, :] = [250, 255, 240]
    rgb[(yy - 70) ** 2 + (xx - 30) ** 2 < 15**2] = [0, 5, 20]
    checker = ((yy // 2 + xx // 2) % 2 == 0) & (yy >= 75) & (xx >= 70)
    rgb[checker] = 255
    rgb[(yy >= 75) & (xx >= 70) & ~checker] = 0
    rgb += rng.normal(0.0, 6.0, size=rgb.shape)
    rgb = np.clip(np.rint(rgb), 0, 255).astype(np.uint8)

    # 37x53 grey (non-square, odd sides): diagonal ramp, a vertical bar and uniform noise.
    yy, xx = np.mgrid[0:37, 0:53].astype(np.float64)
    grey = 3.0 * yy + 2.0 * xx + rng.uniform(-20.0, 20.0, size=yy.shape)
    grey[:, 25:28] = 255
    grey[10:14, :] = 0
    grey = np.clip(np.rint(grey), 0, 255).astype(np.uint8)

    # 17x17 grey to enlarge: random blocks, strong edges everywhere.
    small = rng.integers(0, 256, size=(17, 17)).astype(np.uint8)

    return {"rgb100": rgb, "grey37x53": grey, "grey17": small}


def make_cases() -> list[tuple[str, str, str, str]]:
    """(case name, image, second imresize argument as Octave code, method)."""
    cases = []
    for image in ("rgb100", "grey37x53"):
        for s in (2, 3, 4, 6, 8):
            cases.append((f"{image}_x{s}", image, f"1/{s}", "bicubic"))
    cases.append(("rgb100_14px", "rgb100", "[14 14]", "bicubic"))
    cases.append(("grey37x53_20x30", "grey37x53", "[20 30]", "bicubic"))
    cases.append(("grey17_up100", "grey17", "[100 100]", "bicubic"))
    cases.append(("rgb100_x4_bilinear", "rgb100", "1/4", "bilinear"))
    cases.append(("rgb100_x6_bilinear", "rgb100", "1/6", "bilinear"))
    return cases


OCTAVE_SCRIPT = r"""
pkg load image;
d = '@TMPDIR@';
fid = fopen(fullfile(d, 'versions.txt'), 'w');
info = pkg('list', 'image');
fprintf(fid, 'octave %s\nimage %s\n', OCTAVE_VERSION, info{1}.version);
fclose(fid);
function I = read_img(path, shape)
  fid = fopen(path, 'r'); v = fread(fid, Inf, 'uint8=>uint8'); fclose(fid);
  I = permute(reshape(v, fliplr(shape)), numel(shape):-1:1);
end
function J = matlab_uint8(I, arg, method)
  % MATLAB's uint8 behaviour, built from two 1-D Octave imresize calls on uint8 images: imresizemex
  % returns uint8 after each pass, and the passes run in order of increasing scale (rows first on ties).
  if isscalar(arg)
    s = [arg arg];
    pass = {@(X) imresize(X, 'Scale', [arg 1], 'Method', method), ...
            @(X) imresize(X, 'Scale', [1 arg], 'Method', method)};
  else
    s = [arg(1) / rows(I), arg(2) / columns(I)];
    pass = {@(X) imresize(X, [arg(1) columns(X)], method), @(X) imresize(X, [rows(X) arg(2)], method)};
  end
  [~, order] = sort(s);
  J = I;
  for k = order
    J = pass{k}(J);
  end
end
function write_out(path, A, prec)
  fid = fopen(fullfile(path), 'w');
  fwrite(fid, permute(A, ndims(A):-1:1), prec); fclose(fid);
  fid = fopen([path '.shape'], 'w'); fprintf(fid, '%d ', size(A)); fclose(fid);
end
@BODY@
"""

CASE_TEMPLATE = r"""
I = read_img(fullfile(d, 'in_{image}.bin'), [{shape}]);
write_out(fullfile(d, 'uint8__{name}.bin'), imresize(I, {arg}, '{method}'), 'uint8');
write_out(fullfile(d, 'double__{name}.bin'), imresize(double(I), {arg}, '{method}'), 'double');
write_out(fullfile(d, 'matlab_uint8__{name}.bin'), matlab_uint8(I, {arg}, '{method}'), 'uint8');
"""


def _read_out(path: Path, dtype: type) -> np.ndarray:
    shape = [int(v) for v in Path(str(path) + ".shape").read_text().split()]
    return np.fromfile(path, dtype=dtype).reshape(shape)


def run(out: Path, octave: str) -> None:
    if shutil.which(octave) is None:
        raise SystemExit(f"cannot find {octave!r}: install GNU Octave and its image package first")
    images = make_images()
    cases = make_cases()
    with tempfile.TemporaryDirectory(prefix="imresize_fixtures_") as tmp:
        tmpdir = Path(tmp)
        for key, img in images.items():
            np.ascontiguousarray(img).tofile(tmpdir / f"in_{key}.bin")
        body = "".join(
            CASE_TEMPLATE.format(
                name=name,
                image=image,
                arg=arg,
                method=method,
                shape=" ".join(str(v) for v in images[image].shape),
            )
            for name, image, arg, method in cases
        )
        script = tmpdir / "make_fixtures.m"
        script.write_text(OCTAVE_SCRIPT.replace("@TMPDIR@", tmpdir.as_posix()).replace("@BODY@", body))
        subprocess.run(
            [octave, "--no-gui", "--quiet", "--no-window-system", "--eval", f"source('{script.as_posix()}')"],
            check=True,
        )
        arrays: dict[str, np.ndarray] = {f"input__{k}": v for k, v in images.items()}
        for name, *_ in cases:
            arrays[f"uint8__{name}"] = _read_out(tmpdir / f"uint8__{name}.bin", np.uint8)
            arrays[f"double__{name}"] = _read_out(tmpdir / f"double__{name}.bin", np.float64)
            arrays[f"matlab_uint8__{name}"] = _read_out(tmpdir / f"matlab_uint8__{name}.bin", np.uint8)
        versions = (tmpdir / "versions.txt").read_text().split("\n")
    arrays["versions"] = np.array([v for v in versions if v.strip()])
    arrays["case_names"] = np.array([c[0] for c in cases])
    arrays["case_image"] = np.array([c[1] for c in cases])
    arrays["case_arg"] = np.array([c[2] for c in cases])
    arrays["case_method"] = np.array([c[3] for c in cases])
    out.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(out, **arrays)
    size_kib = out.stat().st_size / 1024
    print(f"wrote {out} ({size_kib:.0f} KiB, {len(cases)} cases, {', '.join(arrays['versions'])})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output .npz (default: %(default)s)")
    parser.add_argument("--octave", default="octave", help="Octave executable (default: %(default)s)")
    args = parser.parse_args()
    run(args.out, args.octave)


if __name__ == "__main__":
    main()

"""Issue 30, group 4: the commands' impossible options, unwritable outputs and garbage inputs are one line.

``lrfer-predict`` (decompression bombs, ``--max-pixels``, ``--skip-corrupt``, ``--batch-size``, ``--device``,
unwritable ``--out`` / ``--annotate``), ``scripts/report.py`` (garbage metrics.json and paper CSVs,
unwritable ``--out``), ``scripts/export.py`` and ``lrfer-evaluate`` (unknown ``-o`` keys, ``--atol``, an
export that fails its check never replaces a good model.pt). Run in-process on the shared tiny run.
"""

from __future__ import annotations

import csv
import importlib.util
import os

import numpy as np
import pytest
import torch
from conftest import REPO
from PIL import Image

from lrfer.cli import predict


def _script(name: str):
    """A module of ``scripts/`` (they are not a package)."""
    spec = importlib.util.spec_from_file_location(f"lrfer_script_{name}", REPO / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _exit(main, argv, capsys) -> tuple[int, str, str]:
    """Run a command's ``main``; its exit status (0 when it returns), stdout and stderr."""
    try:
        main(argv)
        code = 0
    except SystemExit as stop:
        code = stop.code if isinstance(stop.code, int) else 1
    out, err = capsys.readouterr()
    return code, out, err


def _one_error_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.startswith("error")]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def _faces(folder, sides=(20, 24)):
    folder.mkdir(exist_ok=True)
    rng = np.random.default_rng(0)
    for side in sides:
        Image.fromarray(rng.integers(0, 256, (side, side, 3), dtype=np.uint8)).save(folder / f"f{side}.png")
    return folder


def _predict(run, inputs, out, *extra):
    return [str(run), *map(str, inputs), "--out", str(out), "--device", "cpu", *extra]


# -- lrfer-predict --------
def test_predict_refuses_a_decompression_bomb_in_one_line_and_skip_corrupt_skips_it_by_name(
    trained_run, tmp_path, capsys, monkeypatch
):
    faces = _faces(tmp_path / "faces")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)  # a 24x24 face is then a "bomb" (> 2 x 100 px)
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(faces / "small.png")
    code, _, err = _exit(predict.main, _predict(trained_run, [faces / "f24.png"], tmp_path / "p.csv"), capsys)
    assert code == 2 and "f24.png" in _one_error_line(err)
    code, out, err = _exit(
        predict.main, _predict(trained_run, [faces], tmp_path / "p.csv", "--skip-corrupt"), capsys
    )
    assert code == 0 and "1 faces (2 unreadable skipped)" in out
    skipped = [line for line in err.splitlines() if line.startswith("skipped")]
    assert len(skipped) == 2 and {"f20.png", "f24.png"} == {
        name for line in skipped for name in ("f20.png", "f24.png") if name in line
    }
    assert [r["path"] for r in csv.DictReader((tmp_path / "p.csv").open())] == [str(faces / "small.png")]


def test_predict_max_pixels_applies_without_detect(trained_run, tmp_path, capsys):
    faces = _faces(tmp_path / "faces")
    argv = _predict(trained_run, [faces / "f24.png"], tmp_path / "p.csv", "--max-pixels", "500")
    code, _, err = _exit(predict.main, argv, capsys)
    line = _one_error_line(err)
    assert code == 2 and "f24.png" in line and "--max-pixels=500" in line
    code, out, _ = _exit(predict.main, [*argv, "--skip-corrupt"], capsys)
    assert code == 0 and "0 faces (1 unreadable skipped)" in out


@pytest.mark.parametrize("size", ["0", "-1"])
def test_predict_refuses_a_batch_size_below_one(trained_run, tmp_path, capsys, size):
    faces = _faces(tmp_path / "faces")
    code, _, err = _exit(
        predict.main, _predict(trained_run, [faces], tmp_path / "p.csv", "--batch-size", size), capsys
    )
    assert code == 2 and f"--batch-size must be at least 1, got {size}" in _one_error_line(err)
    assert not (tmp_path / "p.csv").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_predict_device_cuda_without_a_gpu_names_the_device_option(trained_run, tmp_path, capsys):
    faces = _faces(tmp_path / "faces")
    argv = [str(trained_run), str(faces), "--out", str(tmp_path / "p.csv"), "--device", "cuda"]
    code, _, err = _exit(predict.main, argv, capsys)
    line = _one_error_line(err)
    assert code == 2 and "--device cuda but no CUDA device" in line and "trainer.device" not in line


def test_predict_outputs_that_cannot_be_written_are_one_line(trained_run, tmp_path, capsys):
    faces = _faces(tmp_path / "faces")
    blocker = tmp_path / "a-file"
    blocker.write_text("in the way")
    code, _, err = _exit(predict.main, _predict(trained_run, [faces], blocker / "p.csv"), capsys)
    assert code == 2 and f"cannot write {blocker}" in _one_error_line(err)
    argv = _predict(
        trained_run, [faces], tmp_path / "p.csv", "--detect", "--annotate", str(blocker / "drawn")
    )
    code, _, err = _exit(predict.main, argv, capsys)
    assert code == 2 and "cannot write the annotated photos into" in _one_error_line(err)
    assert blocker.read_text() == "in the way"


def test_predict_a_read_only_output_folder_is_the_disk_error_line(trained_run, tmp_path, capsys, monkeypatch):
    faces = _faces(tmp_path / "faces")
    real_statvfs = os.statvfs

    class ReadOnly:
        def __init__(self, path):
            self.f_flag = real_statvfs(path).f_flag | os.ST_RDONLY

    monkeypatch.setattr(os, "statvfs", ReadOnly)
    code, _, err = _exit(predict.main, _predict(trained_run, [faces], tmp_path / "out" / "p.csv"), capsys)
    assert code == 2 and "the file system is read-only" in _one_error_line(err)

"""Issue 30, group 4: the commands' impossible options, unwritable outputs and garbage inputs are one line.

``lrfer-predict`` (decompression bombs, ``--max-pixels``, ``--skip-corrupt``, ``--batch-size``, ``--device``,
unwritable ``--out`` / ``--annotate``), ``scripts/report.py`` (garbage metrics.json and paper CSVs,
unwritable ``--out``), ``scripts/export.py`` and ``lrfer-evaluate`` (unknown ``-o`` keys, ``--atol``, an
export that fails its check never replaces a good model.pt). Run in-process on the shared tiny run.
"""

from __future__ import annotations

import csv
import importlib.util
import json
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


# -- scripts/report.py --------
def _metrics(folder, content) -> None:
    folder.mkdir(parents=True)
    (folder / "metrics.json").write_bytes(
        content if isinstance(content, bytes) else json.dumps(content).encode()
    )


GOOD = {"method": "baseline", "test": {"x1": {"acc": 0.5, "balanced_acc": 0.5, "n": 10}}}


@pytest.mark.parametrize(
    "garbage",
    [
        [1, 2],
        {"method": "x", "test": {"x1": {"acc": "high"}}},
        b"\x89PNG\r\n\x1a\n\x00\xff\xfe",
        {"test": [1]},
    ],
    ids=["list", "acc-high", "binary", "test-list"],
)
def test_report_skips_a_garbage_metrics_json_with_a_warning_naming_it(tmp_path, capsys, garbage):
    _metrics(tmp_path / "runs" / "good", GOOD)
    _metrics(tmp_path / "runs" / "bad", garbage)
    code, _, err = _exit(
        _script("report").main, [str(tmp_path / "runs"), "--out", str(tmp_path / "r")], capsys
    )
    assert code == 0 and "Traceback" not in err
    (warning,) = [line for line in err.splitlines() if line.startswith("warning")]
    assert str(tmp_path / "runs" / "bad" / "metrics.json") in warning and "skipped" in warning
    assert "| baseline |" in (tmp_path / "r.md").read_text()


def test_report_an_empty_metrics_json_adds_no_row(tmp_path, capsys):
    _metrics(tmp_path / "runs" / "good", GOOD)
    _metrics(tmp_path / "runs" / "empty", {})
    code, _, _ = _exit(_script("report").main, [str(tmp_path / "runs"), "--out", str(tmp_path / "r")], capsys)
    rows = list(csv.reader((tmp_path / "r.csv").open()))
    assert code == 0 and len(rows) == 2 and rows[1][0] == "baseline"


def test_report_skips_a_paper_table_that_is_not_numbers(tmp_path, capsys):
    _metrics(tmp_path / "runs" / "good", GOOD)
    (tmp_path / "paper.csv").write_text("method,x1\nResNet,abc\n")
    argv = [str(tmp_path / "runs"), "--paper", str(tmp_path / "paper.csv"), "--out", str(tmp_path / "r")]
    code, _, err = _exit(_script("report").main, argv, capsys)
    assert code == 0 and "Traceback" not in err
    assert "paper.csv" in err and "'abc', not a number" in err
    assert "(paper)" not in (tmp_path / "r.md").read_text()


def test_report_an_output_that_cannot_be_written_is_one_line(tmp_path, capsys):
    _metrics(tmp_path / "runs" / "good", GOOD)
    (tmp_path / "a-file").write_text("in the way")
    argv = [str(tmp_path / "runs"), "--out", str(tmp_path / "a-file" / "r")]
    code, _, err = _exit(_script("report").main, argv, capsys)
    assert code == 2 and f"cannot write the report into {tmp_path / 'a-file'}" in _one_error_line(err)


# -- lrfer-evaluate and scripts/export.py --------
def test_evaluate_refuses_an_unknown_override_key(trained_run, tmp_path, capsys):
    from lrfer.cli import evaluate

    argv = [str(trained_run), "--out", str(tmp_path / "e.json"), "-o", "nonsense=1"]
    code, _, err = _exit(evaluate.main, argv, capsys)
    assert code == 2 and "nonsense is not in the run's config" in _one_error_line(err)
    assert not (tmp_path / "e.json").exists()


def test_evaluate_an_output_that_cannot_be_written_is_one_line(trained_run, tmp_path, capsys):
    from lrfer.cli import evaluate

    (tmp_path / "a-file").write_text("in the way")
    argv = [str(trained_run), "--out", str(tmp_path / "a-file" / "e.json"), "-o", "trainer.device=cpu"]
    code, _, err = _exit(evaluate.main, argv, capsys)
    assert code == 2 and "cannot write" in _one_error_line(err)


def test_export_refuses_an_unknown_override_key(trained_run, tmp_path, capsys):
    argv = [str(trained_run), "--out", str(tmp_path / "m.pt"), "-o", "nonsense=1"]
    code, _, err = _exit(_script("export").main, argv, capsys)
    assert code == 2 and "nonsense is not in the run's config" in _one_error_line(err)
    assert not (tmp_path / "m.pt").exists()


def test_export_an_output_that_cannot_be_written_is_one_line(trained_run, tmp_path, capsys):
    (tmp_path / "a-file").write_text("in the way")
    argv = [str(trained_run), "--out", str(tmp_path / "a-file" / "m.pt")]
    code, _, err = _exit(_script("export").main, argv, capsys)
    assert code == 2 and "cannot write the export into" in _one_error_line(err)


# -- scripts/leaderboard.py --------
def test_leaderboard_a_protocol_that_is_not_yaml_is_one_line(tmp_path, capsys):
    (tmp_path / "bad.yaml").write_text("methods: [unclosed\n  test: {\n")
    argv = ["--protocol", str(tmp_path / "bad.yaml"), "--out", str(tmp_path / "lb")]
    code, _, err = _exit(_script("leaderboard").main, argv, capsys)
    assert code == 2 and f"cannot read the protocol file {tmp_path / 'bad.yaml'}" in _one_error_line(err)


@pytest.mark.parametrize(
    "argv",
    [["trainer.max_epochs=0", "--methods", "baseline"], ["--methods", "baseline", "trainer.max_epochs=0"]],
    ids=["before", "after-methods"],
)
def test_leaderboard_validates_its_overrides_before_any_run_starts(tmp_path, capsys, argv):
    code, _, err = _exit(_script("leaderboard").main, [*argv, "--out", str(tmp_path / "lb")], capsys)
    line = _one_error_line(err)
    assert code == 2 and "trainer.max_epochs=0 must be an integer >= 1" in line
    assert not (tmp_path / "lb").exists()


# -- train.py: hydra.run.dir --------
@pytest.mark.slow  # a train.py process (composition only, refused before any training)
@pytest.mark.parametrize("below", [False, True], ids=["is-a-file", "below-a-file"])
def test_a_run_folder_that_cannot_be_made_is_one_line_before_anything_is_written(tmp_path, below):
    from conftest import run_cli, tiny

    blocker = tmp_path / "a-file"
    blocker.write_text("in the way")
    run_dir = blocker / "run" if below else blocker
    proc = run_cli(["train.py", *tiny(tmp_path), f"hydra.run.dir={run_dir}"])
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert f"cannot write the run folder {run_dir}" in _one_error_line(proc.stderr)
    assert blocker.read_text() == "in the way" and sorted(p.name for p in tmp_path.iterdir()) == ["a-file"]


def test_a_run_folder_on_a_read_only_disk_is_the_disk_error_line(tmp_path, monkeypatch):
    from lrfer.core.errors import UserError, check_folder_can_be_written

    real_statvfs = os.statvfs

    class ReadOnly:
        def __init__(self, path):
            self.f_flag = real_statvfs(path).f_flag | os.ST_RDONLY

    monkeypatch.setattr(os, "statvfs", ReadOnly)
    with pytest.raises(
        UserError, match=r"cannot write the run folder .*: the file system is read-only \(\[Errno 30\]\)"
    ):
        check_folder_can_be_written(tmp_path / "outputs" / "run", "write the run folder")
    assert list(tmp_path.iterdir()) == []

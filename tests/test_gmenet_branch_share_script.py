"""scripts/gmenet_branch_share.py: how much of GME-Net's fused features each branch carries."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import load_script, run_cli, tiny

from lrfer.tools.retest import evaluate_run

SMALL = ["method=gmenet", "method.width=8", "method.layers=[1,1,1,1]", "trainer.max_epochs=1"]


@pytest.fixture(scope="module")
def gmenet_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("gmenet")
    run_dir = tmp / "run"
    proc = run_cli(["train.py", *tiny(tmp, *SMALL), "trainer.num_threads=1", f"hydra.run.dir={run_dir}"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    return run_dir


def test_every_validation_face_is_counted_once_and_the_accuracy_is_the_runs(gmenet_run, tmp_path, capsys):
    out = tmp_path / "share.json"
    (row,) = load_script("gmenet_branch_share").main([str(gmenet_run), "--out", str(out)])
    assert json.loads(capsys.readouterr().out) == row and json.loads(out.read_text())["rows"] == [row]
    assert row["faces"] == 56  # tiny(): 56 validation faces, each through the student once (no teacher)
    assert row["acc"] == {"14px": evaluate_run(gmenet_run, ["14px"], "val")["val"]["14px"]["acc"]}
    std = row["pooled_std"]
    assert row["local_share"] == pytest.approx(std["local"] ** 2 / (std["local"] ** 2 + std["global"] ** 2))
    assert 0 < row["local_share"] < 1


def test_the_script_leaves_gradients_on_for_the_code_that_called_it(gmenet_run, capsys):
    """CI of 2026-12-07: a global torch.set_grad_enabled(False) in main() broke a later test in the same
    worker (test_syncbn: "element 0 of tensors does not require grad")."""
    load_script("gmenet_branch_share").main([str(gmenet_run)])
    assert torch.is_grad_enabled()


def test_a_run_of_another_method_is_refused_in_one_line(trained_run, capsys):
    with pytest.raises(SystemExit) as stop:
        load_script("gmenet_branch_share").main([str(trained_run)])
    assert stop.value.code == 2
    assert capsys.readouterr().err.strip() == f"error: {trained_run} is not a GME-Net run (method=gmenet)"

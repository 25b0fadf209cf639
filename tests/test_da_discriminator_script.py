"""scripts/da_discriminator.py: whether a DA run's resolution discriminator is alive."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import load_script, run_cli, tiny


@pytest.fixture(scope="module")
def da_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("da")
    run_dir = tmp / "run"
    overrides = ["method=da", "method.factors=[x1,x4]", "method.epochs=1", "method.disc_hidden=16"]
    proc = run_cli(["train.py", *tiny(tmp, *overrides), "degrade.test=[x1]", f"hydra.run.dir={run_dir}"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    return run_dir


def _health(run_dir, capsys) -> dict:
    assert load_script("da_discriminator").main([str(run_dir), "--checkpoint", "best", "--faces", "64"]) == 0
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


def test_a_trained_batch_normalised_discriminator_has_its_units_active(da_run, capsys):
    health = _health(da_run, capsys)
    assert health["batch_norm"] and health["hidden_units"] == 16 and health["chance"] == 0.5
    assert health["units_ever_active"] > 0.5 and health["active_fraction"] > 0.1


def test_a_discriminator_whose_first_layer_is_below_zero_is_reported_dead(da_run, tmp_path, capsys):
    dead = tmp_path / "dead"
    (dead / "checkpoints").mkdir(parents=True)
    (dead / ".hydra").mkdir()
    (dead / ".hydra" / "config.yaml").write_text((da_run / ".hydra" / "config.yaml").read_text())
    state = torch.load(da_run / "checkpoints" / "best.pt", map_location="cpu", weights_only=False)
    state["method"]["discriminator.layers.1.bias"].fill_(-1e3)  # the BatchNorm's shift: every unit below 0
    torch.save(state, dead / "checkpoints" / "best.pt")
    health = _health(dead, capsys)
    assert health["units_ever_active"] == 0.0 and health["active_fraction"] == 0.0


def test_a_run_of_another_method_is_refused_in_one_line(trained_run, capsys):
    assert load_script("da_discriminator").main([str(trained_run)]) == 2
    assert capsys.readouterr().err.strip() == (
        f"error: {trained_run} is a method=baseline run, not a DA run (method=da)"
    )

"""Command-line behaviour: the train table, evaluate, predict, report, sweeps and one-line user errors."""

from __future__ import annotations

import csv
import json

import pytest
import torch
import yaml
from conftest import REPO, run_cli, tiny
from PIL import Image


def test_train_prints_the_per_degradation_table_and_writes_a_run_dir(trained_run):
    metrics = json.loads((trained_run / "metrics.json").read_text())
    assert list(metrics["test"]) == ["x1", "x4"]
    assert (trained_run / ".hydra" / "config.yaml").exists()
    assert any((trained_run / "checkpoints").glob("best.pt"))


def test_evaluate_rescores_a_finished_run_at_new_degradations(trained_run, tmp_path):
    out = tmp_path / "eval.json"
    before = (trained_run / "metrics.json").read_text()
    proc = run_cli(
        [
            "-m",
            "lrfer.cli.evaluate",
            str(trained_run),
            "--degrade",
            "x1",
            "x3",
            "16px",
            "--out",
            str(out),
            "-o",
            "trainer.device=cpu",
        ]
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(out.read_text())
    assert list(result["test"]) == ["x1", "x3", "16px"]
    original = json.loads(before)["test"]["x1"]
    assert result["test"]["x1"]["acc"] == pytest.approx(original["acc"])  # same checkpoint, same answer
    assert (trained_run / "metrics.json").read_text() == before  # metrics.json is never touched
    assert "x3" in proc.stdout


def test_predict_classifies_a_folder_of_faces_of_any_size(trained_run, tmp_path):
    faces = tmp_path / "faces"
    faces.mkdir()
    g = torch.Generator().manual_seed(0)
    for i, side in enumerate([8, 13, 32, 50]):
        arr = torch.randint(0, 256, (side, side, 3), dtype=torch.uint8, generator=g).numpy()
        Image.fromarray(arr).save(faces / f"face{i}.png")
    Image.fromarray(arr[:, :, 0]).save(faces / "grey.jpg")
    out = tmp_path / "pred.csv"
    proc = run_cli(
        ["-m", "lrfer.cli.predict", str(trained_run), str(faces), "--out", str(out), "--device", "cpu"]
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = list(csv.DictReader(out.open()))
    assert len(rows) == 5
    classes = {"surprise", "fear", "disgust", "happiness", "sadness", "anger", "neutral"}
    assert all(r["prediction"] in classes for r in rows)
    probs = [sum(float(r[f"p_{c}"]) for c in classes) for r in rows]
    assert all(abs(p - 1) < 1e-3 for p in probs)
    by_name = {r["path"].rsplit("/", 1)[-1]: r for r in rows}
    assert float(by_name["face0.png"]["factor"]) == pytest.approx(32 / 8)


def test_predict_names_a_corrupt_image_or_skips_it(trained_run, tmp_path):
    (tmp_path / "bad.jpg").write_bytes(b"not an image")
    proc = run_cli(
        [
            "-m",
            "lrfer.cli.predict",
            str(trained_run),
            str(tmp_path / "bad.jpg"),
            "--device",
            "cpu",
            "--out",
            str(tmp_path / "p.csv"),
        ]
    )
    assert proc.returncode == 2 and "bad.jpg" in proc.stderr and "Traceback" not in proc.stderr
    proc = run_cli(
        [
            "-m",
            "lrfer.cli.predict",
            str(trained_run),
            str(tmp_path),
            "--device",
            "cpu",
            "--out",
            str(tmp_path / "p.csv"),
            "--skip-corrupt",
        ]
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "0 faces (1 unreadable skipped)" in proc.stdout


def test_report_gathers_runs_into_markdown_csv_and_plot(trained_run, tmp_path):
    paper = tmp_path / "paper.csv"
    paper.write_text("method,x1,x4,x8\nResNet-18,86.0,70.5,40.0\n")
    out = tmp_path / "rep" / "table"
    proc = run_cli(["scripts/report.py", str(trained_run), "--paper", str(paper), "--out", str(out)])
    assert proc.returncode == 0, proc.stderr[-2000:]
    md = out.with_suffix(".md").read_text()
    assert "| run | x1 | x4 | x8 |" in md and "ResNet-18 (paper)" in md and "baseline" in md
    rows = list(csv.DictReader(out.with_suffix(".csv").open()))
    assert [r["source"] for r in rows] == ["paper", "measured"] and rows[0]["x8"] == "40.00"
    assert out.with_suffix(".png").stat().st_size > 1000


def test_report_on_a_folder_without_results_is_one_line(tmp_path):
    proc = run_cli(["scripts/report.py", str(tmp_path)])
    assert proc.returncode == 2 and "no metrics.json" in proc.stderr and "Traceback" not in proc.stderr


@pytest.mark.parametrize(
    "override,needle",
    [
        ("degrade.test=[x0]", "factor must be >= 1"),
        ("degrade.train=[huge]", "cannot read degradation"),
        ("degrade.test=[500px]", "larger than"),
    ],
)
def test_impossible_degradations_stop_with_one_line(tmp_path, override, needle):
    proc = run_cli(["train.py", *tiny(tmp_path), override, f"hydra.run.dir={tmp_path / 'run'}"])
    assert proc.returncode == 2
    assert needle in proc.stderr and "Traceback" not in proc.stderr
    assert len([line for line in proc.stderr.splitlines() if line.startswith("error:")]) == 1


def test_a_sweep_over_training_degradations_writes_one_run_per_job(tmp_path):
    sweep = tmp_path / "sweep"
    proc = run_cli(
        [
            "train.py",
            "-m",
            *tiny(tmp_path, "trainer.max_epochs=1", "dataset.num_train=56"),
            "degrade.train=[x1],[x4]",
            "degrade.test=[x4]",
            f"hydra.sweep.dir={sweep}",
        ]
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    runs = sorted(sweep.glob("*/metrics.json"))
    assert len(runs) == 2
    assert [json.loads(p.read_text())["degrade"]["train"] for p in runs] == [["x1"], ["x4"]]


@pytest.mark.slow  # launcher/process integration, ~25-45 s on 2 cores: `pytest -m slow`
def test_the_local_parallel_launcher_runs_a_sweep(tmp_path):
    sweep = tmp_path / "sweep"
    proc = run_cli(
        [
            "train.py",
            "-m",
            "launcher=local",
            *tiny(tmp_path, "trainer.max_epochs=1", "dataset.num_train=56"),
            "seed=0,1",
            "degrade.test=[x1]",
            f"hydra.sweep.dir={sweep}",
        ]
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert len(list(sweep.glob("*/metrics.json"))) == 2


def test_console_script_entry_points_are_declared():
    text = (REPO / "pyproject.toml").read_text()
    for name in ("lrfer-train", "lrfer-evaluate", "lrfer-predict"):
        assert name in text


@pytest.mark.slow  # launcher/process integration, ~25-45 s on 2 cores: `pytest -m slow`
def test_the_submitit_launcher_runs_a_sweep_through_its_local_executor(tmp_path):
    sweep = tmp_path / "sweep"
    overrides = tiny(tmp_path, "trainer.max_epochs=1", "dataset.num_train=56")
    proc = run_cli(
        [
            "train.py",
            "-m",
            "launcher=submitit_local",
            *overrides,
            "seed=0,1",
            "degrade.test=[x1]",
            f"hydra.sweep.dir={sweep}",
        ]
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert len(list(sweep.glob("*/metrics.json"))) == 2


def test_optuna_search_maximises_the_validation_objective(tmp_path):
    pytest.importorskip("hydra_plugins.hydra_optuna_sweeper")
    sweep = tmp_path / "sweep"
    overrides = tiny(tmp_path, "trainer.max_epochs=1", "dataset.num_train=56", "degrade.test=[x1]")
    overrides = [o for o in overrides if not o.startswith("trainer.optimizer.lr=")]  # would fix it: searched
    proc = run_cli(
        [
            "train.py",
            "-m",
            "hparams_search=optuna",
            "hydra.sweeper.n_trials=2",
            *overrides,
            "degrade.val=[x1,x2]",
            f"hydra.sweep.dir={sweep}",
        ]
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    trials = [json.loads(p.read_text()) for p in sorted(sweep.glob("*/metrics.json"))]
    assert len(trials) == 2
    for m in trials:  # the objective: mean validation accuracy over degrade.val
        assert m["objective"]["name"] == "acc" and m["objective"]["split"] == "val"
        assert m["objective"]["value"] == pytest.approx((m["val"]["x1"]["acc"] + m["val"]["x2"]["acc"]) / 2)
    best = yaml.safe_load((sweep / "optimization_results.yaml").read_text())
    assert best["best_value"] == max(m["objective"]["value"] for m in trials)
    assert set(best["best_params"]) == {"trainer.optimizer.lr", "trainer.optimizer.weight_decay"}


def test_lrfers_hydra_plugin_imports_no_torch():
    """Hydra's plugin scan imports every ``hydra_plugins`` module, in every Hydra application of the
    environment: lrfer's sweeper plugin (and the sweep records it reads) stays free of torch."""
    code = "import sys, hydra_plugins.lrfer_sweepers; assert 'torch' not in sys.modules, 'torch imported'"
    proc = run_cli(["-c", code])
    assert proc.returncode == 0, proc.stderr[-2000:]

"""Tools: model statistics (voting Table 2), export, fold aggregation (and their scripts/ command lines)."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import run_cli, tiny

from lrfer.config import compose_config
from lrfer.core.errors import UserError
from lrfer.report.folds import aggregate_folds
from lrfer.tools.export import export_run
from lrfer.tools.model_stats import model_stats


def test_model_stats_prints_json_on_its_last_line():
    proc = run_cli(["scripts/model_stats.py", "method=efc", "input_size=32"], timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    stats = json.loads(proc.stdout.strip().splitlines()[-1])
    assert stats["params"] == 506_643 and stats["params_with_bn_stats"] == 510_643
    assert stats["macs"] == 3_333_376 and stats["input"] == [3, 32, 32]
    assert stats["saved_mb"] > 0


# The voting paper's Table 2 (7 classes): input, split_after, GMACs ("GFLOPs"), forward pass size (MB).
TABLE2 = [
    (40, 0, 0.87, 7.00),
    (48, 0, 1.26, 10.08),
    (48, 1, 6.66, 40.34),
    (48, 2, 4.85, 23.34),
    (48, 3, 3.05, 14.84),
]


@pytest.mark.parametrize(("size", "split_after", "gmacs", "saved_mb"), TABLE2)
def test_model_stats_reproduce_voting_table2_within_two_percent(size, split_after, gmacs, saved_mb):
    overrides = ["method=voting", "method.stem=conv3", f"method.split_after={split_after}"]
    overrides.append(f"input_size={size}")
    stats = model_stats(compose_config(overrides), device="meta")
    assert stats["input"] == [3, size, size]
    assert abs(stats["params"] / 11.17e6 - 1) < 0.02
    assert abs(stats["macs"] / 1e9 / gmacs - 1) < 0.02
    assert abs(stats["saved_mb"] / saved_mb - 1) < 0.02


@pytest.mark.parametrize(
    "overrides", [["method=efc", "input_size=20"], ["method=gmenet", "method.width=8", "input_size=32"]]
)
def test_meta_device_counts_equal_the_cpu_counts(overrides):
    cfg = compose_config(overrides)
    assert model_stats(cfg, device="meta") == model_stats(cfg, device="cpu")


def test_saved_memory_is_per_image_and_leaves_out_the_weights():
    cfg = compose_config(["method=efc", "input_size=16"])
    two, eight = model_stats(cfg, batch=2), model_stats(cfg, batch=8)
    assert two["saved_mb"] == pytest.approx(eight["saved_mb"], rel=0.05)
    assert two["saved_mb"] * 2**20 < 4 * two["params"]  # far less than the fp32 weights at 16 px


@pytest.fixture(scope="module")
def efc_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("efc")
    run_dir = tmp / "run"
    extra = ["method=efc", "trainer.max_epochs=1", "degrade.test=[x1]", "dataset.num_train=56"]
    overrides = tiny(tmp, *extra, "trainer.num_threads=1")
    proc = run_cli(["train.py", *overrides, f"hydra.run.dir={run_dir}"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    return run_dir


def test_export_torchscript_round_trip_matches_the_method(efc_run):
    result = export_run(efc_run, "torchscript", atol=1e-4)
    assert result["ok"] and result["max_abs_diff"] < 1e-4
    loaded = torch.jit.load(result["path"])
    assert loaded(torch.randn(3, 3, 32, 32)).shape == (3, 7)


def test_export_fails_above_the_tolerance_and_leaves_a_good_export_unchanged(efc_run, tmp_path, monkeypatch):
    from lrfer.tools import export

    good = export_run(efc_run, "torchscript", out=tmp_path / "m.pt")
    before = (tmp_path / "m.pt").read_bytes()
    real = export.export_torchscript

    def drifting(model, example, out):  # an exported model that differs from the method by 1
        runner = real(model, example, out)
        return lambda x: runner(x) + 1.0

    monkeypatch.setattr(export, "export_torchscript", drifting)
    result = export_run(efc_run, "torchscript", out=tmp_path / "m.pt", atol=1e-4)
    assert good["ok"] and not result["ok"] and result["max_abs_diff"] == pytest.approx(1.0, abs=1e-3)
    assert (tmp_path / "m.pt").read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.pt"]  # no temporary file left


@pytest.mark.parametrize("atol", [-1.0, float("nan")])
def test_export_refuses_a_negative_tolerance(efc_run, tmp_path, atol):
    with pytest.raises(UserError, match="--atol must be a number >= 0"):
        export_run(efc_run, "torchscript", out=tmp_path / "m.pt", atol=atol)
    assert not (tmp_path / "m.pt").exists()


def test_an_export_that_differs_from_the_method_is_reported(efc_run, tmp_path, monkeypatch):
    """A reloaded model off by 1e-3 (a broken export, simulated) fails the default 1e-4 check."""
    import lrfer.tools.export as export

    honest = export.export_torchscript

    def off_by_a_little(model, example, out):
        runner = honest(model, example, out)
        return lambda x: runner(x) + 1e-3

    monkeypatch.setattr(export, "export_torchscript", off_by_a_little)
    result = export_run(efc_run, "torchscript", out=tmp_path / "m.pt")
    assert result["max_abs_diff"] == pytest.approx(1e-3, rel=0.1) and not result["ok"]
    assert export_run(efc_run, "torchscript", out=tmp_path / "m.pt", atol=2e-3)["ok"]


def test_aggregate_folds_gives_mean_and_std_over_folds(tmp_path):
    for fold, acc in [(0, 0.90), (1, 0.80), (2, 0.70)]:
        run = tmp_path / str(fold)
        (run / ".hydra").mkdir(parents=True)
        (run / ".hydra" / "overrides.yaml").write_text(f"- dataset.fold={fold}\n- degrade.train=[32px]\n")
        row = {"acc": acc, "balanced_acc": acc, "n": 10}
        (run / "metrics.json").write_text(json.dumps({"method": "efc", "test": {"32px": row}}))
    _, summary, _ = aggregate_folds([str(tmp_path)], out=tmp_path / "folds")
    entry = summary["efc degrade.train=[32px]"]
    assert entry["folds"] == 3
    assert entry["32px"]["mean"] == pytest.approx(80.0) and entry["32px"]["std"] == pytest.approx(10.0)
    assert "80.00 ± 10.00" in (tmp_path / "folds.md").read_text()


def test_aggregate_folds_merges_one_method_per_resolution_into_one_row(tmp_path):
    for fold in (0, 1):
        for size, acc in [(32, 0.9), (10, 0.5)]:
            run = tmp_path / f"{fold}_{size}"
            (run / ".hydra").mkdir(parents=True)
            (run / ".hydra" / "overrides.yaml").write_text(
                f"- dataset.fold={fold}\n- degrade.train=[{size}px]\n"
            )
            row = {"acc": acc, "balanced_acc": acc, "n": 10}
            (run / "metrics.json").write_text(json.dumps({"method": "efc", "test": {f"{size}px": row}}))
    _, summary, _ = aggregate_folds([str(tmp_path)], merge=("degrade.train",), tag=" (synthetic)")
    assert list(summary) == ["efc (synthetic)"]
    assert summary["efc (synthetic)"]["folds"] == 2
    assert summary["efc (synthetic)"]["10px"]["mean"] == pytest.approx(50.0)


def test_meta_device_on_a_method_with_data_dependent_routing_stops_with_one_clear_error():
    cfg = compose_config(["method=drgfer", "input_size=16"])
    with pytest.raises(UserError, match=r"--device meta cannot count method=drgfer.*use --device cpu"):
        model_stats(cfg, device="meta")

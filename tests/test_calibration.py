"""Synthetic-faces calibration: the comparison with RAF-DB's factor table, scripts/calibrate_synthetic.py."""

from __future__ import annotations

import json

import pytest
from conftest import REPO, run_cli

from lrfer.core.errors import UserError
from lrfer.data.synthetic import GENERATOR_VERSION
from lrfer.report.calibration import CALIBRATION_CELLS, compare, largest_gap, markdown, read_reference

TABLE3 = REPO / "experiments" / "drgfer" / "table3_rafdb_factors.csv"


def test_reference_rows_are_the_papers_table3_in_percent():
    rows = read_reference(TABLE3)
    assert rows["x1"]["x1"] == pytest.approx(89.24)
    assert rows["x8"]["x8"] == pytest.approx(76.86)


def test_gaps_are_synthetic_minus_reference_and_the_largest_is_by_magnitude():
    reference = {"x1": {"x1": 90.0, "x8": 50.0}, "x8": {"x8": 80.0}}
    synthetic = {"x1": {"x1": 95.0, "x8": 38.0}, "x8": {"x8": 81.0}}
    cells = compare(synthetic, reference, (("x1", "x1"), ("x1", "x8"), ("x8", "x8")))
    assert [c.gap for c in cells] == pytest.approx([5.0, -12.0, 1.0])
    assert (largest_gap(cells).train, largest_gap(cells).test) == ("x1", "x8")


def test_a_missing_synthetic_cell_is_a_clear_error():
    with pytest.raises(UserError, match="trained at x8, tested at x4"):
        compare({"x1": {"x1": 90.0}}, read_reference(TABLE3), (("x8", "x4"),))


def test_the_table_shows_both_rows_and_their_difference():
    text = markdown({"x1": {"x1": 91.0}}, {"x1": {"x1": 89.24}}, ["x1"], "synthetic")
    assert "| synthetic, trained x1 | 91.0 |" in text and "| difference, trained x1 | +1.8 |" in text


@pytest.mark.slow  # launcher/process integration, ~25-45 s on 2 cores: `pytest -m slow`
def test_the_script_trains_both_models_and_ends_with_the_gaps_as_json(tmp_path):
    tiny = [
        "dataset.image_size=24",
        "dataset.num_train=56",
        "dataset.num_val=28",
        "dataset.num_test=28",
        "trainer.max_epochs=1",
        "trainer.batch_size=28",
        "trainer.num_threads=1",
        f"paths.cache_dir={tmp_path / 'cache'}",
    ]
    proc = run_cli(["scripts/calibrate_synthetic.py", "--out", str(tmp_path / "cal"), *tiny])
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    assert [(c["train"], c["test"]) for c in summary["cells"]] == list(CALIBRATION_CELLS)
    assert summary["generator_version"] == GENERATOR_VERSION
    assert list(summary)[-1] == "largest_gap"
    assert (tmp_path / "cal" / "calibration.md").is_file()
    metrics = json.loads((tmp_path / "cal" / "train_x8" / "metrics.json").read_text())
    assert metrics["degrade"]["train"] == ["x8"]
    assert metrics["dataset_info"]["generator_version"] == GENERATOR_VERSION

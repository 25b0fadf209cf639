"""The leaderboard's numbers and words (``lrfer.report.leaderboard``), checked in the test process on run
folders made by hand: mean and sample std over seeds, column order, cost cells, the protocol file, budgets,
provenance lines and the plot's hardest degradation (``test_leaderboard.py`` trains through the script)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from lrfer.core.errors import UserError
from lrfer.report import leaderboard as lb
from lrfer.report.calls import previous_calls
from lrfer.report.leaderboard import (
    MethodResult,
    budget_label,
    budget_overrides,
    collect,
    face_side,
    load_protocol,
    provenance_notes,
    write_leaderboard,
)


def _runs(out: Path, accs_by_method: dict[str, dict[str, list[float]]], durations=None) -> None:
    """``<out>/runs/<method>/seed<k>/metrics.json`` with the given test accuracies per label and seed."""
    for method, by_label in accs_by_method.items():
        n = max(len(v) for v in by_label.values())
        for seed in range(n):
            run = out / "runs" / method / f"seed{seed}"
            run.mkdir(parents=True)
            test = {lbl: {"acc": accs[seed], "n": 10} for lbl, accs in by_label.items() if seed < len(accs)}
            metrics = {"test": test}
            if durations is not None:
                metrics["duration_s"] = durations[seed]
            (run / "metrics.json").write_text(json.dumps(metrics))


def _csv(out: Path) -> dict[str, dict[str, str]]:
    return {r["method"]: r for r in csv.DictReader((out / "leaderboard.csv").open())}


def _md_rows(out: Path) -> dict[str, list[str]]:
    lines = (out / "leaderboard.md").read_text().splitlines()
    head = next(line for line in lines if line.startswith("| method"))
    names = [c.strip() for c in head.strip("|").split("|")]
    rows = {}
    for line in lines:
        if line.startswith("| ") and not line.startswith("| method"):
            cells = [c.strip() for c in line.strip("|").split("|")]
            rows[cells[0]] = dict(zip(names, cells, strict=True))
    return rows


# -- mean and std --------
def test_mean_and_std_are_percent_of_the_seeds_with_the_sample_std():
    r = MethodResult("m", {"x4": [0.2, 0.3, 0.7]})
    mean, std = r.mean_std("x4")
    assert mean == pytest.approx(40.0) and std == pytest.approx(26.457513, abs=1e-5)  # n - 1, not n (21.6)


def test_a_single_seed_has_zero_spread_and_a_missing_label_no_cell():
    r = MethodResult("m", {"x1": [0.55], "x2": []})
    assert r.mean_std("x1") == (pytest.approx(55.0), 0.0)
    assert r.mean_std("x2") is None and r.mean_std("x8") is None


def test_a_method_without_a_degradation_gets_empty_cells_not_zero(tmp_path):
    _runs(tmp_path, {"a": {"x1": [0.5], "x4": [0.3]}, "b": {"x1": [0.6]}})
    write_leaderboard(collect(tmp_path, ["a", "b"]), ["x1", "x4"], tmp_path, "t")
    assert (_csv(tmp_path)["b"]["x4_mean"], _csv(tmp_path)["b"]["x4_std"]) == ("", "")
    assert _md_rows(tmp_path)["b"]["x4"] == ""
    assert _md_rows(tmp_path)["a"]["x4"] == "30.0 ± 0.0"


def test_table_cells_round_to_one_decimal_and_csv_cells_to_two(tmp_path):
    _runs(tmp_path, {"a": {"x2": [0.12345, 0.23456]}})
    write_leaderboard(collect(tmp_path, ["a"]), ["x2"], tmp_path, "t")
    # mean 17.9005, sample std 7.856...
    assert _md_rows(tmp_path)["a"]["x2"] == "17.9 ± 7.9"
    assert (_csv(tmp_path)["a"]["x2_mean"], _csv(tmp_path)["a"]["x2_std"]) == ("17.90", "7.86")


# -- columns and rows --------
def test_degradation_columns_run_from_sharpest_to_smallest_whatever_the_given_order(tmp_path):
    labels = ["14px", "x8", "x2+jpeg30", "x10", "x2", "x1", "28px"]
    _runs(tmp_path, {"a": {lbl: [0.5] for lbl in labels}})
    write_leaderboard(collect(tmp_path, ["a"]), labels, tmp_path, "t")
    want = ["x1", "x2", "x2+jpeg30", "x8", "x10", "28px", "14px"]
    header = (tmp_path / "leaderboard.csv").read_text().splitlines()[0].split(",")
    assert header[6:] == [f"{lbl}_{k}" for lbl in want for k in ("mean", "std")]
    assert list(_md_rows(tmp_path)["a"])[7:] == want


def test_rows_keep_the_methods_order_and_count_their_own_seeds(tmp_path):
    _runs(tmp_path, {"zeta": {"x1": [0.1, 0.2]}, "alpha": {"x1": [0.9, 0.8, 0.7]}, "mid": {"x1": [0.5]}})
    write_leaderboard(collect(tmp_path, ["zeta", "alpha", "mid"]), ["x1"], tmp_path, "Title here")
    assert list(_csv(tmp_path)) == ["zeta", "alpha", "mid"]
    assert [_csv(tmp_path)[m]["seeds"] for m in ("zeta", "alpha", "mid")] == ["2", "3", "1"]
    md = (tmp_path / "leaderboard.md").read_text()
    assert md.startswith("# Title here\n") and "over up to 3 seeds" in md
    assert [row["seeds"] for row in _md_rows(tmp_path).values()] == ["2", "3", "1"]


def test_notes_go_under_the_table(tmp_path):
    _runs(tmp_path, {"a": {"x1": [0.5]}})
    write_leaderboard(collect(tmp_path, ["a"]), ["x1"], tmp_path, "t", ["Machine: M.", "Wall time: 1 min."])
    lines = (tmp_path / "leaderboard.md").read_text().splitlines()
    assert lines[-2:] == ["Machine: M.", "Wall time: 1 min."]
    assert lines.index("Machine: M.") > max(i for i, line in enumerate(lines) if line.startswith("| a "))


def test_cost_cells_are_the_method_s_cost_in_the_stated_units(tmp_path):
    _runs(tmp_path, {"a": {"x1": [0.5, 0.5]}, "b": {"x1": [0.5]}}, durations=[90.0, 150.0])
    cost = {"params": 11_176_512, "gmacs": 1.8234, "latency": {"ms": 12.345}, "input": [1, 3, 112, 96]}
    (tmp_path / "runs" / "a" / "cost.json").write_text(json.dumps(cost))
    write_leaderboard(collect(tmp_path, ["a", "b"]), ["x1"], tmp_path, "t")
    row = _md_rows(tmp_path)["a"]
    assert (row["params (M)"], row["GMACs"], row["CPU ms"], row["train min"], row["input"]) == (
        "11.18",
        "1.823",
        "12.35",
        "2.0",  # mean of 90 s and 150 s
        "3x112x96",
    )
    assert [_md_rows(tmp_path)["b"][c] for c in lb.COST_COLUMNS] == ["", "", "", "1.5", ""]  # no cost.json
    raw = _csv(tmp_path)["a"]
    assert (raw["params"], raw["gmacs"], raw["cpu_ms"], raw["train_s"]) == (
        "11176512",
        "1.8234",
        "12.345",
        "120.0",
    )
    assert _csv(tmp_path)["b"]["params"] == ""


def test_collect_reads_only_the_method_s_finished_seed_runs(tmp_path):
    _runs(tmp_path, {"a": {"x1": [0.5, 0.7]}, "b": {"x1": [0.1]}})
    (tmp_path / "runs" / "a" / "seed2").mkdir()  # killed before metrics.json: not a result
    (tmp_path / "runs" / "a" / "other").mkdir()
    (tmp_path / "runs" / "a" / "other" / "metrics.json").write_text(
        json.dumps({"test": {"x1": {"acc": 0.0}}})
    )
    (a,) = collect(tmp_path, ["a"])
    assert a.name == "a" and a.accuracies == {"x1": [0.5, 0.7]} and a.durations == [] and a.cost == {}


# -- protocol, budget, labels --------
def _protocol(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "p.yaml"
    path.write_text(text)
    return path


GOOD = (
    "test: [x1]\nbudget: 1.0\ncommon: []\nlatency: {}\nmethods:\n  baseline: {overrides: [method=baseline]}\n"
)


def test_a_protocol_gets_the_optional_keys_filled_in(tmp_path):
    protocol = load_protocol(_protocol(tmp_path, GOOD))
    assert protocol["datasets"] == {} and protocol["converged_budget"] is None
    assert protocol["methods"]["baseline"]["overrides"] == ["method=baseline"]


@pytest.mark.parametrize(
    ("text", "words"),
    [
        (GOOD + "extra: 1\n", "unknown keys ['extra']"),
        (GOOD.replace("budget: 1.0\n", ""), "missing keys ['budget']"),
        (GOOD.split("methods:")[0] + "methods: [baseline]\n", "must map each method"),
        (GOOD.split("methods:")[0] + "methods:\n  efc: {epochs: [a]}\n", "method efc has no overrides"),
        ("- just\n- a list\n", "is not a leaderboard protocol"),
        ("test: [x1\n", "cannot read the protocol file"),
    ],
)
def test_a_bad_protocol_is_one_line_saying_what_is_wrong(tmp_path, text, words):
    with pytest.raises(UserError) as err:
        load_protocol(_protocol(tmp_path, text))
    assert words in str(err.value) and "\n" not in str(err.value)


def test_a_missing_protocol_file_says_which_to_pass(tmp_path):
    with pytest.raises(UserError, match=r"not found: pass --protocol experiments/leaderboard/protocol\.yaml"):
        load_protocol(tmp_path / "nope.yaml")


def test_budget_rounds_epochs_up_keeps_at_least_one_and_scales_scale_keys():
    spec = {
        "overrides": ["method=drgfer"],
        "epochs": ["method.epochs", "trainer.max_epochs"],
        "scale": ["trainer.optimizer.lr"],
    }
    base = ["trainer.max_epochs=3", "trainer.optimizer.lr=0.1"]
    assert budget_overrides(spec, 0.3, base) == [
        "method.epochs=3",  # 8 x 0.3 = 2.4 -> 3
        "trainer.max_epochs=1",  # 3 x 0.3 = 0.9 -> 1
        "trainer.optimizer.lr=0.03",
    ]
    assert budget_overrides(spec, 0.01, base)[:2] == ["method.epochs=1", "trainer.max_epochs=1"]
    assert budget_overrides(spec, 2, base) == [
        "method.epochs=16",
        "trainer.max_epochs=6",
        "trainer.optimizer.lr=0.2",
    ]
    with pytest.raises(UserError, match="positive"):
        budget_overrides(spec, -1.0, base)


def test_budget_label_names_the_budget():
    assert budget_label(0.25, 0.25) == "budget 0.25"
    assert budget_label(2, None).startswith("budget 2, NOT CONVERGED")


def test_face_side_reads_fractional_factors():
    assert face_side("x2.5", 100) == 40.0 and face_side("x1", 112) == 112.0
    assert face_side("px", 100) is None and face_side("4", 100) is None


# -- provenance lines --------
def test_provenance_lines_state_machine_every_call_and_the_commands():
    calls = [
        {"wall_s": 90.0, "runs_trained": 3, "jobs": 2, "date": "2026-12-01", "command": "python b"},
        {"wall_s": 30.0, "command": "python a"},
        {"wall_s": 60.0, "runs_trained": 0, "command": "python b"},
    ]
    machine = {"cpu": "CPU X", "cores": 4, "torch": "2.13", "generator_version": 3}
    assert provenance_notes(calls, machine) == [
        "Machine: CPU X (4 cores), torch 2.13, synthetic-face generator v3.",
        "Wall time: 3.0 min in 3 call(s) of the script (1.5 min, 3 run(s) trained, 2 at a time, 2026-12-01; "
        "0.5 min; 1.0 min, 0 run(s) trained), the cost columns included.",
        "Command(s): `python a`; `python b`.",
    ]
    notes = provenance_notes([{"wall_s": 6.0}], {"cpu": "C", "cores": 1, "torch": "t"})
    assert notes == [
        "Machine: C (1 cores), torch t.",
        "Wall time: 0.1 min in 1 call(s) of the script (0.1 min), the cost columns included.",
    ]


# -- the plot --------
def test_the_plot_compares_latency_at_the_hardest_degradation(tmp_path, monkeypatch):
    """The right panel is the degradation with the lowest mean accuracy over the methods."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figures = []
    monkeypatch.setattr(plt, "close", figures.append)
    results = [
        MethodResult("a", {"x1": [0.9], "x4": [0.5], "x8": [0.6]}, cost={"latency": {"ms": 3.0}}),
        MethodResult("b", {"x1": [0.8], "x4": [0.3], "x8": [0.35]}, cost={"latency": {"ms": 9.0}}),
    ]
    lb.plot_leaderboard(results, ["x1", "x4", "x8"], tmp_path / "p.png", "t")
    (fig,) = figures
    left, right = fig.axes[:2]
    assert right.get_ylabel() == "accuracy at x4 (%)"
    sides = sorted({tuple(line.get_xdata()) for line in left.get_lines()})
    assert sides == [(12.5, 25.0, 100.0)]  # x8, x4, x1 of 100 px, ascending
    assert (tmp_path / "p.png").stat().st_size > 0
    monkeypatch.undo()
    plt.close(fig)


def test_a_summary_without_calls_has_no_previous_calls(tmp_path):
    summary = tmp_path / "leaderboard.json"
    summary.write_text(json.dumps({"methods": ["a"]}))
    assert previous_calls(summary) == []


def test_a_method_without_finished_runs_keeps_its_row_with_empty_cells(tmp_path):
    _runs(tmp_path, {"a": {"x1": [0.5]}})
    (tmp_path / "runs" / "b").mkdir(parents=True)
    write_leaderboard(collect(tmp_path, ["a", "b"]), ["x1"], tmp_path, "t")
    row = _md_rows(tmp_path)["b"]
    assert row["seeds"] == "0" and row["x1"] == "" and row["train min"] == ""
    assert _csv(tmp_path)["b"]["seeds"] == "0"


def test_the_markdown_table_has_its_separator_row(tmp_path):
    _runs(tmp_path, {"a": {"x1": [0.5], "x2": [0.4]}})
    write_leaderboard(collect(tmp_path, ["a"]), ["x1", "x2"], tmp_path, "t")
    lines = (tmp_path / "leaderboard.md").read_text().splitlines()
    head = lines.index(next(line for line in lines if line.startswith("| method")))
    assert lines[head + 1] == "|" + "---|" * (2 + len(lb.COST_COLUMNS) + 2)

"""scripts/leaderboard.py: every method under one protocol, one table, resumable."""

from __future__ import annotations

import json
import re

import pytest
from conftest import run_cli

from lrfer.config.compose import merge_overrides
from lrfer.core.errors import UserError
from lrfer.report.leaderboard import budget_label, budget_overrides, face_side, load_protocol, plain_log_axis

TINY = [
    "dataset.num_train=56",
    "dataset.num_val=28",
    "dataset.num_test=28",
    "dataset.image_size=24",
    "trainer.max_epochs=1",
    "trainer.batch_size=28",
    "trainer.num_threads=1",
]


@pytest.fixture(scope="module")
def board(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("board")
    out = tmp / "lb"
    args = ["scripts/leaderboard.py", "--methods", "baseline", "efc", "--seeds", "1", "--out", str(out)]
    proc = run_cli([*args, *TINY, f"paths.cache_dir={tmp / 'cache'}"])
    assert proc.returncode == 0, proc.stderr[-3000:] + proc.stdout[-2000:]
    return out, args + TINY + [f"paths.cache_dir={tmp / 'cache'}"], proc


def test_writes_one_table_with_every_method_and_protocol_column(board):
    out, _, proc = board
    assert {p.name for p in out.iterdir()} >= {"leaderboard.md", "leaderboard.csv", "leaderboard.png"}
    protocol = load_protocol("experiments/leaderboard/protocol.yaml")
    header = (out / "leaderboard.csv").read_text().splitlines()[0].split(",")
    for label in protocol["test"]:
        assert f"{label}_mean" in header and f"{label}_std" in header
    rows = {line.split(",")[0] for line in (out / "leaderboard.csv").read_text().splitlines()[1:]}
    assert rows == {"baseline", "efc"}
    assert "SYNTHETIC" in (out / "leaderboard.md").read_text()
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    assert summary["failed"] == [] and summary["seeds"] == 1


def test_cost_columns_come_from_the_methods(board):
    out, _, _ = board
    baseline = json.loads((out / "runs" / "baseline" / "cost.json").read_text())
    efc = json.loads((out / "runs" / "efc" / "cost.json").read_text())
    assert baseline["params"] > 10 * efc["params"]  # ResNet-18 (11 M) against EFC (0.5 M)
    assert baseline["latency"]["ms"] > 0 and efc["gmacs"] > 0


def test_a_finished_run_is_not_trained_again(board):
    out, args, _ = board
    metrics = out / "runs" / "efc" / "seed0" / "metrics.json"
    before = metrics.stat().st_mtime_ns
    proc = run_cli([*args[:3], "efc", *args[4:]])
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "efc seed 0: finished earlier" in proc.stdout
    assert metrics.stat().st_mtime_ns == before


def test_budget_scales_every_epoch_key_and_keeps_null_ones():
    spec = {"overrides": ["method=drgfer"], "epochs": ["method.epochs", "method.rrn_epochs"]}
    assert budget_overrides(spec, 0.5, []) == ["method.epochs=4"]  # drgfer: 8 epochs, rrn_epochs null
    assert budget_overrides(spec, 1.0, []) == []
    with pytest.raises(UserError):
        budget_overrides(spec, 0.0, [])


def test_later_overrides_replace_earlier_ones_of_the_same_key():
    assert merge_overrides(["a=1", "b=2"], ["+a=3"]) == ["b=2", "+a=3"]


def test_face_side_of_plain_labels_only():
    assert face_side("x4", 100) == 25.0 and face_side("14px", 100) == 14.0
    assert face_side("x4+jpeg30", 100) is None


def test_unknown_method_stops_with_one_line(tmp_path):
    proc = run_cli(["scripts/leaderboard.py", "--methods", "nope", "--out", str(tmp_path)])
    assert proc.returncode == 2 and proc.stderr.strip().count("\n") == 0 and "nope" in proc.stderr


def test_the_table_states_machine_wall_time_and_command(board):
    out, _, _ = board
    text = (out / "leaderboard.md").read_text()
    assert "Machine: " in text and "Wall time: " in text and "python scripts/leaderboard.py" in text
    summary = json.loads((out / "leaderboard.json").read_text())
    assert summary["calls"][0]["runs_trained"] == 2 and summary["calls"][0]["jobs"] >= 1


def test_every_call_that_filled_a_folder_counts_in_its_wall_time(tmp_path):
    from lrfer.report.calls import previous_calls
    from lrfer.report.leaderboard import provenance_notes

    summary = tmp_path / "leaderboard.json"
    assert previous_calls(summary) == []
    summary.write_text(json.dumps({"calls": [{"wall_s": 600.0, "runs_trained": 4, "jobs": 2}]}))
    calls = [*previous_calls(summary), {"wall_s": 60.0, "runs_trained": 0, "jobs": 1}]
    notes = provenance_notes(calls, {"cpu": "some CPU", "cores": 2, "torch": "2.x"})
    assert "Wall time: 11.0 min in 2 call(s)" in notes[1]
    summary.write_text("{not json")
    with pytest.raises(UserError, match="not valid JSON"):
        previous_calls(summary)


def test_the_table_sums_the_runs_cpu_time_and_counts_the_runs_that_lack_it(tmp_path):
    from lrfer.report.leaderboard import collect, cpu_time_note

    for seed, metrics in enumerate([{"cpu_s": 5400.0}, {"cpu_s": 1800.0}, {"duration_s": 60.0}]):
        run = tmp_path / "runs" / "m" / f"seed{seed}"
        run.mkdir(parents=True)
        (run / "metrics.json").write_text(json.dumps({"test": {"x1": {"acc": 0.5}}, **metrics}))
    note = cpu_time_note(collect(tmp_path, ["m"]))
    assert (
        note
        == "Total CPU time of the runs: 2.00 h over 2 run(s) (metrics.json cpu_s); 1 run(s) do not record it."
    )


@pytest.mark.parametrize("dataset", ["synthetic", "rafdb", "ferplus", "fer2013", "affectnet", "kdef", "expw"])
def test_the_protocol_composes_for_every_method_on_every_dataset(dataset):
    """The default protocol works on a real dataset unchanged: its common and per-dataset overrides never
    name a key that only the synthetic faces have."""
    from lrfer.config.compose import compose_config

    protocol = load_protocol("experiments/leaderboard/protocol.yaml")
    own = protocol["datasets"].get(dataset, [])
    for name, spec in protocol["methods"].items():
        cfg = compose_config(
            merge_overrides(protocol["common"], own, [f"dataset={dataset}"], spec["overrides"])
        )
        assert cfg.dataset.name == dataset and cfg.method.name == name


def test_plot_axes_are_labelled_in_plain_numbers():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (sides, latency) = plt.subplots(1, 2)
    sides.plot([8, 64 / 6, 14, 16, 32, 64], [20, 30, 35, 40, 60, 70])
    plain_log_axis(sides, [8, 64 / 6, 14, 16, 32, 64])
    latency.plot([3.0, 25.0, 104.0], [30, 40, 50])
    plain_log_axis(latency)
    fig.canvas.draw()
    labels = [
        t.get_text() for ax in (sides, latency) for t in ax.get_xticklabels(minor=True) + ax.get_xticklabels()
    ]
    plt.close(fig)
    shown = [t for t in labels if t]
    assert shown[:6] == ["8", "10.7", "14", "16", "32", "64"]
    assert all(re.fullmatch(r"\d+(\.\d+)?", t) for t in shown), shown


def test_a_call_that_trains_nothing_writes_the_table_again_but_adds_no_call(board):
    out, args, _ = board
    table = out / "leaderboard.md"
    calls = json.loads((out / "leaderboard.json").read_text())["calls"]
    table.unlink()
    proc = run_cli(args)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert table.is_file()
    assert json.loads((out / "leaderboard.json").read_text())["calls"] == calls


def test_a_table_not_at_the_converged_budget_is_labelled_not_converged():
    assert "NOT CONVERGED" in budget_label(1.0, None)
    assert "NOT CONVERGED" in budget_label(1.0, 4.0)
    assert "NOT CONVERGED" not in budget_label(4.0, 4.0)


def test_the_default_leaderboard_protocol_is_not_yet_converged():
    protocol = load_protocol("experiments/leaderboard/protocol.yaml")
    assert "NOT CONVERGED" in budget_label(protocol["budget"], protocol["converged_budget"])


def test_mean_and_sample_std_over_seeds_from_the_run_folders(tmp_path):
    """Three seeds at 50, 60 and 70 % give 60.0 ± 10.0: the sample standard deviation (n - 1), not the
    population one (8.2); a method with one seed shows ± 0.0; the table says how many seeds each row has."""
    import csv

    from lrfer.report.leaderboard import collect, write_leaderboard

    for method, accs in {"three": [0.5, 0.6, 0.7], "one": [0.4]}.items():
        for seed, acc in enumerate(accs):
            run = tmp_path / "runs" / method / f"seed{seed}"
            run.mkdir(parents=True)
            test = {"x1": {"acc": acc, "n": 10}, "x4": {"acc": acc / 2, "n": 10}}
            (run / "metrics.json").write_text(json.dumps({"test": test, "duration_s": 60.0 * (seed + 1)}))
    results = collect(tmp_path, ["three", "one"])
    write_leaderboard(results, ["x1", "x4"], tmp_path, "t")
    rows = {r["method"]: r for r in csv.DictReader((tmp_path / "leaderboard.csv").open())}
    assert (rows["three"]["seeds"], rows["three"]["x1_mean"], rows["three"]["x1_std"]) == (
        "3",
        "60.00",
        "10.00",
    )
    assert (rows["three"]["x4_mean"], rows["three"]["x4_std"], rows["three"]["train_s"]) == (
        "30.00",
        "5.00",
        "120.0",
    )
    assert (rows["one"]["seeds"], rows["one"]["x1_mean"], rows["one"]["x1_std"]) == ("1", "40.00", "0.00")
    table = (tmp_path / "leaderboard.md").read_text()
    assert "| three | 3 |" in table and "60.0 ± 10.0" in table and "40.0 ± 0.0" in table

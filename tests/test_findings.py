"""The papers' findings (scripts/findings.py, lrfer.report.findings): one verdict rule, resumable runs."""

from __future__ import annotations

import inspect
import json
import math
import shutil
from pathlib import Path

import pytest
import torch
from conftest import compose_cfg, run_cli

from lrfer.core.errors import UserError
from lrfer.models.gmenet import BlockAttention, GMENet
from lrfer.report.calls import merge_calls
from lrfer.report.findings import (
    CLAIMS,
    CONTRADICTED,
    HOLDS,
    INCONCLUSIVE,
    Claim,
    Measure,
    RunRecord,
    copy_artefacts,
    difference,
    estimate_cpu,
    evaluate_claim,
    load_epoch_costs,
    load_findings_protocol,
    measure_values,
    plan_runs,
    plot_curves,
    provenance_lines,
    remaining_line,
    run_folder,
    runs_over_budget,
    scaled_overrides,
    validation_history,
    verdict,
)

PROTOCOL = "experiments/findings/protocol.yaml"


# -- the verdict rule, on hand-made numbers ------------------------------------------------------------------
def test_verdict_holds_when_the_papers_sign_is_beyond_two_standard_errors():
    assert verdict(2.1, 1.0) == HOLDS


def test_verdict_is_contradicted_when_the_opposite_sign_is_beyond_two_standard_errors():
    assert verdict(-2.1, 1.0) == CONTRADICTED


def test_verdict_is_inconclusive_within_two_standard_errors_either_way():
    assert verdict(1.9, 1.0) == INCONCLUSIVE
    assert verdict(-1.9, 1.0) == INCONCLUSIVE


def test_verdict_is_inconclusive_without_a_standard_error():
    assert verdict(50.0, math.inf) == INCONCLUSIVE


def test_verdict_measures_the_difference_from_the_margin():
    # "A within 1 point of B": A - B = -0.5 with se 0.1 is 0.5 above the margin of -1
    assert verdict(-0.5, 0.1, margin=-1.0) == HOLDS
    assert verdict(-1.5, 0.1, margin=-1.0) == CONTRADICTED


def _metrics(accs: dict[str, list[float]], key: str = "acc") -> dict[str, dict[int, dict]]:
    return {
        run: {seed: {"test": {"x1": {key: a / 100}}} for seed, a in enumerate(values)}
        for run, values in accs.items()
    }


def _claim(margin: float = 0.0) -> Claim:
    return Claim("P", "T1", "A > B", Measure("a", ("x1",)), Measure("b", ("x1",)), 90.0, 80.0, margin)


def test_three_seeds_give_each_verdict():
    assert evaluate_claim(_claim(), _metrics({"a": [80, 81, 82], "b": [70, 71, 72]})).verdict == HOLDS
    assert evaluate_claim(_claim(), _metrics({"a": [70, 71, 72], "b": [80, 81, 82]})).verdict == CONTRADICTED
    assert evaluate_claim(_claim(), _metrics({"a": [70, 80, 90], "b": [75, 80, 85]})).verdict == INCONCLUSIVE


def test_welch_standard_error_of_two_runs():
    diff, se, n = difference({0: 80.0, 1: 82.0, 2: 84.0}, {0: 70.0, 1: 71.0, 2: 72.0}, paired=False)
    assert diff == pytest.approx(11.0)
    assert se == pytest.approx(math.sqrt(4 / 3 + 1 / 3))
    assert n == 3


def test_paired_standard_error_uses_the_per_seed_differences():
    # the per-seed differences are 1, 1, 1: no spread, although each side varies a lot
    diff, se, _ = difference({0: 60.0, 1: 80.0, 2: 90.0}, {0: 59.0, 1: 79.0, 2: 89.0}, paired=True)
    assert diff == pytest.approx(1.0) and se == pytest.approx(0.0)


def test_a_claim_within_one_run_is_paired():
    claim = Claim("P", "T", "r > o", Measure("d", ("x1",), "acc_r"), Measure("d", ("x1",), "acc_o"), 1, 0)
    rows = {s: {"x1": {"acc_r": a / 100, "acc_o": (a - 1) / 100}} for s, a in enumerate([60, 80, 90])}
    metrics = {"d": {s: {"test": row} for s, row in rows.items()}}
    assert evaluate_claim(claim, metrics).verdict == HOLDS  # unpaired, the spread would hide the 1 point


def test_a_measure_with_alternatives_is_the_best_of_them_per_seed():
    m = Measure("d", ("x1",), "acc_x2", alternatives=(("d", "acc_x4"),))
    rows = {0: {"acc_x2": 0.5, "acc_x4": 0.7}, 1: {"acc_x2": 0.9, "acc_x4": 0.1}}
    metrics = {"d": {s: {"test": {"x1": row}} for s, row in rows.items()}}
    assert measure_values(m, metrics) == {0: pytest.approx(70.0), 1: pytest.approx(90.0)}


def test_a_params_claim_notes_our_parameter_counts():
    claim = Claim("P", "T", "a ~ b", Measure("a", ("x1",)), Measure("b", ("x1",)), 1, 1, params=True)
    metrics = {"a": {0: {"num_params": 500, "test": {}}}, "b": {0: {"num_params": 11000, "test": {}}}}
    assert "500 against 11,000 parameters (1/22)" in evaluate_claim(claim, metrics).note


def test_a_measure_averages_its_labels():
    m = Measure("r", ("x1", "x2"))
    metrics = {"r": {0: {"test": {"x1": {"acc": 0.8}, "x2": {"acc": 0.6}}}}}
    assert measure_values(m, metrics) == {0: pytest.approx(70.0)}


# -- the registry and the protocol ---------------------------------------------------------------------------
def test_every_claim_of_the_issue_is_registered_and_measured_by_protocol_runs():
    protocol = load_findings_protocol(PROTOCOL)
    tables = {(c.paper.split(" ")[0], c.table) for c in CLAIMS}
    assert tables >= {
        ("DRGFER", "Table 1"),
        ("DRGFER", "Table 3"),
        ("FSR-FER", "Table 1"),
        ("FSR-FER", "Table 2"),
        ("GME-Net", "Table 4"),
        ("EFC", "Table 1"),
        ("Residual", "Table 3"),
    }
    for claim in CLAIMS:
        assert claim.runs() <= set(protocol["runs"]), claim.text


#: experiments/gmenet/README.md's Tables 4-5 commands (the row's comment) -> the findings protocol's run.
GMENET_ROWS = {
    "Baseline (ResNet-50, read as 1.)": "gmenet_base",
    "Baseline+CBAM": "gmenet_cbam",
    "Baseline+DBAM": "gmenet_dbam",
    "Baseline+DBAM+GM (without kd)": "gmenet_nokd",
    "GME-Net": "gmenet",
}
#: What tells the ablation rows apart (the experiment configs set the rest: data, epochs, optimiser).
GMENET_SWITCHES = ("attention", "global_branch", "spatial_kernel", "kd_weight", "kd_reduction")


def test_the_findings_gmenet_rows_train_what_the_papers_ablation_commands_train():
    """One reading of GME-Net's Table 4: each findings row composes to the same switches as its command in
    experiments/gmenet/README.md (Tables 4-5), so the findings test the ablation a user would run."""
    lines = Path("experiments/gmenet/README.md").read_text().splitlines()
    commands = {}
    for line in lines:
        if line.startswith("python train.py experiment=gmenet/$E") and "#" in line:
            command, label = line.split("#", 1)
            commands[label.strip()] = [a for a in command.split()[2:] if a.startswith("method.")]
    assert set(GMENET_ROWS) <= set(commands)
    runs = load_findings_protocol(PROTOCOL)["runs"]
    for label, run in GMENET_ROWS.items():
        ours = compose_cfg(*runs[run]["overrides"]).method
        theirs = compose_cfg("experiment=gmenet/rafdb", *commands[label]).method
        got = {k: ours[k] for k in GMENET_SWITCHES if k != "kd_reduction" or ours.kd_weight > 0}
        want = {k: theirs[k] for k in GMENET_SWITCHES if k != "kd_reduction" or theirs.kd_weight > 0}
        assert got == want, label


def test_the_cbam_ablation_is_cbam_as_published():
    """Baseline+CBAM is CBAM (Woo et al., ECCV 2018): no depthwise extractors, a 7x7 spatial convolution."""
    runs = load_findings_protocol(PROTOCOL)["runs"]
    method = compose_cfg(*runs["gmenet_cbam"]["overrides"]).method
    model = GMENet(7, 64, **{k: v for k, v in method.items() if k in inspect.signature(GMENet).parameters})
    spatial = [m.spatial for m in model.modules() if isinstance(m, BlockAttention)]
    assert spatial and all(s.conv.kernel_size == (7, 7) for s in spatial)
    assert all(isinstance(s.extractor, torch.nn.Identity) for s in spatial)


def test_one_scaling_rule_a_fraction_of_the_papers_epochs_rounded_up():
    spec = {"paper_epochs": {"a": 80, "b": 50, "c": 5}, "paper_scale": {"method.s": 1.0}}
    assert scaled_overrides(spec, 0.125) == ["a=10", "b=7", "c=1", "method.s=0.125"]


def test_a_changed_override_is_another_run_folder(tmp_path):
    a = run_folder(tmp_path, "efc", 0, ["method=efc", "seed=0"])
    assert a == run_folder(tmp_path, "efc", 0, ["seed=0", "method=efc"])  # order-free
    assert a != run_folder(tmp_path, "efc", 0, ["method=efc", "seed=0", "dataset.num_train=10"])


def test_a_changed_default_of_the_trained_config_is_another_run_folder(tmp_path, monkeypatch):
    from omegaconf import OmegaConf

    import lrfer.report.findings as findings

    before = run_folder(tmp_path, "efc", 0, ["method=efc"])
    monkeypatch.setattr(findings, "compose_config", lambda o: OmegaConf.create({"method": {"epochs": -1}}))
    findings._key.cache_clear()
    assert run_folder(tmp_path, "efc", 0, ["method=efc"]) != before


def test_plan_gives_every_run_its_seed_and_scaled_epochs():
    protocol = load_findings_protocol(PROTOCOL)
    plan = plan_runs(protocol, ["drgfer"], 3, ["trainer.max_epochs=1"])
    assert sorted(plan) == [("drgfer", 0), ("drgfer", 1), ("drgfer", 2)]
    epochs = math.ceil(80 * float(protocol["fraction"]))  # DRGFER's 80 epochs per network, scaled
    assert "seed=2" in plan[("drgfer", 2)] and f"method.epochs={epochs}" in plan[("drgfer", 0)]
    assert "trainer.max_epochs=1" in plan[("drgfer", 0)]
    with pytest.raises(UserError):
        plan_runs(protocol, ["no_such_run"], 1)


# -- artefacts (the convergence rule: tests/test_findings_convergence.py) -------------------------------
def test_a_curve_whose_runs_are_gone_is_removed_and_other_files_stay(tmp_path):
    (tmp_path / "gmenet_cbam.png").write_bytes(b"old curve")
    (tmp_path / "notes.png").write_bytes(b"a user's picture")
    assert plot_curves([], tmp_path, runs=["gmenet_cbam", "efc_10px"]) == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.png"]


def test_a_runs_history_keeps_each_epochs_cpu_seconds_and_drops_the_rest(tmp_path):
    """What the copy of a run keeps of its checkpoint's history: stage, epoch, score and the epoch's CPU
    seconds (what prices a stage), not the per-degradation validation rows."""
    (tmp_path / "checkpoints").mkdir()
    entries = [
        {
            "stage": "gan",
            "epoch": 1,
            "monitor": "acc",
            "score": 0.5,
            "val": {"x2": {"acc": 0.5}},
            "cpu_s": 12.5,
        },
        {
            "stage": "gan",
            "epoch": 2,
            "monitor": "acc",
            "score": 0.6,
            "val": {"x2": {"acc": 0.6}},
        },  # older code
    ]
    torch.save({"val_history": entries}, tmp_path / "checkpoints" / "last.pt")
    assert validation_history(tmp_path) == [
        {"stage": "gan", "epoch": 1, "score": 0.5, "cpu_s": 12.5},
        {"stage": "gan", "epoch": 2, "score": 0.6},
    ]


def test_copy_keeps_the_small_files_and_never_a_checkpoint(tmp_path):
    run = tmp_path / "run"
    (run / ".hydra").mkdir(parents=True)
    (run / "checkpoints").mkdir()
    (run / "metrics.json").write_text(json.dumps({"environment": {"torch": "9.9"}, "dataset_info": {}}))
    (run / ".hydra" / "config.yaml").write_text("a: 1\n")
    (run / ".hydra" / "overrides.yaml").write_text("- a=1\n- seed=2\n")
    (run / "checkpoints" / "last.pt").write_bytes(b"not read: val_history.json is there")
    (run / "val_history.json").write_text(json.dumps([{"stage": "train", "epoch": 1, "score": 0.5}]))
    dest = tmp_path / "copy"
    assert copy_artefacts(run, dest)
    assert sorted(p.relative_to(dest).as_posix() for p in dest.rglob("*") if p.is_file()) == [
        ".hydra/config.yaml",
        ".hydra/overrides.yaml",
        "metrics.json",
        "val_history.json",
    ]
    assert not copy_artefacts(run, dest)  # a finished copy is left alone
    # the copied files carry the run's own command, end time and torch (tests/test_provenance.py)
    metrics = json.loads((dest / "metrics.json").read_text())
    history = json.loads((dest / "val_history.json").read_text())
    record = metrics["provenance"]
    assert history["provenance"] == record
    assert history["history"] == [{"stage": "train", "epoch": 1, "score": 0.5}]
    assert record["command"] == "python -m lrfer.cli.train a=1 seed=2"
    assert record["torch"] == "9.9" and record["date"].endswith(" UTC")
    assert record["machine"]["cores"] >= 1
    assert metrics["environment"] == {"torch": "9.9"}  # the run's own keys unchanged


def test_a_copy_made_before_provenance_was_embedded_gets_its_sidecars_record(tmp_path):
    # the format of the copies committed before: plain metrics.json and val_history.json, provenance.json
    dest = tmp_path / "copy"
    (dest / ".hydra").mkdir(parents=True)
    (dest / ".hydra" / "overrides.yaml").write_text("- a=1\n")
    (dest / "metrics.json").write_text(json.dumps({"test": {"x1": {"acc": 0.5}}}))
    (dest / "val_history.json").write_text(json.dumps([{"stage": "train", "epoch": 1, "score": 0.5}]))
    record = {"command": "python -m lrfer.cli.train a=1", "date": "2026-12-06 07:00 UTC", "torch": "9.9"}
    (dest / "provenance.json").write_text(json.dumps({"describes": ["metrics.json"], "provenance": record}))
    run = tmp_path / "run"  # the run itself, still in its output folder
    run.mkdir()
    (run / "metrics.json").write_text(json.dumps({"test": {"x1": {"acc": 0.5}}}))
    assert not copy_artefacts(run, dest)
    metrics = json.loads((dest / "metrics.json").read_text())
    assert metrics == {"provenance": record, "test": {"x1": {"acc": 0.5}}}
    history = json.loads((dest / "val_history.json").read_text())
    assert history == {"provenance": record, "history": [{"stage": "train", "epoch": 1, "score": 0.5}]}
    assert validation_history(dest) == history["history"]
    assert not (dest / "provenance.json").exists()


# -- the script, end to end (quick mode) ---------------------------------------------------------------------
@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("findings")
    args = ["scripts/findings.py", "--quick", "--out", str(tmp / "out"), f"paths.cache_dir={tmp / 'cache'}"]
    proc = run_cli(args)
    assert proc.returncode == 0, proc.stderr[-3000:] + proc.stdout[-2000:]
    return tmp, args, proc


def test_quick_mode_writes_the_table_plot_curves_and_run_copies(quick):
    tmp, _, proc = quick
    results = tmp / "out" / "results"
    for name in ("synthetic.md", "synthetic.csv", "synthetic.png", "calls.json"):
        assert (results / name).is_file(), name
    assert {p.name for p in (results / "curves").iterdir()} == {"efc_32px.png", "resnet18_32px.png"}
    copies = sorted(p.parent.parent.name for p in (results / "runs").glob("*/*/metrics.json"))
    assert copies == ["efc_32px", "resnet18_32px"]
    assert not list((results / "runs").rglob("*.pt"))
    md = (results / "synthetic.md").read_text()
    assert "SYNTHETIC" in md and "not converged" in md and "EFC within 1 point" in md
    assert "Total CPU time of the runs" in md and "torch" in md and "generator v3" in md
    assert "\nProvenance: command `python " in md  # the line tests/test_provenance.py checks
    calls = json.loads((results / "calls.json").read_text())
    assert calls["provenance"]["generator_version"] == 3 and len(calls["calls"]) == 1
    for metrics_file in (results / "runs").glob("*/*/metrics.json"):
        assert json.loads(metrics_file.read_text())["cpu_s"] > 0  # the run's own CPU seconds
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    assert summary["runs_trained_this_call"] == 2 and summary["failed"] == []


def test_quick_mode_reuses_finished_runs_and_trains_a_changed_override_anew(quick):
    tmp, args, _ = quick
    efc = next((tmp / "out" / "runs" / "efc_32px").glob("seed0-*/metrics.json"))
    before = efc.stat().st_mtime_ns
    proc = run_cli(args)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert json.loads(proc.stdout.strip().splitlines()[-1])["runs_trained_this_call"] == 0
    assert efc.stat().st_mtime_ns == before
    changed = run_cli([*args, "dataset.num_test=27", "--runs", "efc_32px"])
    assert changed.returncode == 0, changed.stderr[-2000:]
    assert json.loads(changed.stdout.strip().splitlines()[-1])["runs_trained_this_call"] == 1
    assert len(list((tmp / "out" / "runs" / "efc_32px").glob("seed0-*/metrics.json"))) == 2
    assert efc.stat().st_mtime_ns == before  # the old run is still there, untouched


def test_the_table_is_rebuilt_from_the_copies_alone(quick):
    tmp, args, _ = quick
    results = tmp / "out" / "results"
    assert run_cli(args).returncode == 0  # the table of these runs, written with the run folders there
    table = (results / "synthetic.csv").read_text()
    shutil.rmtree(tmp / "out" / "runs")
    proc = run_cli([*args, "--from-repo", "--results", str(results)])
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert (results / "synthetic.csv").read_text() == table


# -- a killed call resumes: its half-finished runs continue, its half-made copies are made again ------------
def test_a_run_folder_with_a_last_checkpoint_is_resumed_not_restarted(tmp_path, monkeypatch):
    import lrfer.tools.launch as launch

    commands = []
    monkeypatch.setattr(launch.subprocess, "run", lambda cmd, **kw: commands.append(cmd) or _Done())
    fresh, half = tmp_path / "fresh", tmp_path / "half"
    (half / "checkpoints").mkdir(parents=True)
    (half / "checkpoints" / "last.pt").write_bytes(b"the epochs a killed call finished")
    assert launch.train_in_subprocess(["method=efc"], fresh)[0]
    assert launch.train_in_subprocess(["method=efc"], half)[0]
    assert "trainer.resume=true" not in commands[0]
    assert "trainer.resume=true" in commands[1] and f"hydra.run.dir={half}" in commands[1]


class _Done:
    returncode = 0


def test_a_copy_left_half_made_by_a_killed_call_is_made_again(tmp_path):
    run = tmp_path / "run"
    (run / ".hydra").mkdir(parents=True)
    (run / "metrics.json").write_text(json.dumps({"test": {"x1": {"acc": 0.5}}}))
    (run / ".hydra" / "overrides.yaml").write_text("- a=1\n")
    dest = tmp_path / "copies" / "seed0-abc"
    (dest / ".hydra").mkdir(parents=True)  # killed while an older version copied file by file
    (dest / ".hydra" / "overrides.yaml").write_text("- a=1\n")
    tmp = dest.with_name(dest.name + ".tmp")  # killed before the rename
    tmp.mkdir()
    (tmp / "metrics.json").write_text("{")
    assert copy_artefacts(run, dest)
    assert json.loads((dest / "metrics.json").read_text())["test"] == {"x1": {"acc": 0.5}}
    assert not tmp.exists()


def test_the_estimate_prices_each_scaled_key_of_each_seed():
    plan = {
        ("d", 0): ["method=drgfer", "method.epochs=20", "method.rrn_epochs=20", "seed=0"],
        ("d", 1): ["method=drgfer", "method.epochs=20", "method.rrn_epochs=20", "seed=1"],
        ("f", 0): ["method.extractor_epochs=10", "method.schedule_scale=0.25", "seed=0"],
    }
    costs = {"runs": {"d": {"cpu_s": {"method.epochs": 200, "method.rrn_epochs": 65}}}}
    costs["runs"]["f"] = {"cpu_s": {"method.extractor_epochs": 5, "method.schedule_scale": 1000}}
    assert estimate_cpu(plan, costs) == {"d": 2 * (20 * 200 + 20 * 65), "f": 10 * 5 + 0.25 * 1000}
    with pytest.raises(UserError, match="no cost for run"):
        estimate_cpu({("x", 0): ["seed=0"]}, costs)


def test_what_is_still_to_run_is_the_unfinished_runs_estimate_labelled_as_one():
    plan = {("d", 0): ["method.epochs=20"], ("d", 1): ["method.epochs=20"], ("f", 0): ["method.epochs=10"]}
    costs = {"runs": {"d": {"cpu_s": {"method.epochs": 360}}, "f": {"cpu_s": {"method.epochs": 720}}}}
    line = remaining_line(plan, {("d", 0)}, costs)
    assert line.startswith("Still to run: 2 of the 3 planned run(s), about 4 CPU h (an estimate from ")
    assert line.endswith("not a measurement): d 1 (2.0 h), f 1 (2.0 h).")
    assert remaining_line(plan, set(plan), costs) == "Still to run: none of the 3 planned run(s)."


def test_only_runs_estimated_over_the_budget_are_left_out_each_seed_on_its_own():
    plan = {
        ("cheap", 0): ["method.epochs=10", "seed=0"],
        ("dear", 0): ["method.epochs=10", "seed=0"],
        ("dear", 1): ["method.epochs=10", "seed=1"],
    }
    costs = {"runs": {"cheap": {"cpu_s": {"method.epochs": 36}}, "dear": {"cpu_s": {"method.epochs": 720}}}}
    assert runs_over_budget(plan, costs, 3600) == {("dear", 0): 7200.0, ("dear", 1): 7200.0}
    assert runs_over_budget(plan, costs, 7200) == {}  # at the budget: started


def test_a_call_with_a_run_budget_starts_no_run_estimated_over_it(tmp_path):
    costs = tmp_path / "costs.yaml"
    costs.write_text(
        "runs:\n  efc_32px: {cpu_s: {method.epochs: 144}}\n  resnet18_32px: {cpu_s: {method.epochs: 0.72}}\n"
    )
    out = ["--out", str(tmp_path / "out"), f"paths.cache_dir={tmp_path / 'cache'}", "--costs", str(costs)]
    proc = run_cli(["scripts/findings.py", "--quick", *out, "--max-run-hours", "0.001"])
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "efc_32px seed 0: not started, estimated at 2.00 h of CPU" in proc.stdout
    assert "resnet18_32px seed 0: not started" in proc.stdout  # 50 epochs x 0.72 s = 36 s > 3.6 s
    assert json.loads(proc.stdout.strip().splitlines()[-1])["runs_trained_this_call"] == 0
    refused = run_cli(["scripts/findings.py", "--quick", *out, "--max-run-hours", "0"])
    assert refused.returncode != 0 and "--max-run-hours must be positive" in refused.stderr
    assert "Traceback" not in refused.stderr


def test_the_committed_cost_file_prices_every_run_of_the_protocol():
    protocol = load_findings_protocol(PROTOCOL)
    plan = plan_runs(protocol, list(protocol["runs"]), 1)
    estimate = estimate_cpu(plan, load_epoch_costs("experiments/findings/epoch_costs.yaml"))
    assert set(estimate) == set(protocol["runs"]) and min(estimate.values()) > 0


def test_the_calls_on_record_stay_when_a_new_output_folder_adds_its_own():
    command = "python scripts/findings.py"
    old = {"date": "2026-12-06 06:54 UTC", "command": command, "code": "a", "runs_trained": 11}
    running = {"date": "2026-12-06 09:30 UTC", "command": command, "code": "b", "runs_trained": 1}
    later = {**running, "runs_trained": 5}
    assert merge_calls([old, running], [later]) == [old, later]


# -- defects found by the findings (issue 29, item 3) --------------------------------------------------------
def test_the_efc_comparison_resnet18_costs_what_the_papers_does():
    """EFC's Table 1 compares with ResNet-18 at 0.035 GFLOPs for a 32 px face: torchvision's network with its
    ImageNet strides (0.037 GMACs). The stride-reduced variant (method.small_input=true, the zoo's default)
    costs 0.555 GMACs, 16 times the paper's, and is a far stronger network at 32 px: the findings compared EFC
    with it until this test."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from lrfer.config.compose import compose_config
    from lrfer.models.zoo import build_zoo

    protocol = load_findings_protocol(PROTOCOL)
    cfg = compose_config(plan_runs(protocol, ["resnet18_32px"], 1)[("resnet18_32px", 0)])
    net = build_zoo(7, 32, cfg.method.arch, small_input=cfg.method.small_input).eval()
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        net(torch.zeros(1, 3, 32, 32))
    gmacs = counter.get_total_flops() / 2 / 1e9
    assert 0.035 / 2 <= gmacs <= 0.035 * 2, f"{gmacs:.3f} GMACs at 32 px; the paper's ResNet-18: 0.035 GFLOPs"


def test_the_efc_comparison_networks_are_torchvisions_own_as_the_paper_ran_them():
    """The paper could not run several competitors at 20 and 10 px "due to feature map dimensional
    adjustments": it ran them unmodified. Both comparison runs use the stock strides."""
    protocol = load_findings_protocol(PROTOCOL)
    for run in ("resnet18_32px", "mobilenetv3s_10px"):
        assert "method.small_input=false" in protocol["runs"][run]["overrides"], run


def test_the_findings_gmenet_distils_with_the_papers_eq_11():
    """GME-Net's eq. 11 halves the two attention terms (kd_reduction=paper, the experiment configs' choice);
    the method's quick default (sum) gives the distillation twice the paper's weight."""
    from lrfer.config.compose import compose_config

    protocol = load_findings_protocol(PROTOCOL)
    cfg = compose_config(plan_runs(protocol, ["gmenet"], 1)[("gmenet", 0)])
    assert cfg.method.kd_weight == 5.0 and cfg.method.kd_reduction == "paper"


def test_soft_and_hard_voting_are_two_votes_of_the_same_networks_compared_per_seed():
    claim = next(c for c in CLAIMS if c.text.startswith("soft voting >= hard voting"))
    assert claim.a.runs() == claim.b.runs() == {"voting_soft"}
    # soft beats hard by 1 point on every seed; unpaired, the 10-point spread over seeds would hide it
    rows = {s: {"x1": {"acc_soft": (a + 1) / 100, "acc_hard": a / 100}} for s, a in enumerate([60, 70, 80])}
    metrics = {"voting_soft": {s: {"test": row} for s, row in rows.items()}}
    assert evaluate_claim(claim, metrics).verdict == HOLDS
    protocol = load_findings_protocol(PROTOCOL)
    assert "method.eval_all_votings=true" in protocol["runs"]["voting_soft"]["overrides"]


def test_a_resumed_runs_copy_says_its_cpu_time_counts_only_its_last_start(tmp_path):
    run = tmp_path / "runs" / "seed0-abc"
    (run / ".hydra").mkdir(parents=True)
    (run / "metrics.json").write_text(json.dumps({"cpu_s": 20.0, "test": {}}))
    (run / ".hydra" / "overrides.yaml").write_text("- a=1\n")
    log = run.with_suffix(".log")  # what train_in_subprocess appends: one "$ command" line per start
    log.write_text("$ python -m lrfer.cli.train a=1\nepoch 1\n")
    dest = tmp_path / "copy"
    assert copy_artefacts(run, dest)
    assert "starts" not in json.loads((dest / "metrics.json").read_text())["provenance"]
    log.write_text(log.read_text() + "$ python -m lrfer.cli.train a=1 trainer.resume=true\nepoch 2\n")
    assert not copy_artefacts(run, dest)  # the copy learns it (a copy made before the resume was counted)
    metrics = json.loads((dest / "metrics.json").read_text())
    assert metrics["provenance"]["starts"] == 2
    assert json.loads((dest / "val_history.json").read_text())["provenance"]["starts"] == 2
    record = RunRecord("r", 0, dest, metrics)
    assert "1 of them were stopped and resumed" in " ".join(provenance_lines([record], [], 0.5))


def test_a_resumed_run_that_records_its_earlier_starts_cpu_time_is_not_called_a_lower_bound(tmp_path):
    run = tmp_path / "runs" / "seed0-abc"
    (run / ".hydra").mkdir(parents=True)
    (run / "metrics.json").write_text(json.dumps({"cpu_s": 30.0, "cpu_s_earlier_starts": 10.0, "test": {}}))
    (run / ".hydra" / "overrides.yaml").write_text("- a=1\n")
    run.with_suffix(".log").write_text("$ python -m lrfer.cli.train a=1\n$ python -m lrfer.cli.train a=1\n")
    dest = tmp_path / "copy"
    copy_artefacts(run, dest)
    metrics = json.loads((dest / "metrics.json").read_text())
    assert metrics["provenance"]["starts"] == 2
    lines = " ".join(provenance_lines([RunRecord("r", 0, dest, metrics)], [], 0.5))
    assert "Total CPU time of the runs: " in lines and "lower bound" not in lines

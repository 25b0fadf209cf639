"""The converged leaderboard (experiments/leaderboard/converged.yaml): built from the papers' findings runs
where the two overlap, each shared run trained once and tested at the leaderboard's degradations from its
checkpoint, which must first reproduce the run's own test accuracy."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml
from conftest import REPO, run_cli

from lrfer.config.compose import compose_config, merge_overrides
from lrfer.config.validate import validate_config
from lrfer.core.errors import UserError
from lrfer.report.extra_test import EXTRA_TEST_FILE
from lrfer.report.findings import load_findings_protocol, plan_runs
from lrfer.report.leaderboard import collect, load_protocol
from lrfer.tools.retest import retest_at

CONVERGED = REPO / "experiments" / "leaderboard" / "converged.yaml"
FINDINGS = REPO / "experiments" / "findings" / "protocol.yaml"


def test_the_converged_leaderboard_trains_on_the_findings_faces_and_tests_as_the_quick_one():
    converged, findings = load_protocol(CONVERGED), load_findings_protocol(FINDINGS)
    assert converged["common"] == findings["common"]
    assert Path(converged["findings"]) == FINDINGS.resolve()
    assert converged["test"] == load_protocol(REPO / "experiments" / "leaderboard" / "protocol.yaml")["test"]
    reused = {spec["findings_run"] for spec in converged["methods"].values() if spec.get("findings_run")}
    assert reused and reused <= set(findings["runs"])


def test_a_findings_run_without_a_findings_protocol_stops_with_one_line(tmp_path):
    path = tmp_path / "p.yaml"
    path.write_text(yaml.safe_dump({**yaml.safe_load(CONVERGED.read_text()), "findings": None}))
    with pytest.raises(UserError, match=r"method \w+ has a findings_run but the protocol names no findings"):
        load_protocol(path)


def test_a_reused_runs_extra_labels_join_its_own_and_never_replace_them(tmp_path):
    run = tmp_path / "f" / "seed0-abc"
    run.mkdir(parents=True)
    (run / "metrics.json").write_text(json.dumps({"test": {"x1": {"acc": 0.8}}, "duration_s": 60.0}))
    extra = {"test": {"x1": {"acc": 0.1}, "x8": {"acc": 0.4}}}
    (run / EXTRA_TEST_FILE).write_text(json.dumps(extra))
    (result,) = collect(tmp_path / "lb", ["m"], {"m": [run]})
    assert result.accuracies == {"x1": [0.8], "x8": [0.4]}


def test_a_damaged_extra_test_record_stops_with_one_line_and_is_left_as_it_is(tmp_path):
    run = tmp_path / "f" / "seed0-abc"
    run.mkdir(parents=True)
    (run / "metrics.json").write_text(json.dumps({"test": {"x1": {"acc": 0.8}}}))
    (run / EXTRA_TEST_FILE).write_text("{not json")
    with pytest.raises(UserError, match="is not a test record: remove it and the next call tests that run"):
        collect(tmp_path / "lb", ["m"], {"m": [run]})
    assert (run / EXTRA_TEST_FILE).read_text() == "{not json"


# -- end to end: a findings run (the quick mode's) reused by the leaderboard --------------------------------
@pytest.fixture(scope="module")
def shared(tmp_path_factory):
    """The findings' quick runs, then a leaderboard whose one method is the quick efc_32px run, tested there
    at 32px (its own label) and x2 (not in its test)."""
    tmp = tmp_path_factory.mktemp("converged")
    overrides = [*load_findings_protocol(FINDINGS)["quick"]["overrides"], f"paths.cache_dir={tmp / 'cache'}"]
    findings = run_cli(["scripts/findings.py", "--quick", "--out", str(tmp / "findings"), *overrides])
    assert findings.returncode == 0, findings.stderr[-3000:]
    protocol = {
        "test": ["32px", "x2"],
        "budget": 1.0,
        "findings": str(FINDINGS),
        "common": ["logger=none"],
        "latency": {"threads": 1, "warmup": 1, "repeats": 1, "iters": 2},
        "methods": {"efc": {"findings_run": "efc_32px"}},
    }
    (tmp / "lb.yaml").write_text(yaml.safe_dump(protocol))
    args = ["scripts/leaderboard.py", "--protocol", str(tmp / "lb.yaml"), "--seeds", "1"]
    args += ["--findings-out", str(tmp / "findings"), "--out", str(tmp / "lb"), *overrides]
    board = run_cli(args)
    assert board.returncode == 0, board.stderr[-3000:] + board.stdout[-2000:]
    (run,) = (tmp / "findings" / "runs" / "efc_32px").glob("seed0-*/")
    return tmp, args, board, run


def test_a_method_with_a_findings_run_reuses_that_run_instead_of_training_its_own(shared):
    tmp, _, board, _ = shared
    assert "efc seed 0: finished earlier" in board.stdout and "0 run(s) to train" in board.stdout
    assert not (tmp / "lb" / "runs" / "efc" / "seed0").exists()


def test_a_reused_run_is_tested_from_its_checkpoint_at_the_labels_its_own_test_lacked(shared):
    tmp, _, _, run = shared
    extra = json.loads((run / EXTRA_TEST_FILE).read_text())
    assert set(extra["test"]) == {"x2"} and extra["checked_against"] == "32px"
    own = json.loads((run / "metrics.json").read_text())["test"]["32px"]["acc"]
    table = (tmp / "lb" / "leaderboard.csv").read_text().splitlines()
    header, row = table[0].split(","), table[1].split(",")
    cells = dict(zip(header, row, strict=True))
    assert float(cells["32px_mean"]) == pytest.approx(100 * own, abs=0.01)
    assert float(cells["x2_mean"]) == pytest.approx(100 * extra["test"]["x2"]["acc"], abs=0.01)


def test_a_second_call_tests_nothing_again(shared):
    _, args, _, run = shared
    before = (run / EXTRA_TEST_FILE).stat().st_mtime_ns
    again = run_cli(args)
    assert again.returncode == 0, again.stderr[-2000:]
    assert (run / EXTRA_TEST_FILE).stat().st_mtime_ns == before


def test_a_checkpoint_that_does_not_reproduce_the_runs_own_test_is_refused(shared, tmp_path):
    _, _, _, run = shared
    copy = tmp_path / run.name
    shutil.copytree(run, copy)
    metrics = json.loads((copy / "metrics.json").read_text())
    metrics["test"]["32px"]["acc"] += 0.01  # the model on disk is not the one that was tested
    (copy / "metrics.json").write_text(json.dumps(metrics))
    with pytest.raises(UserError, match="no checkpoint reproduces its own test accuracy at 32px"):
        retest_at(copy, ["x2"])


@pytest.mark.parametrize("run", ["baseline_x1", "efc_64px"])
def test_the_leaderboards_own_methods_are_findings_runs_at_its_input_size(run):
    """The two methods no finding trains are findings runs too: on the findings' faces, cosine, at the
    leaderboard's 64 px input, tested at its degradations (leaderboard)."""
    findings = load_findings_protocol(FINDINGS)
    overrides = plan_runs(findings, [run], 1)[(run, 0)]
    cfg = compose_config(
        merge_overrides(overrides, [f"degrade.test=[{','.join(findings['leaderboard']['test'])}]"])
    )
    validate_config(cfg, warn=False)
    assert cfg.dataset.num_train == 3000 and cfg.trainer.scheduler.name == "cosine"
    assert cfg.degrade.input_size == 64 and run in findings["leaderboard"]["runs"]


def test_the_findings_test_at_the_leaderboards_degradations_the_runs_it_reuses():
    """The findings protocol's ``leaderboard`` (the runs retested as they finish) is the converged
    leaderboard's: the same test labels, the same runs."""
    converged, findings = load_protocol(CONVERGED), load_findings_protocol(FINDINGS)
    reused = {spec["findings_run"] for spec in converged["methods"].values() if spec.get("findings_run")}
    assert findings["leaderboard"]["test"] == converged["test"]
    assert set(findings["leaderboard"]["runs"]) == reused


def test_a_leaderboard_run_the_findings_protocol_lacks_stops_with_one_line(tmp_path):
    path = tmp_path / "p.yaml"
    protocol = yaml.safe_load(FINDINGS.read_text())
    path.write_text(yaml.safe_dump({**protocol, "leaderboard": {"test": ["x1"], "runs": ["nope"]}}))
    with pytest.raises(UserError, match=r"leaderboard runs \['nope'\] are not in runs"):
        load_findings_protocol(path)


@pytest.mark.slow  # two processes end to end (findings, then leaderboard), ~35 s on 2 cores: `pytest -m slow`
def test_a_findings_run_the_leaderboard_reuses_keeps_its_leaderboard_test_in_its_copy(tmp_path):
    """A finished findings run is tested at the leaderboard's labels while its checkpoint is there, and the
    rows travel with its copy (with the copy's provenance): on a machine without the run folder, the
    leaderboard reads the run from its copy, trains nothing and shows the copy's rows."""
    protocol = yaml.safe_load(FINDINGS.read_text())
    protocol["leaderboard"] = {"test": ["x2", "32px"], "runs": ["efc_32px"]}
    (tmp_path / "p.yaml").write_text(yaml.safe_dump(protocol))
    args = [
        "scripts/findings.py",
        "--quick",
        "--protocol",
        str(tmp_path / "p.yaml"),
        "--out",
        str(tmp_path / "out"),
    ]
    args += [f"paths.cache_dir={tmp_path / 'cache'}", "--runs", "efc_32px"]
    proc = run_cli(args)
    assert proc.returncode == 0, proc.stderr[-3000:] + proc.stdout[-2000:]
    (copy,) = (tmp_path / "out" / "results" / "runs" / "efc_32px").glob("seed0-*/")
    (run,) = (tmp_path / "out" / "runs" / "efc_32px").glob("seed0-*/")
    extra = json.loads((copy / EXTRA_TEST_FILE).read_text())
    assert set(extra["test"]) == {"x2"} and extra["checked_against"] == "32px"  # 32px: the run's own test
    assert extra["test"] == json.loads((run / EXTRA_TEST_FILE).read_text())["test"]
    assert extra["provenance"] == json.loads((copy / "metrics.json").read_text())["provenance"]
    (result,) = collect(tmp_path / "lb", ["efc"], {"efc": [copy]})
    assert set(result.accuracies) == {"32px", "x2"}
    board = {
        "test": ["32px", "x2"],
        "budget": 1.0,
        "findings": str(tmp_path / "p.yaml"),
        "common": ["logger=none"],
        "latency": {"threads": 1, "warmup": 1, "repeats": 1, "iters": 2},
        "methods": {"efc": {"findings_run": "efc_32px"}},
    }
    (tmp_path / "lb.yaml").write_text(yaml.safe_dump(board))
    shutil.rmtree(tmp_path / "out" / "runs")  # on another machine: only the committed copies
    args = ["scripts/leaderboard.py", "--protocol", str(tmp_path / "lb.yaml"), "--seeds", "1"]
    args += [
        "--findings-out",
        str(tmp_path / "gone"),
        "--findings-results",
        str(tmp_path / "out" / "results"),
    ]
    args += ["--out", str(tmp_path / "lb"), f"paths.cache_dir={tmp_path / 'cache'}"]
    args += load_findings_protocol(FINDINGS)["quick"]["overrides"]
    table = run_cli(args)
    assert table.returncode == 0, table.stderr[-3000:] + table.stdout[-2000:]
    assert (
        f"efc seed 0: finished earlier ({copy.resolve()})" in table.stdout
        and "0 run(s) to train" in table.stdout
    )
    cells = dict(
        zip(*(row.split(",") for row in (tmp_path / "lb" / "leaderboard.csv").read_text().splitlines()[:2]))
    )
    assert float(cells["x2_mean"]) == pytest.approx(100 * extra["test"]["x2"]["acc"], abs=0.01)

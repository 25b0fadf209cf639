"""scripts/findings.py reuses a finished run only when its overrides and the generator version match, also
when it rebuilds the table from the committed copies alone (--from-repo)."""

from __future__ import annotations

import json

import pytest
import yaml
from conftest import run_cli

from lrfer.report.findings import load_findings_protocol, plan_runs, run_folder

PROTOCOL = "experiments/findings/protocol.yaml"


def _copy_of_another_generator(results):
    """A finished copy of the quick mode's efc_32px, seed 0 (its overrides, its folder), whose faces came
    from generator v2."""
    protocol = load_findings_protocol(PROTOCOL)
    overrides = plan_runs(protocol, ["efc_32px"], 1, protocol["quick"]["overrides"])[("efc_32px", 0)]
    copy = run_folder(results / "runs", "efc_32px", 0, overrides)
    (copy / ".hydra").mkdir(parents=True)
    (copy / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(list(overrides)))
    metrics = {"test": {"32px": {"acc": 0.9}}, "dataset_info": {"generated": True, "generator_version": 2}}
    (copy / "metrics.json").write_text(json.dumps(metrics))
    return copy


@pytest.mark.parametrize("mode", ["--from-repo", "--collect"])
def test_the_table_refuses_a_finished_copy_of_another_face_generator(tmp_path, mode):
    """``--from-repo`` (the table from the committed copies alone) and ``--collect`` (copy finished runs,
    train nothing) stop at a copy whose faces came from another generator, naming it."""
    results = tmp_path / "results"
    copy = _copy_of_another_generator(results)
    args = ["scripts/findings.py", "--quick", mode, "--results", str(results), "--out", str(tmp_path / "out")]
    proc = run_cli(args)
    assert proc.returncode != 0 and not (results / "synthetic.md").exists()
    assert f"{copy} was made with dataset generator_version=2, this is 3" in proc.stderr


def _finished_copy(results, protocol, fraction: float, seed: int, finals: float) -> None:
    """A finished generator-v3 copy of the quick efc_32px at ``fraction`` whose validation ends at
    ``finals`` (%)."""
    plan = plan_runs({**protocol, "fraction": fraction}, ["efc_32px"], 2, protocol["quick"]["overrides"])
    copy = run_folder(results / "runs", "efc_32px", seed, plan[("efc_32px", seed)])
    (copy / ".hydra").mkdir(parents=True)
    (copy / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(list(plan[("efc_32px", seed)])))
    metrics = {"test": {"32px": {"acc": 0.8}}, "dataset_info": {"generated": True, "generator_version": 3}}
    (copy / "metrics.json").write_text(json.dumps(metrics))
    history = [{"stage": "train", "epoch": e, "score": (finals - 3 + e) / 100} for e in (1, 2, 3)]
    (copy / "val_history.json").write_text(json.dumps(history))


def test_the_table_checks_the_budget_against_the_runs_at_the_protocols_check_fraction(tmp_path):
    protocol = {**load_findings_protocol(PROTOCOL), "fraction": 0.5, "check_fraction": 0.25}
    path = tmp_path / "protocol.yaml"
    path.write_text(yaml.safe_dump(protocol))
    results = tmp_path / "results"
    for seed, (short, long_) in enumerate([(70.0, 78.0), (71.0, 79.0)]):
        _finished_copy(results, protocol, 0.25, seed, short)
        _finished_copy(results, protocol, 0.5, seed, long_)
    args = ["scripts/findings.py", "--quick", "--seeds", "2", "--from-repo", "--protocol", str(path)]
    proc = run_cli([*args, "--results", str(results)])
    assert proc.returncode == 0, proc.stderr[-2000:]
    md = (results / "synthetic.md").read_text()
    assert "| efc_32px | train | 0.25 -> 0.5 | +8.0, +8.0 | +8.0 | 0.7 | **no** |" in md

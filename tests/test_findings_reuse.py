"""scripts/findings.py reuses a finished run only when its overrides and the generator version match, also
when it rebuilds the table from the committed copies alone (--from-repo)."""

from __future__ import annotations

import json

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


def test_the_table_from_the_copies_alone_refuses_a_run_of_another_face_generator(tmp_path):
    results = tmp_path / "results"
    copy = _copy_of_another_generator(results)
    proc = run_cli(["scripts/findings.py", "--quick", "--from-repo", "--results", str(results)])
    assert proc.returncode != 0 and not (results / "synthetic.md").exists()
    assert f"{copy} was made with dataset generator_version=2, this is 3" in proc.stderr

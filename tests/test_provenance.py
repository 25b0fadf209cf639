"""Every committed results JSON says where it came from (issue 26): command, date, machine, torch version, and
the face generator's version for results on synthetic faces (lrfer.report.provenance)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import REPO

from lrfer.report.provenance import REQUIRED, provenance

RESULTS = sorted((REPO / "experiments").rglob("*.json")) + sorted((REPO / "experiments").rglob("*.jsonl"))


def _record(path: Path) -> dict | None:
    """The file's ``provenance``: a key of a JSON object, the first line of a JSON-lines file."""
    text = path.read_text()
    first = json.loads(text.splitlines()[0]) if path.suffix == ".jsonl" else json.loads(text)
    return first.get("provenance") if isinstance(first, dict) else None


def missing_fields(record: dict | None, synthetic: bool) -> list[str]:
    """The provenance fields ``record`` lacks or leaves empty (``generator_version`` on synthetic faces)."""
    if not isinstance(record, dict):
        return ["provenance"]
    wanted = [*REQUIRED, "generator_version"] if synthetic else list(REQUIRED)
    missing = [key for key in wanted if record.get(key) in (None, "", {})]
    machine = record.get("machine")
    if isinstance(machine, dict):
        missing += [f"machine.{key}" for key in ("cpu", "cores") if not machine.get(key)]
    return missing


def _on_synthetic_faces(path: Path) -> bool:
    return "synthetic" in path.name or "calibration" in path.name


def test_there_are_committed_results_to_check():
    assert len(RESULTS) >= 10, [str(p) for p in RESULTS]


@pytest.mark.parametrize("path", RESULTS, ids=lambda p: str(p.relative_to(REPO)))
def test_a_committed_results_file_carries_its_provenance(path):
    missing = missing_fields(_record(path), _on_synthetic_faces(path))
    assert not missing, f"{path.relative_to(REPO)} lacks {', '.join(missing)} (lrfer.report.provenance)"


def test_the_check_fails_on_a_file_without_provenance_or_with_a_field_missing(tmp_path):
    bare = tmp_path / "result.json"
    bare.write_text(json.dumps({"acc": 0.9, "torch": "2.13.0+cpu"}))
    assert missing_fields(_record(bare), synthetic=False) == ["provenance"]
    record = provenance(synthetic=True)
    assert missing_fields(record, synthetic=True) == []
    for key in [*REQUIRED, "generator_version"]:
        partial = {k: v for k, v in record.items() if k != key}
        assert missing_fields(partial, synthetic=True) == [key]
    no_cores = {**record, "machine": {"cpu": record["machine"]["cpu"]}}
    assert missing_fields(no_cores, synthetic=False) == ["machine.cores"]
    lines = tmp_path / "rows.jsonl"
    lines.write_text(json.dumps({"round": 0}) + "\n" + json.dumps({"provenance": record}) + "\n")
    assert missing_fields(_record(lines), synthetic=False) == ["provenance"]  # it must come first


def test_a_scripts_provenance_names_this_command_machine_torch_and_generator(monkeypatch):
    import torch

    from lrfer.data.synthetic import GENERATOR_VERSION

    monkeypatch.setattr("sys.argv", ["scripts/bench_cpu.py", "--repeats", "15", "--out", "a b"])
    record = provenance(synthetic=True)
    assert record["command"] == "python scripts/bench_cpu.py --repeats 15 --out 'a b'"
    assert record["torch"] == torch.__version__
    assert record["generator_version"] == GENERATOR_VERSION
    assert record["machine"]["cores"] >= 1 and record["machine"]["cpu"]
    assert record["date"].endswith(" UTC") and record["date"][:2] == "20"
    assert "generator_version" not in provenance()

"""Every committed result under experiments/ says where it came from (issue 26): command, date, machine, torch
version, and the face generator's version for results on synthetic faces (lrfer.report.provenance).

JSON files carry a ``provenance`` object (the first line of a JSON-lines file); markdown tables a
``Provenance:`` line (or, for the leaderboard, the ``Machine:`` / ``Command(s):`` lines its script writes); a
measured CSV without a markdown twin a ``<name>.provenance.json`` beside it. CSVs of a paper's published
numbers cite the paper in their folder's README instead."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from conftest import REPO

from lrfer.report.provenance import REQUIRED, portable_command, provenance, script_command

RESULTS = sorted((REPO / "experiments").rglob("*.json")) + sorted((REPO / "experiments").rglob("*.jsonl"))


def _record(path: Path) -> dict | None:
    """The file's ``provenance``: a key of a JSON object, the first line of a JSON-lines file; else that of
    a ``provenance.json`` beside it which lists the file under ``describes`` (a run's copied files, whose
    format is the run's: ``experiments/findings/runs/``)."""
    text = path.read_text()
    first = json.loads(text.splitlines()[0]) if path.suffix == ".jsonl" else json.loads(text)
    if isinstance(first, dict) and "provenance" in first:
        return first["provenance"]
    sidecar = path.with_name("provenance.json")
    if sidecar.is_file() and sidecar != path:
        covering = json.loads(sidecar.read_text())
        if path.name in covering.get("describes", []):
            return covering.get("provenance")
    return None


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
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.json").write_text(json.dumps({"acc": 0.9}))
    (run / "val_history.json").write_text(json.dumps([{"epoch": 1, "score": 0.5}]))
    assert missing_fields(_record(run / "metrics.json"), synthetic=False) == ["provenance"]
    (run / "provenance.json").write_text(json.dumps({"describes": ["metrics.json"], "provenance": record}))
    assert missing_fields(_record(run / "metrics.json"), synthetic=True) == []
    assert missing_fields(_record(run / "val_history.json"), synthetic=False) == ["provenance"]  # not listed


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


TABLES = sorted(p for p in (REPO / "experiments").rglob("*.md") if p.name != "README.md")
#: CSVs that hold measurements (the rest hold a paper's numbers: ``*_paper.csv``, ``table<N>_<name>.csv``).
MEASURED_CSVS = sorted(
    p
    for p in (REPO / "experiments").rglob("*.csv")
    if any(word in p.stem for word in ("synthetic", "measured", "model_stats", "calibration"))
)


def missing_in_markdown(text: str, synthetic: bool) -> list[str]:
    """What a markdown result table's provenance lines lack: command, date, machine, torch (and generator)."""
    wanted = {
        "command": r"[Cc]ommand",
        "date": r"\d{4}-\d\d-\d\d",
        "machine": r"[Mm]achine",
        "torch": r"torch \d",
    }
    if synthetic:
        wanted["generator_version"] = r"generator v\d"
    tail = "\n".join(line for line in text.splitlines() if not line.startswith("|"))  # not the table cells
    return [key for key, pattern in wanted.items() if not re.search(pattern, tail)]


@pytest.mark.parametrize("path", TABLES, ids=lambda p: str(p.relative_to(REPO)))
def test_a_committed_markdown_table_says_where_it_came_from(path):
    missing = missing_in_markdown(path.read_text(), _on_synthetic_faces(path))
    assert not missing, f"{path.relative_to(REPO)} lacks {', '.join(missing)} (add a 'Provenance:' line)"


@pytest.mark.parametrize("path", MEASURED_CSVS, ids=lambda p: str(p.relative_to(REPO)))
def test_a_measured_csv_has_a_table_or_a_provenance_file_beside_it(path):
    twin, sidecar = path.with_suffix(".md"), path.with_name(path.stem + ".provenance.json")
    assert twin.is_file() or sidecar.is_file(), f"{path.relative_to(REPO)}: no {twin.name} or {sidecar.name}"
    if sidecar.is_file():
        assert json.loads(sidecar.read_text())["describes"] == path.name


def test_the_markdown_check_fails_without_provenance_lines():
    table = "| run | x1 |\n|---|---|\n| a command 2026-12-02 machine torch 2.1 generator v3 | 1 |\n"
    assert missing_in_markdown(table, synthetic=True) == [
        "command",
        "date",
        "machine",
        "torch",
        "generator_version",
    ]
    footer = "Provenance: command `x`; date 2026-12-02; machine AMD; torch 2.13.0+cpu; generator v3."
    assert missing_in_markdown(table + "\n" + footer, synthetic=True) == []
    assert missing_in_markdown(footer.replace(" v3", ""), synthetic=True) == ["generator_version"]


def test_a_recorded_command_names_the_checkout_and_its_neighbours_by_relative_paths():
    argv = [
        "python",
        "/x/repo/scripts/a.py",
        "--out",
        "/x/out",
        "--results=/x/repo/r",
        "paths.cache_dir=/x/c",
    ]
    assert (
        portable_command(argv, cwd="/x/repo")
        == "python scripts/a.py --out ../out --results=r paths.cache_dir=../c"
    )


def test_a_recorded_command_keeps_relative_paths_and_folders_elsewhere():
    argv = ["python", "scripts/a.py", "--out", "runs/a", "dataset.root=/data/RAF-DB", "--tmp", "/tmp/t"]
    assert (
        portable_command(argv, cwd="/x/repo")
        == "python scripts/a.py --out runs/a dataset.root=/data/RAF-DB --tmp /tmp/t"
    )


def test_a_scripts_provenance_records_a_portable_command(monkeypatch, tmp_path):
    checkout = tmp_path / "repo"
    checkout.mkdir()
    monkeypatch.chdir(checkout)
    monkeypatch.setattr("sys.argv", [str(checkout / "scripts" / "x.py"), "--out", str(tmp_path / "out")])
    assert provenance()["command"] == "python scripts/x.py --out ../out"


def test_a_calls_record_names_its_script_and_arguments_with_portable_paths(monkeypatch, tmp_path):
    """What scripts/findings.py and scripts/leaderboard.py record of a call (calls.json, leaderboard.json)."""
    monkeypatch.chdir(tmp_path)
    argv = ["--out", str(tmp_path.parent / "out"), "--seeds", "3", "degrade.test=[x1]"]
    recorded = script_command("scripts/f.py", argv)
    assert recorded == "python scripts/f.py --out ../out --seeds 3 degrade.test=[x1]"
    monkeypatch.setattr("sys.argv", ["scripts/f.py", "--quick"])
    assert script_command("scripts/f.py") == "python scripts/f.py --quick"


def _recorded_commands(value) -> list[str]:
    """Every ``command`` / ``copied_by`` string anywhere in a JSON value."""
    if isinstance(value, dict):
        own = [v for k, v in value.items() if k in ("command", "copied_by") and isinstance(v, str)]
        return own + [c for v in value.values() for c in _recorded_commands(v)]
    if isinstance(value, list):
        return [c for v in value for c in _recorded_commands(v)]
    return []


def test_no_committed_command_names_a_folder_of_the_machine_that_ran_it():
    """Absolute paths in a recorded command: scratch (/tmp) and dataset (/data) folders only."""
    found = {}
    for path in RESULTS:
        text = path.read_text()
        values = (
            [json.loads(line) for line in text.splitlines() if line.strip()]
            if path.suffix == ".jsonl"
            else [json.loads(text)]
        )
        for command in _recorded_commands(values):
            absolute = [
                w
                for w in re.split(r"[\s=]", command)
                if w.startswith("/") and not w.startswith(("/tmp/", "/data/"))
            ]
            if absolute:
                found[str(path.relative_to(REPO))] = absolute
    assert found == {}


LSCPU_ZEN3 = """Architecture:        x86_64
Vendor ID:           AuthenticAMD
Model name:          AMD EPYC
CPU family:          25
Model:               1
Stepping:            1
"""


def test_the_machine_record_tells_cpu_generations_apart_that_share_a_model_name() -> None:
    """A VM's bare "AMD EPYC" hides Zen 3 (family 25 model 1) from Zen 4 (model 17), and the CPU seconds of
    an epoch differ between such VMs: the record names the family, the model and torch's vector ISA."""
    from lrfer.tools.latency import describe_cpu

    zen4 = LSCPU_ZEN3.replace("Model:               1", "Model:               17")
    assert describe_cpu(LSCPU_ZEN3, "AVX2") == "AMD EPYC, family 25 model 1, AVX2"
    assert describe_cpu(zen4, "AVX512") == "AMD EPYC, family 25 model 17, AVX512"
    assert describe_cpu("Model name: Apple M2\n", "DEFAULT") == "Apple M2, DEFAULT"
    assert describe_cpu("Architecture: aarch64\n", "DEFAULT") == ""

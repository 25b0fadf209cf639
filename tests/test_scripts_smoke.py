"""Smoke tests of scripts that have no other test (scripts/bench_cache.py, scripts/check_synthetic.py): they
start on a tiny setting and print the JSON line they promise. They check no figure."""

from __future__ import annotations

import json

from conftest import run_cli


def last_json_line(stdout: str) -> dict:
    return json.loads(stdout.strip().splitlines()[-1])


def test_smoke_bench_cache_times_both_ways_of_loading_a_cache(tmp_path):
    proc = run_cli(
        ["scripts/bench_cache.py", "--faces", "64", "--size", "16", "--repeats", "1", "--dir", str(tmp_path)]
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = last_json_line(proc.stdout)
    assert result["faces"] == 64 and {"load_s_every_byte", "load_s_changed_files_only"} <= set(result)
    assert list(tmp_path.iterdir()) == []  # the temporary cache is removed


def test_smoke_check_synthetic_draws_its_grid(tmp_path):
    grid = tmp_path / "grid.png"
    proc = run_cli(["scripts/check_synthetic.py", str(grid), "--per-class", "1", "--size", "32"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert last_json_line(proc.stdout)["grid"] == str(grid) and grid.stat().st_size > 0

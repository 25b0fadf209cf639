"""Smoke tests of the video scripts (scripts/bench_video.py, scripts/video_demo.py): they start, run a trained
run through ``lrfer-predict`` on their generated clip and write what they promise. They check no figure."""

from __future__ import annotations

import json

import pytest
from conftest import run_cli

pytestmark = pytest.mark.slow  # a real clip through the whole video path: ~20 s on 2 cores


def test_smoke_bench_video_reports_frames_per_second_of_each_run(trained_run, tmp_path):
    out = tmp_path / "video_fps.json"
    args = ["scripts/bench_video.py", f"tiny={trained_run}", "--repeat", "1", "--frames", "30"]
    proc = run_cli([*args, "--size", "320x180", "--out", str(out)])
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(out.read_text())
    assert proc.stdout.rstrip().endswith(out.read_text().rstrip())  # printed as written
    (repeat,) = result["runs"]["tiny"]["repeats"]
    assert repeat["fps_pipeline"] > 0 and repeat["cpu_ms_per_frame"] > 0


def test_smoke_video_demo_writes_its_frame_and_timeline(trained_run, tmp_path):
    args = ["scripts/video_demo.py", str(trained_run), "--out", str(tmp_path / "docs")]
    proc = run_cli([*args, "--work", str(tmp_path / "work"), "--frame", "10"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (tmp_path / "docs" / "video_frame.png").stat().st_size > 0
    assert (tmp_path / "docs" / "video_timeline.png").stat().st_size > 0

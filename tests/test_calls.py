"""The call history a results script keeps beside its results (lrfer.report.calls)."""

from __future__ import annotations

import json

import pytest

from lrfer.core.errors import UserError
from lrfer.report.calls import previous_calls, print_outcome


def test_no_file_or_no_calls_key_is_an_empty_history(tmp_path):
    assert previous_calls(tmp_path / "calls.json") == []
    (tmp_path / "leaderboard.json").write_text(json.dumps({"methods": ["a"]}))
    assert previous_calls(tmp_path / "leaderboard.json") == []


def test_the_calls_of_an_object_and_of_a_plain_list_are_read(tmp_path):
    call = {"date": "2026-12-06 07:00 UTC", "command": "python scripts/findings.py"}
    (tmp_path / "a.json").write_text(json.dumps({"provenance": {}, "calls": [call]}))
    (tmp_path / "b.json").write_text(json.dumps([call]))  # calls.json as first written
    assert previous_calls(tmp_path / "a.json") == previous_calls(tmp_path / "b.json") == [call]


@pytest.mark.parametrize(("text", "what"), [("{not json", "is not valid JSON"), ('{"calls": 3}', "no list")])
def test_a_damaged_history_stops_with_one_line_and_is_left_as_it_is(tmp_path, text, what):
    path = tmp_path / "calls.json"
    path.write_text(text)
    with pytest.raises(UserError, match=f"{what}.*remove it to start its call history anew") as err:
        previous_calls(path)
    assert "\n" not in str(err.value) and path.read_text() == text


def test_the_outcome_is_the_table_then_one_json_line_then_the_failed_runs(tmp_path, capsys):
    table = tmp_path / "t.md"
    table.write_text("| a |\n")
    assert print_outcome(table, {"n": 1}, []) == 0
    out = capsys.readouterr()
    assert out.out.splitlines()[-1] == '{"n": 1}' and "| a |" in out.out and out.err == ""
    assert print_outcome(table, {"n": 1}, ["efc/seed0 (see x.log)", "efc/seed1 (see y.log)"]) == 1
    assert capsys.readouterr().err == "error: 2 run(s) failed: efc/seed0 (see x.log); efc/seed1 (see y.log)\n"

"""The call history a results script keeps beside its results (lrfer.report.calls)."""

from __future__ import annotations

import json

import pytest

from lrfer.core.errors import UserError
from lrfer.report.calls import call_outcome, previous_calls


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


def test_the_outcome_is_the_table_then_one_json_line_and_no_error_when_every_run_finished():
    outcome = call_outcome("| a |\n", {"n": 1}, [])
    assert outcome.out.splitlines() == ["| a |", '{"n": 1}']
    assert (outcome.error, outcome.status) == (None, 0)


def test_failed_runs_are_one_error_line_naming_each_and_exit_status_1():
    outcome = call_outcome("| a |\n", {"n": 1}, ["efc/seed0 (see x.log)", "efc/seed1 (see y.log)"])
    assert outcome.error == "error: 2 run(s) failed: efc/seed0 (see x.log); efc/seed1 (see y.log)"
    assert outcome.status == 1 and outcome.out.splitlines()[-1] == '{"n": 1}'

"""The calls of a results script (``scripts/findings.py``, ``scripts/leaderboard.py``) kept beside its
results: every call that trained runs, with its command, date, machine and times, so that a table made over
several calls (and sessions) states what it cost and what made it."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from lrfer.core.errors import UserError


def previous_calls(path: Path) -> list[dict]:
    """The calls recorded in ``path``: the ``"calls"`` of a JSON object (none when it has no such key), or a
    plain JSON list (the first ``calls.json`` format); none when the file does not exist. A file that is not
    JSON stops with one line saying how to start the history anew."""
    if not path.is_file():
        return []
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        what = f"{path} is not valid JSON ({err})"
        raise UserError(f"{what}: remove it to start its call history anew") from None
    calls = data.get("calls", []) if isinstance(data, dict) else data
    if not isinstance(calls, list):
        raise UserError(f"{path} holds no list of calls: remove it to start its call history anew")
    return list(calls)


def merge_calls(kept: list[dict], new: list[dict]) -> list[dict]:
    """The calls of ``kept`` (e.g. the repository's ``calls.json``, with calls whose run folders are gone) and
    of ``new`` (an output folder's), one per (date, command, code): ``new``'s record of a call wins (it has
    the call's later progress), in date order."""
    merged = {(c.get("date"), c.get("command"), c.get("code")): c for c in kept}
    merged.update({(c.get("date"), c.get("command"), c.get("code")): c for c in new})
    return sorted(merged.values(), key=lambda c: str(c.get("date", "")))


@dataclass(frozen=True)
class CallOutcome:
    """What a results script prints when a call ends: ``out`` on standard output, ``error`` (one line, or
    ``None``) on standard error, and the exit ``status``."""

    out: str
    error: str | None
    status: int


def call_outcome(table: str, summary: dict, failed: list[str]) -> CallOutcome:
    """The end of a call: the table, then its summary as one JSON line (the last line, what a caller parses),
    then one error line naming the failed runs, if any, and exit status 1 for them. It prints nothing: the
    script does."""
    out = f"{table.rstrip()}\n{json.dumps(summary)}"
    if not failed:
        return CallOutcome(out, None, 0)
    return CallOutcome(out, f"error: {len(failed)} run(s) failed: {'; '.join(failed)}", 1)

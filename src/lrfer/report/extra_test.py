"""A finished run tested again, from its checkpoint, at degradations its own test did not cover.

The converged leaderboard (``experiments/leaderboard/converged.yaml``) reuses runs of the papers' findings and
tests them at its own degradations. Those rows live in :data:`EXTRA_TEST_FILE` beside the run's
``metrics.json``. They are made as soon as a findings run finishes (``scripts/findings.py``), while its
checkpoint is still on disk. The file is copied with the run's small files, so the table can be built after
the git-ignored checkpoints are gone (a replaced machine). ``scripts/leaderboard.py`` makes what is missing
from those that are still there.
"""

from __future__ import annotations

import json
from pathlib import Path

from lrfer.core.checkpoint import write_json
from lrfer.core.errors import UserError
from lrfer.tools.retest import retest_at

#: Beside a run reused from the findings (``findings_run``): its test rows at the leaderboard's degradations
#: that its own test (metrics.json) did not cover, from its checkpoint (:func:`lrfer.tools.retest.retest_at`).
EXTRA_TEST_FILE = "leaderboard_test.json"


def own_test_rows(run_dir: Path) -> dict:
    """The test rows of a finished run's ``metrics.json``; a damaged file stops with one line naming it."""
    path = run_dir / "metrics.json"
    try:
        rows = json.loads(path.read_text()).get("test", {})
    except (OSError, json.JSONDecodeError, AttributeError) as err:
        raise UserError(f"cannot read the test rows of {path} ({err}): train that run again") from None
    return rows


def extra_test_rows(path: Path) -> dict:
    """The test rows of a reused run's :data:`EXTRA_TEST_FILE`; a damaged file stops with one line."""
    try:
        rows = json.loads(path.read_text()).get("test")
    except (OSError, json.JSONDecodeError, AttributeError):
        rows = None
    if not isinstance(rows, dict):
        raise UserError(f"{path} is not a test record: remove it and the next call tests that run again")
    return rows


def retest_missing(run_dir: Path, labels: list[str]) -> list[str]:
    """Test the finished run in ``run_dir`` at the ``labels`` that neither its own test nor its
    :data:`EXTRA_TEST_FILE` covers (from the checkpoint that reproduces its own test), and add them to that
    file; returns the labels tested (none: nothing was missing). Stops (:class:`UserError`) when no
    checkpoint qualifies."""
    own = own_test_rows(run_dir)
    extra_file = run_dir / EXTRA_TEST_FILE
    before = extra_test_rows(extra_file) if extra_file.is_file() else {}
    missing = [label for label in labels if label not in own and label not in before]
    if missing:
        result = retest_at(run_dir, missing)
        write_json({**result, "test": {**before, **result["test"]}}, extra_file)
    return missing

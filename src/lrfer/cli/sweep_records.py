"""How the jobs of a running sweep ended: one JSON record per job in ``<sweep dir>/.sweep-jobs/``.

Written by each job (:func:`lrfer.cli.sweep.record_job`), read when the sweep ends
(:func:`lrfer.cli.sweep.finish_sweep`) and by lrfer's Optuna sweeper (:mod:`hydra_plugins.lrfer_sweepers`).
Standard library only: Hydra's plugin scan imports that sweeper, and so this module, in every Hydra
application of the environment.
"""

from __future__ import annotations

import json
from pathlib import Path

#: Where the jobs of a running sweep record how they ended (one JSON file per job; deleted at the end).
JOBS_DIR = ".sweep-jobs"


def jobs_dir(sweep_dir: Path) -> Path:
    return Path(sweep_dir) / JOBS_DIR


def read_records(sweep_dir: Path) -> list[dict]:
    records = []
    for path in jobs_dir(sweep_dir).glob("*.json"):
        try:
            records.append(json.loads(path.read_text()))
        except (OSError, ValueError):
            continue
    return sorted(records, key=lambda r: (r.get("job") is None, r.get("job") or 0))


def no_job_finished(sweep_dir: Path) -> bool:
    """Whether no job of the running sweep ended well (none recorded ``ok``): every Optuna trial failed."""
    return not any(r.get("status") == "ok" for r in read_records(Path(sweep_dir)))

"""Sweeps (``python train.py -m ...``) that survive a bad job.

- Every job's config is composed and validated before the first job runs (Hydra's basic sweeper, whose
  jobs are known in advance): one bad value stops the sweep at once, naming each bad job, and nothing trains.
- A job that stops on an error (a user error, or a crash) returns a :class:`FailedJob` instead of ending
  the process: the sweeper goes on with the other jobs (with the joblib launcher the healthy job beside it
  keeps its worker), and an Optuna trial that returns it is marked failed.
- Each job records how it ended in ``<sweep dir>/.sweep-jobs/<num>.json`` (the hook runs wherever the job
  runs: this process, a joblib worker, a SLURM node); at the end the sweep writes ``sweep_summary.json``,
  prints one line per failed job and exits with a non-zero status (2; 1 when a job crashed).
- ``trainer.resume=true`` continues the jobs that have a ``last.pt`` and starts the ones that never ran.
  An Optuna study kept in ``hydra.sweeper.storage`` is extended: ``hydra.sweeper.n_trials`` then counts the
  study's trials, those already run included, and the new trials get new job folders.
"""

from __future__ import annotations

import logging
import shutil
import sys
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf, open_dict

from lrfer.cli.sweep_records import jobs_dir, read_records
from lrfer.core.checkpoint import write_json
from lrfer.core.errors import CONFIG_ERROR_EXIT_CODE, USER_ERROR_EXIT_CODE, UserError
from lrfer.engine.runfolder import RESUME_CONFIG_DIR, previous_results

log = logging.getLogger(__name__)

#: The sweep's summary, written into the sweep folder when the sweep ends.
SUMMARY_FILE = "sweep_summary.json"
#: Most bad jobs named in the one-line refusal of a sweep.
MAX_NAMED_JOBS = 4


class FailedJob:
    """What a sweep job returns when it stopped on an error (``kind``: ``error`` or ``crashed``).

    Not a number: Hydra's sweepers keep going (they stop only when a job raises), and the Optuna sweeper
    marks the trial failed.
    """

    def __init__(self, kind: str, message: str) -> None:
        self.kind = kind
        self.message = message

    def __str__(self) -> str:
        return f"job {self.kind}: {self.message}"

    __repr__ = __str__


def is_basic_sweeper(config: DictConfig) -> bool:
    return str(OmegaConf.select(config, "hydra.sweeper._target_", default="")).endswith(".BasicSweeper")


def sweep_jobs(config: DictConfig) -> list[list[str]]:
    """The overrides of every job Hydra's basic sweeper will launch, in order (``hydra.job.num``)."""
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.override_parser.overrides_parser import OverridesParser

    loader = GlobalHydra.instance().hydra.config_loader
    params = OmegaConf.select(config, "hydra.sweeper.params") or {}
    arguments = [f"{k}={v}" for k, v in params.items()]
    arguments += OmegaConf.to_container(config.hydra.overrides.task, resolve=False)
    overrides = OverridesParser.create(config_loader=loader).parse_overrides(arguments)
    return [job for batch in BasicSweeper.split_arguments(overrides, None) for job in batch]


def is_optuna_sweeper(config: DictConfig) -> bool:
    return str(OmegaConf.select(config, "hydra.sweeper._target_", default="")).endswith("OptunaSweeper")


def check_storage(config: DictConfig) -> None:
    """Open the Optuna sweeper's ``hydra.sweeper.storage`` (if any) before the first trial: one line if it
    cannot be (optuna 2.10, the last the Hydra sweeper supports, needs SQLAlchemy < 2 for it)."""
    storage = OmegaConf.select(config, "hydra.sweeper.storage")
    if not storage:
        return
    import optuna

    try:
        optuna.storages.get_storage(str(storage))
    except Exception as err:
        raise UserError(
            f"cannot open hydra.sweeper.storage={storage}: {type(err).__name__}: {err} (optuna "
            f"{optuna.__version__} needs SQLAlchemy < 2 and alembic < 1.14: pip install -c constraints.txt "
            "'.[launchers]')"
        ) from None


def study_trials(storage: str, name: str) -> int:
    """How many trials (of any state) the Optuna study ``name`` in ``storage`` holds (0 if none)."""
    import optuna

    try:
        return len(optuna.load_study(study_name=name, storage=storage).trials)
    except KeyError:  # no such study yet
        return 0


def continue_study(config: DictConfig) -> tuple[int, int]:
    """For ``trainer.resume=true`` with the Optuna sweeper: the trials the study holds and those still to
    run, so that it ends with ``hydra.sweeper.n_trials`` trials. Refused without a storage."""
    storage = OmegaConf.select(config, "hydra.sweeper.storage")
    if not storage:
        raise UserError(
            "trainer.resume=true extends an Optuna study only from its storage: without "
            "hydra.sweeper.storage (e.g. sqlite:///optuna.db, given from the first invocation on) the "
            "study was not kept; start a new sweep instead"
        )
    done = study_trials(str(storage), str(config.hydra.sweeper.study_name))
    return done, max(int(config.hydra.sweeper.n_trials) - done, 0)


def job_name(num: Any, overrides: list[str], jobs: list[list[str]]) -> str:
    """``job #<num> (<the overrides it does not share with every job>)``."""
    shared = set.intersection(*(set(j) for j in jobs)) if len(jobs) > 1 else set()
    own = [o for o in overrides if o not in shared]
    return f"job #{num}" + (f" ({' '.join(own)})" if own else "")


def job_config(config: DictConfig, overrides: list[str], num: int) -> DictConfig:
    """Job ``num``'s config as the launcher composes it (``hydra`` node included)."""
    from hydra.core.global_hydra import GlobalHydra

    job = GlobalHydra.instance().hydra.config_loader.load_sweep_config(config, list(overrides))
    with open_dict(job):
        job.hydra.job.num = num
        job.hydra.job.id = str(num)
    return job


def validate_jobs(config: DictConfig, check: Any) -> None:
    """Compose every job of a basic sweep and ``check(job config)`` it; one :class:`UserError` naming the
    bad jobs (at most :data:`MAX_NAMED_JOBS`) before any job runs."""
    if not is_basic_sweeper(config):
        return  # the Optuna sweeper draws its jobs as it goes: its fixed settings were checked already
    bad, messages = [], set()
    jobs = sweep_jobs(config)
    for num, overrides in enumerate(jobs):
        try:
            check(job_config(config, overrides, num))
        except UserError as err:
            bad.append(f"{job_name(num, overrides, jobs)}: {err}")
            messages.add(str(err))
    if len(bad) == len(jobs) and len(messages) == 1:
        raise UserError(messages.pop())  # a value every job shares: the one line a single run gives
    if bad:
        more = f"; and {len(bad) - MAX_NAMED_JOBS} more" if len(bad) > MAX_NAMED_JOBS else ""
        raise UserError(
            f"{len(bad)} of the sweep's {len(jobs)} jobs cannot run, nothing was started: "
            f"{'; '.join(bad[:MAX_NAMED_JOBS])}{more}"
        )


def job_dir(job: DictConfig) -> Path | None:
    """A job's run folder (``hydra.sweep.dir/hydra.sweep.subdir``), or None when it cannot be resolved."""
    try:
        return Path(str(job.hydra.sweep.dir)) / str(job.hydra.sweep.subdir)
    except Exception:
        return None


def start_if_never_ran(cfg: DictConfig, run_dir: Path, output_subdir: str | None) -> DictConfig:
    """A resumed sweep (``trainer.resume=true``) starts, rather than refuses, a job that never ran.

    A job folder without ``checkpoints/last.pt`` and without results gets ``trainer.resume=false``, and
    the config Hydra wrote aside for the resumed invocation becomes the run's ``.hydra/`` when it has none.
    """
    if not cfg.trainer.get("resume", False) or (run_dir / "checkpoints" / "last.pt").is_file():
        return cfg
    if previous_results(run_dir):
        return cfg  # results without last.pt: the run-folder check explains
    log.info("trainer.resume=true: %s never ran (no checkpoints/last.pt): starting it", run_dir)
    cfg = cfg.copy()
    cfg.trainer.resume = False
    if output_subdir and output_subdir.startswith(RESUME_CONFIG_DIR) and not (run_dir / ".hydra").exists():
        written = run_dir / output_subdir
        if written.is_dir():
            written.rename(run_dir / ".hydra")
            if not any((run_dir / RESUME_CONFIG_DIR).iterdir()):
                (run_dir / RESUME_CONFIG_DIR).rmdir()
    return cfg


# -- how each job ended, and the sweep's summary --------
def start_records(sweep_dir: Path) -> None:
    """Forget what an earlier invocation's jobs recorded (the sweep folder is locked by this one)."""
    shutil.rmtree(jobs_dir(sweep_dir), ignore_errors=True)


def record_job(config: DictConfig, job_return: Any) -> None:
    """Write how one job ended into the sweep's :data:`~lrfer.cli.sweep_records.JOBS_DIR` (``on_job_end``,
    in the job's process)."""
    from hydra.core.utils import JobStatus

    value = getattr(job_return, "_return_value", None)
    if job_return.status == JobStatus.COMPLETED and isinstance(value, FailedJob):
        status, message = value.kind, value.message
    elif job_return.status == JobStatus.COMPLETED:
        status, message = "ok", None
    else:
        status, message = "crashed", f"{type(value).__name__}: {value}"
    num = OmegaConf.select(config, "hydra.job.num")
    record = {
        "job": num,
        "overrides": list(job_return.overrides or []),
        "dir": OmegaConf.select(config, "hydra.runtime.output_dir"),
        "status": status,
        "error": message,
    }
    if status == "ok" and isinstance(value, (int, float)):
        record["objective"] = value
    write_json(record, jobs_dir(Path(str(config.hydra.sweep.dir))) / f"{num}.json")


def finish_sweep(sweep_dir: Path) -> int:
    """Write ``sweep_summary.json``, print the failed jobs; the exit status the sweep should end with."""
    sweep_dir = Path(sweep_dir)
    records = read_records(sweep_dir)
    failed = [r for r in records if r["status"] != "ok"]
    summary = {"jobs": len(records), "failed": len(failed), "records": records}
    write_json(summary, sweep_dir / SUMMARY_FILE)
    shutil.rmtree(jobs_dir(sweep_dir), ignore_errors=True)
    print(
        f"sweep {sweep_dir}: {len(records) - len(failed)} of {len(records)} jobs finished "
        f"(summary: {sweep_dir / SUMMARY_FILE})",
        flush=True,
    )
    if not failed:
        return 0
    jobs = [r["overrides"] for r in records]
    for r in failed:
        where = f" (log: {Path(r['dir']) / 'train.log'})" if r.get("dir") else ""
        what = "crashed" if r["status"] == "crashed" else "failed"
        name = job_name(r["job"], r["overrides"], jobs)
        print(f"error: {name} {what}: {r['error']}{where}", file=sys.stderr)
    print(f"error: {len(failed)} of the sweep's {len(records)} jobs failed", file=sys.stderr, flush=True)
    crashed = any(r["status"] == "crashed" for r in failed)
    return CONFIG_ERROR_EXIT_CODE if crashed else USER_ERROR_EXIT_CODE

"""The Hydra callback that checks a run before Hydra writes anything (``hydra.callbacks`` in configs/hydra).

Hydra creates the run folder and writes ``.hydra/config.yaml`` before the task starts, so checks made in the
task come too late to leave a refused folder untouched. This callback runs first (``on_run_start``,
``on_multirun_start``):

- the run is resolved, once (:func:`lrfer.engine.resolve.resolve`): the config's values are validated (an
  invalid value stops the command with one line and exit status 2, and no run folder is created), and the
  run folder is checked (:func:`lrfer.engine.runfolder.check_run_folder`: a finished run is not trained
  over without ``trainer.resume=true`` or ``trainer.overwrite=true``, and a resume must ask for the same
  method and model; a refusal changes nothing on disk). The task takes the resolved
  :class:`~lrfer.engine.resolve.RunSpec` (:func:`take_resolved`) and checks nothing again;
- a resumed run keeps its ``.hydra/`` as it was: Hydra writes the resumed invocation's config into
  ``.hydra-resumes/<time>/`` instead;
- the run (or sweep) folder is locked for the life of the run (:mod:`lrfer.engine.runlock`): a second run
  into it stops with one line; the default folder is a new one for every run (``lrfer.new_dir``);
- ``trainer.overwrite=true`` empties the previous run's ``train.log`` before the run logs into it;
- a sweep checks every job before the first one runs (:func:`lrfer.engine.resolve.check_config`, and the
  run-folder check of a resumed job that ran before), goes on past a failed job, and ends with a summary and
  a non-zero status when a job failed (:mod:`lrfer.cli.sweep`). The callback keeps each job's checks, keyed
  by the job's folder and composed config; when the job starts (``on_job_start``) they are handed to its
  task (:func:`take_checks`), whose :func:`~lrfer.engine.resolve.resolve` then only settles the device and
  the run folder: each check runs once per job. The checks travel with the callback, which the launchers
  that run jobs in other processes (joblib, submitit / SLURM) pickle for their workers, so those jobs reuse
  them too; a job whose config the launcher composes differently from the up-front pass (or a trial the
  Optuna sweeper draws as it goes, checked only for its shared settings up front) is checked in full when it
  starts.

Under torchrun only rank 0 prints the error; every rank exits with status 2.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import sys
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf, read_write

from lrfer.cli.sweep import (
    check_storage,
    continue_study,
    finish_sweep,
    is_basic_sweeper,
    is_optuna_sweeper,
    job_dir,
    record_job,
    start_records,
    validate_jobs,
)
from lrfer.config.validate import validate_config
from lrfer.core.errors import USER_ERROR_EXIT_CODE, ProcessError, UserError, check_folder_can_be_written
from lrfer.engine.distributed import env_rank
from lrfer.engine.resolve import ConfigChecks, RunSpec, check_config, resolve
from lrfer.engine.runfolder import (
    check_run_folder,
    claim_new_dir,
    claimed_dirs,
    previous_results,
    resume_output_subdir,
    start_fresh_log,
)
from lrfer.engine.runlock import acquire

log = logging.getLogger("lrfer")

#: ``${lrfer.new_dir:<path>}`` in configs/hydra: a run folder nobody else has (``<path>_2`` when taken).
NEW_DIR_RESOLVER = "lrfer.new_dir"
#: ``${lrfer.plus:a,b}``: ``a + b`` (the job folders of an extended Optuna study start after the old ones).
PLUS_RESOLVER = "lrfer.plus"


def register_resolvers() -> None:
    """The resolvers the Hydra config uses (idempotent; also on import, for launcher worker processes)."""
    OmegaConf.register_new_resolver(NEW_DIR_RESOLVER, claim_new_dir, replace=True)
    OmegaConf.register_new_resolver(PLUS_RESOLVER, lambda a, b: int(a) + int(b), replace=True)


register_resolvers()

#: The runs resolved by :meth:`RunGuard.on_run_start`, by run folder (Hydra's ``runtime.output_dir``), until
#: the task takes its own (:func:`take_resolved`). The callback and the task run in one process.
_RESOLVED: dict[str, RunSpec] = {}


#: A sweep job's checks made before the sweep started, by run folder, from the job's start (``on_job_start``,
#: in the job's process) until its task takes them (:func:`take_checks`).
_CHECKS: dict[str, ConfigChecks] = {}


def _key(folder: str | Path) -> str:
    return os.path.abspath(str(folder))  # as Hydra makes runtime.output_dir


def _job_key(folder: str | Path, job: DictConfig) -> tuple[str, str]:
    """A sweep job's checks are its own: same folder, same composed task config."""
    return _key(folder), OmegaConf.to_yaml(task_config(job))


def take_resolved(output_dir: str | Path) -> RunSpec | None:
    """The spec the callback resolved for the run in ``output_dir`` (None: none was, as for a sweep's job)."""
    return _RESOLVED.pop(_key(output_dir), None)


def take_checks(output_dir: str | Path) -> ConfigChecks | None:
    """The checks the sweep made up front for its job in ``output_dir`` (None: none; resolve makes them)."""
    return _CHECKS.pop(_key(output_dir), None)


def report_user_error(err: UserError) -> None:
    """Print ``error: <message>`` once: on rank 0 under torchrun (every rank for a :class:`ProcessError`)."""
    if env_rank() == 0:
        print(f"error: {err}", file=sys.stderr, flush=True)
    elif isinstance(err, ProcessError):
        print(f"error (rank {env_rank()}): {err}", file=sys.stderr, flush=True)


@contextlib.contextmanager
def one_line_errors() -> Iterator[None]:
    try:
        yield
    except UserError as err:
        report_user_error(err)
        sys.exit(USER_ERROR_EXIT_CODE)


def task_config(config: DictConfig) -> DictConfig:
    """The config the task receives: everything but the ``hydra`` node."""
    return OmegaConf.masked_copy(config, [str(k) for k in config if k != "hydra"])


def _missing_folders(path: Path) -> list[Path]:
    """``path`` and its parents that do not exist yet, deepest first."""
    missing = []
    for folder in [path, *path.parents]:
        if folder.exists():
            break
        missing.append(folder)
    return missing


def _remove_if_empty(folders: list[Path]) -> None:
    for folder in folders:
        with contextlib.suppress(OSError):
            folder.rmdir()


def _pin(config: DictConfig, key: str, value: str) -> None:
    """Set ``hydra.<key>`` to ``value``, here and in every job Hydra composes from the overrides."""
    with read_write(config.hydra):
        OmegaConf.update(config, f"hydra.{key}", value, merge=False)
        quoted = "'" + value.replace("'", "\\'") + "'"  # a quoted string: commas, `${...}` kept
        config.hydra.overrides.hydra.append(f"hydra.{key}={quoted}")


class RunGuard(Callback):
    """Validate the config and protect the run folder before Hydra writes into it."""

    def __init__(self) -> None:
        self._lock = None
        self._created: list[Path] = []
        #: a sweep's up-front checks of each job (:meth:`_check_job`), by :func:`_job_key`
        self._job_checks: dict[tuple[str, str], ConfigChecks] = {}

    def _claim(self, config: DictConfig, key: str) -> Path:
        """Resolve ``hydra.<key>`` once (the default claims a new folder), remember the folders this run
        makes (removed again if it is refused), and pin the value for Hydra and every job."""
        folder = Path(str(OmegaConf.select(config, f"hydra.{key}")))  # the default claims a new one here
        self._created = [folder] if str(folder) in claimed_dirs() else _missing_folders(folder)
        _pin(config, key, str(folder))
        return folder

    def _take_lock(self, folder: Path) -> None:

        self._lock = acquire(folder)
        atexit.register(self._lock.release)  # also when the run ends by sys.exit or an exception

    def _give_back(self, refused: bool = False) -> None:
        if self._lock is not None:
            self._lock.release()
            self._lock = None
        if refused:
            _remove_if_empty(self._created)  # a refused run leaves no folder it made

    def __getstate__(self) -> dict:
        # launchers pickle the callbacks for their workers: the lock stays with this process
        return {**self.__dict__, "_lock": None}

    def _claim_run_dir(self, config: DictConfig) -> Path:
        """The run folder, created (when it is the default) and locked for this run."""
        run_dir = self._claim(config, "run.dir")
        check_folder_can_be_written(run_dir, "write the run folder")
        self._take_lock(run_dir)
        return run_dir

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:

        with one_line_errors():
            task = task_config(config)
            # torchrun: a rank other than 0 works in a scratch folder and gets rank 0's run folder
            scratch = str(OmegaConf.select(config, "hydra.run.dir")) if env_rank() > 0 else None
            try:  # warnings are logged by the run itself, into train.log
                spec = resolve(task, claim=None if scratch else lambda: self._claim_run_dir(config))
            except UserError:
                self._give_back(refused=True)
                raise
            _RESOLVED[_key(scratch or spec.run_dir)] = spec
            if scratch:
                return
            run_dir = spec.run_dir
            resuming = bool(OmegaConf.select(task, "trainer.resume", default=False))
            if resuming and (run_dir / ".hydra").is_dir() and config.hydra.output_subdir is not None:
                with read_write(config.hydra):
                    config.hydra.output_subdir = resume_output_subdir()

    def on_run_end(self, config: DictConfig, **kwargs: Any) -> None:
        self._give_back()

    def on_job_start(self, config: DictConfig, **kwargs: Any) -> None:

        task = config  # the job's full config; trainer.* is the task's
        if self._job_checks:  # a sweep's job: hand its up-front checks to the task
            output_dir = str(config.hydra.runtime.output_dir)
            checks = self._job_checks.get(_job_key(output_dir, config))
            if checks is not None:
                _CHECKS[_key(output_dir)] = checks
        overwrite = bool(OmegaConf.select(task, "trainer.overwrite", default=False))
        resume = bool(OmegaConf.select(task, "trainer.resume", default=False))
        if overwrite and not resume and env_rank() == 0:
            run_dir = Path(str(config.hydra.runtime.output_dir))
            if start_fresh_log(run_dir):
                log.info("trainer.overwrite=true: emptied the previous run's train.log")

    def on_job_end(self, config: DictConfig, job_return: Any = None, **kwargs: Any) -> None:

        if job_return is not None and config.hydra.mode == RunMode.MULTIRUN and env_rank() == 0:
            record_job(config, job_return)

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:

        with one_line_errors():
            task = task_config(config)
            if not is_basic_sweeper(config):  # the basic sweeper's jobs are each checked below
                validate_config(task, warn=False)  # the settings every job shares
            if is_optuna_sweeper(config):
                check_storage(config)
            resume = bool(OmegaConf.select(task, "trainer.resume", default=False))
            overwrite = bool(OmegaConf.select(task, "trainer.overwrite", default=False))
            sweep_dir = self._claim(config, "sweep.dir")
            try:
                self._take_lock(sweep_dir)
                held = [p.name for p in sorted(sweep_dir.iterdir()) if p.is_dir() and previous_results(p)]
                if held and not (resume or overwrite):
                    raise UserError(
                        f"{sweep_dir} already holds the runs of a sweep ({', '.join(held[:4])}"
                        f"{', ...' if len(held) > 4 else ''}): continue them with trainer.resume=true, "
                        "choose a new hydra.sweep.dir, or replace them with trainer.overwrite=true"
                    )
                validate_jobs(config, self._check_job)
                if resume and is_optuna_sweeper(config):
                    self._extend_study(config)
            except UserError:
                self._give_back(refused=True)
                raise
            start_records(sweep_dir)
            if resume and config.hydra.output_subdir is not None:
                _pin(config, "output_subdir", resume_output_subdir())

    @staticmethod
    def _extend_study(config: DictConfig) -> None:
        """Run the trials an Optuna study still lacks, in job folders after those of its earlier trials."""

        done, to_run = continue_study(config)
        log.info(
            "trainer.resume=true: the Optuna study %s holds %d trials; running %d more",
            config.hydra.sweeper.study_name,
            done,
            to_run,
        )
        _pin(config, "sweeper.n_trials", str(to_run))
        _pin(config, "sweep.subdir", f"${{{PLUS_RESOLVER}:${{hydra.job.num}},{done}}}")

    def _check_job(self, job: DictConfig) -> None:
        """One sweep job's checks before the sweep starts: its config, and its folder when resumed; kept for
        the job (:meth:`on_job_start`), which does not make them again."""

        task = task_config(job)
        checks = check_config(task)
        run_dir = job_dir(job)
        resume = bool(OmegaConf.select(task, "trainer.resume", default=False))
        if resume and run_dir is not None and previous_results(run_dir):
            check_run_folder(task, run_dir)  # a job that never ran is started instead (lrfer.cli.sweep)
            checks = replace(checks, checked_folder=Path(_key(run_dir)))
        if run_dir is not None:
            self._job_checks[_job_key(run_dir, job)] = checks

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:

        status = finish_sweep(Path(str(config.hydra.sweep.dir)))
        self._give_back()
        if status:
            sys.exit(status)

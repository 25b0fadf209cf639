"""``python train.py method=<m> dataset=<d> [key=value ...]``: train, test once, write metrics.json.

Also installed as ``lrfer-train``. Exit status: 0 success, 1 a Hydra/config error (or a crash), 2 a user
error (one ``error: ...`` line on stderr, also written to the run's ``train.log``);
see :mod:`lrfer.core.errors`.
Ctrl-C (130) and SIGTERM (143) stop the run with one line, on stderr and in ``train.log``, saying how to
continue it (``trainer.resume=true``) from its last finished epoch.
"""

from __future__ import annotations

import contextlib
import logging
import shutil
import signal
import sys
import tempfile
import traceback
from dataclasses import replace
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from lrfer.cli import CONFIG_DIR
from lrfer.cli.guard import report_user_error, take_checks, take_resolved
from lrfer.cli.sweep import FailedJob, start_if_never_ran
from lrfer.config import register_schemas
from lrfer.core.errors import USER_ERROR_EXIT_CODE, UserError
from lrfer.engine import distributed as dist
from lrfer.engine.distributed import env_rank
from lrfer.engine.resolve import resolve
from lrfer.engine.run import format_table, run
from lrfer.engine.stop import Terminated

log = logging.getLogger("lrfer")


def log_to_files(level: int, message: str) -> None:
    """Write a record to the log files only (the run's ``train.log``), not to the console."""
    record = log.makeRecord(log.name, level, __file__, 0, message, None, None)
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.FileHandler):
            handler.handle(record)


#: Exit status of a run stopped by SIGTERM (128 + 15, what the shell reports for a killed process).
SIGTERM_EXIT_CODE = 128 + signal.SIGTERM
#: Exit status of a run stopped by Ctrl-C (SIGINT).
INTERRUPT_EXIT_CODE = 130


def _raise_terminated(signum, frame) -> None:
    raise Terminated()


def resume_hint(run_dir: Path) -> str:
    """Where and how a stopped run continues (or that nothing can be continued yet)."""
    if not (Path(run_dir) / "checkpoints" / "last.pt").is_file():
        return f"no epoch had finished, nothing to resume in {run_dir}: start it again"
    try:
        given = list(HydraConfig.get().overrides.task)
    except ValueError:  # not under Hydra
        given = []
    kept = [o for o in given if not o.startswith(("trainer.resume=", "trainer.overwrite=", "hydra.run.dir="))]
    command = " ".join(["python train.py", *kept, "trainer.resume=true", f"hydra.run.dir={run_dir}"])
    return f"continue from its last finished epoch with: {command}"


def _stopped(what: str, run_dir: Path | None, status: int) -> None:
    """Log and print one line for a run stopped by a signal, then exit with ``status``."""
    line = what if run_dir is None else f"{what}: {resume_hint(run_dir)}"
    log_to_files(logging.WARNING, line)
    if env_rank() == 0:
        print(line, file=sys.stderr, flush=True)
    sys.exit(status)


def _task(cfg: DictConfig) -> float | FailedJob | None:
    """One run (or one sweep job), with SIGTERM turned into :class:`Terminated` while it lasts: the handler
    the process had before (a test runner's, a notebook's) is given back when the run ends, however it ends
    (``None``: a handler Python did not set, which it cannot give back)."""
    previous = None
    with contextlib.suppress(ValueError):  # signal handlers can be set in the main thread only
        previous = signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        return _run_task(cfg)
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def _run_task(cfg: DictConfig) -> float | FailedJob | None:
    run_dir = None
    hydra_cfg = HydraConfig.get()
    in_sweep = hydra_cfg.mode == RunMode.MULTIRUN
    try:
        spec = take_resolved(hydra_cfg.runtime.output_dir)  # what the callback resolved (lrfer.cli.guard)
        if spec is None:  # a sweep's job: its folder is known now
            output_dir = Path(hydra_cfg.runtime.output_dir)
            checks = take_checks(output_dir)  # the sweep's up-front checks of this job, if any
            if in_sweep:  # (a job that never ran had no folder check up front: its folder is checked now)
                cfg = start_if_never_ran(cfg, output_dir, hydra_cfg.output_subdir)
            spec = resolve(cfg, output_dir, checks=checks)
        else:
            spec = replace(spec, cfg=cfg)  # the same values; the task's own config object
        run_dir = spec.run_dir
        if not dist.is_main():
            # a SLURM task of rank > 0 runs inside the same Hydra job folder: leave its log to rank 0
            for handler in [h for h in logging.root.handlers if isinstance(h, logging.FileHandler)]:
                logging.root.removeHandler(handler)
        metrics = run(spec)
        main_rank = dist.is_main()
    except UserError as err:
        log_to_files(logging.ERROR, f"error: {err}")
        report_user_error(err)
        if in_sweep:  # the sweep goes on with its other jobs, and names this one in its summary
            return FailedJob("error", str(err))
        sys.exit(USER_ERROR_EXIT_CODE)
    except KeyboardInterrupt:
        _stopped("interrupted (Ctrl-C)", run_dir, INTERRUPT_EXIT_CODE)
    except Terminated:
        _stopped("terminated (SIGTERM)", run_dir, SIGTERM_EXIT_CODE)
    except Exception as err:
        log_to_files(logging.ERROR, "the run crashed:\n" + traceback.format_exc().rstrip())
        if in_sweep:
            log.error("the job crashed: %s: %s (traceback in train.log)", type(err).__name__, err)
            return FailedJob("crashed", f"{type(err).__name__}: {err}")
        raise
    finally:
        dist.cleanup()
    if main_rank:
        print(f"\n{metrics['method']} on {metrics['dataset']} (test split), run dir: {run_dir}")
        print(format_table(metrics), flush=True)
    # What sweepers optimise: the validation objective (metrics.json "objective"), never the test split.
    return metrics["objective"]["value"]


def main() -> None:
    register_schemas()
    scratch = None
    if env_rank() > 0:
        # torchrun: ranks other than 0 must not create run folders or logs of their own.
        scratch = tempfile.mkdtemp(prefix=f"lrfer-rank{env_rank()}-")
        sys.argv += [f"hydra.run.dir={scratch}", "hydra.output_subdir=null", "hydra/job_logging=disabled"]
    app = hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name="train")(_task)
    try:
        app()
    finally:
        if scratch is not None:
            shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()

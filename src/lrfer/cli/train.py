"""``python train.py method=<m> dataset=<d> [key=value ...]``: train, test once, write metrics.json.

Also installed as ``lrfer-train``. Exit status: 0 success, 1 a Hydra/config error (or a crash), 2 a user
error (one ``error: ...`` line on stderr, also written to the run's ``train.log``); see :mod:`lrfer.errors`.
"""

from __future__ import annotations

import logging
import shutil
import sys
import tempfile
import traceback
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from lrfer.cli import CONFIG_DIR
from lrfer.cli.guard import report_user_error
from lrfer.cli.sweep import FailedJob, start_if_never_ran
from lrfer.config import register_schemas
from lrfer.engine.distributed import env_rank
from lrfer.errors import USER_ERROR_EXIT_CODE, UserError

log = logging.getLogger("lrfer")


def log_to_files(level: int, message: str) -> None:
    """Write a record to the log files only (the run's ``train.log``), not to the console."""
    record = log.makeRecord(log.name, level, __file__, 0, message, None, None)
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.FileHandler):
            handler.handle(record)


def _task(cfg: DictConfig) -> float | FailedJob | None:
    from lrfer.engine import distributed as dist
    from lrfer.engine.run import format_table, run_training
    from lrfer.engine.trainer import resolve_device

    hydra_cfg = HydraConfig.get()
    in_sweep = hydra_cfg.mode == RunMode.MULTIRUN
    try:
        dist.init_from_env(resolve_device(cfg.trainer.device))
        if not dist.is_main():
            # a SLURM task of rank > 0 runs inside the same Hydra job folder: leave its log to rank 0
            for handler in [h for h in logging.root.handlers if isinstance(h, logging.FileHandler)]:
                logging.root.removeHandler(handler)
        # Under torchrun every rank works in rank 0's run folder (only rank 0 writes into it).
        run_dir = Path(dist.broadcast_object(hydra_cfg.runtime.output_dir))
        if in_sweep:
            cfg = start_if_never_ran(cfg, run_dir, hydra_cfg.output_subdir)
        metrics = run_training(cfg, run_dir)
        main_rank = dist.is_main()
    except UserError as err:
        log_to_files(logging.ERROR, f"error: {err}")
        report_user_error(err)
        if in_sweep:  # the sweep goes on with its other jobs, and names this one in its summary
            return FailedJob("error", str(err))
        sys.exit(USER_ERROR_EXIT_CODE)
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

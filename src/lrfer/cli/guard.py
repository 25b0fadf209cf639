"""The Hydra callback that checks a run before Hydra writes anything (``hydra.callbacks`` in configs/hydra).

Hydra creates the run folder and writes ``.hydra/config.yaml`` before the task starts, so checks made in the
task come too late to leave a refused folder untouched. This callback runs first (``on_run_start``,
``on_multirun_start``):

- the config's values are validated (:func:`lrfer.config.validate.validate_config`): an invalid value stops
  the command with one line and exit status 2, and no run folder is created;
- the run folder is checked (:func:`lrfer.engine.runfolder.check_run_folder`): a finished run is not trained
  over without ``trainer.resume=true`` or ``trainer.overwrite=true``, and a resume must ask for the same
  method and model; a refusal changes nothing on disk;
- a resumed run keeps its ``.hydra/`` as it was: Hydra writes the resumed invocation's config into
  ``.hydra-resumes/<time>/`` instead.

Under torchrun only rank 0 prints the error; every rank exits with status 2.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf, read_write

from lrfer.engine.distributed import env_rank
from lrfer.errors import USER_ERROR_EXIT_CODE, ProcessError, UserError, check_folder_can_be_written


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


class RunGuard(Callback):
    """Validate the config and protect the run folder before Hydra writes into it."""

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        from lrfer.config.validate import validate_config
        from lrfer.engine.runfolder import check_run_folder, resume_output_subdir

        with one_line_errors():
            task = task_config(config)
            validate_config(task, warn=False)  # warnings are logged by the run itself, into train.log
            if env_rank() > 0:
                return  # torchrun: this rank's hydra.run.dir is a scratch folder; rank 0 checks the run's
            run_dir = Path(str(OmegaConf.select(config, "hydra.run.dir")))
            check_run_folder(task, run_dir)
            check_folder_can_be_written(run_dir, "write the run folder")
            resuming = bool(OmegaConf.select(task, "trainer.resume", default=False))
            if resuming and (run_dir / ".hydra").is_dir() and config.hydra.output_subdir is not None:
                with read_write(config.hydra):
                    config.hydra.output_subdir = resume_output_subdir()

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        from lrfer.engine.runfolder import previous_results, resume_output_subdir

        with one_line_errors():
            task = task_config(config)
            resume = bool(OmegaConf.select(task, "trainer.resume", default=False))
            overwrite = bool(OmegaConf.select(task, "trainer.overwrite", default=False))
            sweep_dir = Path(str(OmegaConf.select(config, "hydra.sweep.dir")))
            if sweep_dir.is_dir() and not (resume or overwrite):
                held = [p.name for p in sorted(sweep_dir.iterdir()) if p.is_dir() and previous_results(p)]
                if held:
                    raise UserError(
                        f"{sweep_dir} already holds the runs of a sweep ({', '.join(held[:4])}"
                        f"{', ...' if len(held) > 4 else ''}): continue them with trainer.resume=true, "
                        "choose a new hydra.sweep.dir, or replace them with trainer.overwrite=true"
                    )
            if resume and config.hydra.output_subdir is not None:
                with read_write(config.hydra):
                    config.hydra.overrides.hydra.append(f"hydra.output_subdir={resume_output_subdir()}")

"""lrfer's Hydra sweeper plugins (Hydra loads sweepers only from the ``hydra_plugins`` namespace).

:class:`LrferOptunaSweeper` is hydra-optuna-sweeper's sweeper (``configs/hparams_search/optuna.yaml``
selects it) that ends a search whose every trial failed like any sweep with failed jobs. Optional: without
the ``launchers`` extra (optuna) this module defines nothing, and Hydra's plugin scan stays quiet.
"""

from __future__ import annotations

import logging
from pathlib import Path

from lrfer.cli.sweep_records import no_job_finished  # standard library only: light for Hydra's plugin scan

log = logging.getLogger(__name__)

try:
    from hydra_plugins.hydra_optuna_sweeper.optuna_sweeper import OptunaSweeper
except ImportError:  # the launchers extra is not installed
    OptunaSweeper = None

if OptunaSweeper is not None:

    class LrferOptunaSweeper(OptunaSweeper):
        """The Optuna sweeper, less its traceback when no trial completed.

        After the last trial the sweeper asks the study for its best trial, which raises ``ValueError`` when
        every trial failed; Hydra would then skip ``on_multirun_end``. Here the sweep returns instead, and
        the callback writes ``sweep_summary.json``, names each failed job and exits 2.
        """

        def sweep(self, arguments: list[str]) -> None:
            try:
                return super().sweep(arguments)
            except ValueError:
                sweep_dir = Path(str(self.sweeper.config.hydra.sweep.dir))
                if not no_job_finished(sweep_dir):
                    raise
                log.error("no trial of the Optuna study completed: no optimization_results.yaml")
                return None

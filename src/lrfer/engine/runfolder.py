"""Run-folder protection: a finished run is never overwritten by accident, a resume continues the same run.

Before anything is written into a run folder (decided once per run by :func:`lrfer.engine.resolve.resolve`;
``python train.py`` resolves before Hydra writes, see :mod:`lrfer.cli.guard`):

- a folder that already holds a run (``metrics.json`` or ``checkpoints/last.pt``) is refused unless
  ``trainer.resume=true`` (continue it) or ``trainer.overwrite=true`` (replace it: its results, checkpoints
  and TensorBoard logs are deleted first);
- a resume must ask for the run it continues: the method, model and dataset identity stored in ``last.pt``
  (:func:`run_identity`; for checkpoints written before it was stored, the run's ``.hydra/config.yaml``) are
  compared with the new config, and any difference other than an epoch count stops with one line naming it;
- temporary files a killed write left behind are deleted;
- the default run folder (``outputs/<method>/<dataset>/<time>``) is new for every run: a run that starts in
  the same second as another gets ``<time>_2`` (:func:`claim_new_dir`, the ``lrfer.new_dir`` resolver of
  configs/hydra); a run folder named by the user is shared only as above, and never by two live runs
  (:mod:`lrfer.engine.runlock`).

A resumed run keeps its ``.hydra/`` as it was (the original config, what ``lrfer-evaluate`` reads); Hydra
writes the resumed invocation's config into ``.hydra-resumes/<time>/`` instead.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
from datetime import datetime
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from lrfer.core.checkpoint import remove_orphan_temporaries
from lrfer.core.errors import UserError
from lrfer.engine.distributed import env_rank

log = logging.getLogger(__name__)

#: What marks a folder as holding a run (finished, or resumable).
RUN_RESULTS = ("metrics.json", "checkpoints/last.pt")
#: Where Hydra writes a resumed invocation's config (``hydra.output_subdir``), so ``.hydra/`` stays as it was.
RESUME_CONFIG_DIR = ".hydra-resumes"
#: What ``trainer.overwrite=true`` deletes before training again: the results, checkpoints and TensorBoard
#: logs, and what other commands and resumes left beside them (``lrfer-evaluate``, ``scripts/export.py``).
REPLACED_BY_OVERWRITE = ("metrics.json", "checkpoints", "tb", "eval_test.json", "export", RESUME_CONFIG_DIR)
#: The run's log (Hydra's job log): emptied by ``trainer.overwrite=true`` (:func:`start_fresh_log`).
RUN_LOG = "train.log"
#: Most suffixes :func:`claim_new_dir` tries (``<dir>_2`` ... ) before giving up.
MAX_DIR_SUFFIX = 1000
#: Keys that may change when a run is continued: epoch counts (extending a run) and their scale.
_MAY_CHANGE = re.compile(r"(^|[._])([a-z_]*epochs|schedule_scale)$")


def _container(node: Any) -> Any:
    if isinstance(node, DictConfig):
        try:
            return OmegaConf.to_container(node, resolve=True)
        except Exception:  # an interpolation only Hydra can resolve
            return OmegaConf.to_container(node, resolve=False)
    return node


def run_identity(cfg: DictConfig) -> dict:
    """What a resumed run must share with the run it continues: the method, the model, the dataset's shape.

    Stored in every checkpoint (``"config"``); plain Python values, so ``weights_only`` loading reads them.
    """
    dataset = cfg.get("dataset") or {}
    return {
        "method": _container(cfg.get("method")),
        "model": _container(cfg.get("model")),
        "dataset": {k: _container(dataset.get(k)) for k in ("name", "num_classes", "image_size")},
    }


def previous_results(run_dir: Path) -> list[str]:
    """The files that show ``run_dir`` already holds a run (empty for a new or failed-at-start folder)."""
    return [name for name in RUN_RESULTS if (Path(run_dir) / name).is_file()]


def _flatten(value: Any, prefix: str) -> dict[str, Any]:
    if isinstance(value, dict):
        out = {}
        for k, v in value.items():
            out.update(_flatten(v, f"{prefix}.{k}" if prefix else str(k)))
        return out
    return {prefix: value}


def identity_differences(stored: dict, current: dict) -> list[str]:
    """``key=<stored> (now <current>)`` for every difference between two :func:`run_identity` results."""
    old, new = _flatten(stored, ""), _flatten(current, "")
    diffs = []
    for key in sorted(set(old) | set(new), key=lambda k: (not k.endswith(("_target_", "name")), k)):
        if _MAY_CHANGE.search(key) or old.get(key, "<unset>") == new.get(key, "<unset>"):
            continue
        diffs.append(f"{key}={old.get(key, '<unset>')} (now {new.get(key, '<unset>')})")
    return diffs


def stored_identity(run_dir: Path) -> dict | None:
    """The identity saved in the run's ``last.pt``, else derived from its ``.hydra/config.yaml``."""
    run_dir = Path(run_dir)
    last = run_dir / "checkpoints" / "last.pt"
    try:
        state = torch.load(last, map_location="cpu", weights_only=True, mmap=True)
    except Exception:
        state = None  # unreadable: the trainer reports it, in one line, when it loads the checkpoint
    if isinstance(state, dict) and isinstance(state.get("config"), dict):
        return state["config"]
    config = run_dir / ".hydra" / "config.yaml"
    if config.is_file():
        try:
            return run_identity(OmegaConf.load(config))
        except Exception:
            return None
    return None


def check_run_folder(cfg: DictConfig, run_dir: Path | None) -> None:
    """Refuse to start when ``run_dir`` would lose a run, or would be resumed with another method or model.

    Reads only; raises a one-line :class:`UserError`.
    """
    resume = bool(cfg.trainer.get("resume", False))
    overwrite = bool(cfg.trainer.get("overwrite", False))
    if resume and overwrite:
        raise UserError(
            "trainer.resume=true continues a run and trainer.overwrite=true replaces it: choose one"
        )
    if run_dir is None:
        if resume:
            raise UserError("trainer.resume=true needs the run folder to continue: set hydra.run.dir to it")
        return
    run_dir = Path(run_dir)
    if resume:
        last = run_dir / "checkpoints" / "last.pt"
        if not last.is_file():
            raise UserError(
                f"trainer.resume=true but {last} does not exist: run once without resume, "
                "or set hydra.run.dir to the run you want to continue"
            )
        stored = stored_identity(run_dir)
        diffs = identity_differences(stored, run_identity(cfg)) if stored is not None else []
        if diffs:
            more = f" and {len(diffs) - 3} more" if len(diffs) > 3 else ""
            raise UserError(
                f"cannot resume {run_dir}: it was trained with {'; '.join(diffs[:3])}{more}; resume with the "
                "run's own settings, or train into a new hydra.run.dir"
            )
        return
    found = previous_results(run_dir)
    if found and not overwrite:
        raise UserError(
            f"{run_dir} already holds a run ({', '.join(found)}): continue it with trainer.resume=true, "
            "choose a new hydra.run.dir, or replace it with trainer.overwrite=true"
        )


def prepare_run_folder(cfg: DictConfig, run_dir: Path | None) -> None:
    """Delete orphan temporary files and, with ``trainer.overwrite=true``, the previous run's results.

    Call on one process (rank 0) after :func:`check_run_folder`.
    """
    if run_dir is None:
        return
    run_dir = Path(run_dir)
    for path in remove_orphan_temporaries([run_dir, run_dir / "checkpoints"]):
        log.info("removed %s, left by an interrupted write", path)
    if cfg.trainer.get("overwrite", False) and not cfg.trainer.get("resume", False):
        gone = []
        for name in REPLACED_BY_OVERWRITE:
            path = run_dir / name
            if path.is_dir():
                shutil.rmtree(path)
            elif path.exists():
                path.unlink()
            else:
                continue
            gone.append(name)
        if gone:
            log.info("trainer.overwrite=true: removed the previous run's %s", ", ".join(gone))


def start_fresh_log(run_dir: Path) -> bool:
    """Empty the previous run's ``train.log`` (``trainer.overwrite=true``); True when there was one.

    Truncated rather than deleted: Hydra's log handler may already hold it open (in append mode, so what
    this run logs next lands at the start of the emptied file).
    """
    path = Path(run_dir) / RUN_LOG
    if not path.is_file() or path.stat().st_size == 0:
        return False
    os.truncate(path, 0)
    return True


def open_run_folder(cfg: DictConfig, run_dir: Path | None) -> None:
    """:func:`check_run_folder` on every process, then :func:`prepare_run_folder` on the first one."""
    check_run_folder(cfg, run_dir)
    if env_rank() == 0:
        prepare_run_folder(cfg, run_dir)


#: Folders claimed by :func:`claim_new_dir` in this process: the same request gets the same folder.
_CLAIMED: dict[str, str] = {}


def claim_new_dir(path: str) -> str:
    """A run folder nobody else has: ``path`` when this call creates it, else ``path_2``, ``path_3``, ...

    The folder is created here (``mkdir`` is atomic, so two runs started in the same second never get the
    same one); asked again in the same process, it returns the folder it claimed. Used by the default
    ``hydra.run.dir`` / ``hydra.sweep.dir`` (configs/hydra/default.yaml: ``${lrfer.new_dir:...}``).
    """
    path = str(path)
    if path in _CLAIMED:
        return _CLAIMED[path]
    base = Path(path)
    base.parent.mkdir(parents=True, exist_ok=True)
    for n in range(1, MAX_DIR_SUFFIX + 1):
        candidate = base if n == 1 else base.with_name(f"{base.name}_{n}")
        try:
            candidate.mkdir()
        except FileExistsError:
            continue
        _CLAIMED[path] = str(candidate)
        return str(candidate)
    raise UserError(f"{path} and {MAX_DIR_SUFFIX - 1} suffixed folders exist: set hydra.run.dir")


def claimed_dirs() -> set[str]:
    """The folders :func:`claim_new_dir` created in this process."""
    return set(_CLAIMED.values())


def resume_output_subdir() -> str:
    """``hydra.output_subdir`` for a resumed invocation: ``.hydra-resumes/<time>``."""
    return f"{RESUME_CONFIG_DIR}/{datetime.now():%Y-%m-%d_%H-%M-%S}"

"""Resolve a composed config once per run into a :class:`RunSpec`: every check and decision made up front.

:func:`resolve` is the one place a run's config is checked and settled. ``python train.py`` calls it once,
in the Hydra callback, before Hydra writes anything (:mod:`lrfer.cli.guard`); ``lrfer-evaluate`` and the
in-process users of :func:`lrfer.config.compose_config` (scripts, tests, notebooks) call it on their config.
It

- validates the values (:func:`lrfer.config.validate.validate_config`: ranges, choices, the
  ``trainer.monitor`` and ``objective`` names; its warnings are kept in the spec and logged by the run);
- checks that an experiment left no ``method.*`` value to the user (:func:`check_required`);
- parses the degradation labels into :class:`~lrfer.data.degrade.Degradation` objects;
- settles the device and joins the torchrun / SLURM process group
  (:func:`lrfer.engine.distributed.init_from_env`);
- settles the ``auto | true | false`` options that depend on the device (precision, channels_last,
  sync_bn, progress bar);
- decides about the run folder (:func:`lrfer.engine.runfolder.check_run_folder`: refuse, continue or
  replace).

What it returns is frozen; :func:`lrfer.engine.run.build_parts`, :class:`~lrfer.engine.trainer.Trainer`,
the data module and the CLIs read it and check nothing again.

The checks that read the config alone (the values, the required method values, the degradation labels) are
:func:`check_config`; their result, :class:`ConfigChecks`, can be made ahead of the run and handed to
:func:`resolve`, which then does not make them again. A sweep does this: it checks every job before the
first one runs (:mod:`lrfer.cli.guard`), and each job's :func:`resolve` reuses its job's checks.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from hydra.utils import get_class
from omegaconf import DictConfig, OmegaConf

from lrfer.config.schema import parse_auto_bool, resolve_auto_bool
from lrfer.config.validate import validate_config
from lrfer.core.errors import UserError
from lrfer.data.degrade import Degradation
from lrfer.engine import distributed as dist
from lrfer.engine.runfolder import check_run_folder

#: The value an experiment config gives a ``method.*`` key the user must set (``???`` cannot be used: merging
#: OmegaConf's missing value onto the method config's default leaves the default in place).
REQUIRED = "<required>"


@dataclass(frozen=True)
class DegradeSpec:
    """The run's degradations, parsed: what it trains on, selects the model on, and tests."""

    train: tuple[Degradation, ...]
    #: ``degrade.val``, or the training list when it is null
    val: tuple[Degradation, ...]
    test: tuple[Degradation, ...]


@dataclass(frozen=True)
class ConfigChecks:
    """What :func:`check_config` found in a config alone (no device, no process group, no folder)."""

    degrade: DegradeSpec
    #: legal but degenerate values
    warnings: tuple[str, ...]
    #: a run folder :func:`check_run_folder` already accepted for this config (None: none was checked)
    checked_folder: Path | None = None


@dataclass(frozen=True)
class TrainerSpec:
    """The ``trainer.*`` options that depend on the machine, settled for this run's device."""

    device: torch.device
    #: the autocast dtype (``trainer.precision``), None for float32
    amp_dtype: torch.dtype | None
    channels_last: bool
    #: ``trainer.sync_bn``: True / False, or None (auto: on CUDA with several processes)
    sync_bn: bool | None
    #: a tqdm bar (a terminal) rather than log lines
    progress: bool
    monitor: str


@dataclass(frozen=True)
class RunSpec:
    """Everything a run reads, checked and settled once by :func:`resolve`."""

    #: the composed config (validated); the trainer, data and method options are read from it
    cfg: DictConfig
    #: the run folder (None: nothing is written), its decision made (:func:`check_run_folder`)
    run_dir: Path | None
    degrade: DegradeSpec
    trainer: TrainerSpec
    #: the validation metric a sweep optimises (``objective``)
    objective: str
    rank: int
    world_size: int
    #: legal but degenerate values (logged by the run, into its train.log)
    warnings: tuple[str, ...] = ()

    @property
    def device(self) -> torch.device:
        return self.trainer.device

    @property
    def seed(self) -> int:
        return int(self.cfg.seed)


def resolve_device(name: str, key: str = "trainer.device") -> torch.device:
    """``auto`` | ``cpu`` | ``cuda`` | ``cuda:<i>`` as a device; ``key`` names the option in the messages."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name not in ("cpu", "cuda") and not name.startswith("cuda:"):
        raise UserError(f"unknown {key} {name!r}: choose auto, cpu or cuda")
    if name.startswith("cuda") and not torch.cuda.is_available():
        sep = " " if key.startswith("--") else "="
        raise UserError(f"{key}{sep}{name} but no CUDA device is available: use {key}{sep}cpu or auto")
    return torch.device(name)


def check_required(cfg: DictConfig) -> None:
    """Stop with one line when an experiment config left a ``method.*`` value to the user (``<required>``).

    The method class may explain what to pass in ``REQUIRED_HINTS = {key: "what to pass"}``.
    """
    if cfg.get("method") is None:
        return
    missing = [k for k in cfg.method if OmegaConf.is_missing(cfg.method, k) or cfg.method.get(k) == REQUIRED]
    if not missing:
        return
    hints: dict = {}
    with contextlib.suppress(Exception):
        hints = getattr(get_class(str(cfg.method._target_)), "REQUIRED_HINTS", {}) or {}
    key = missing[0]
    hint = hints.get(key, "see the experiment config's comments")
    raise UserError(f"method.{key} must be given for this experiment: {hint}")


def settle_trainer(cfg: DictConfig, device: torch.device) -> TrainerSpec:
    """The device-dependent ``trainer.*`` options for ``device`` (their values are already validated)."""
    t = cfg.trainer
    cuda = device.type == "cuda"
    # bf16 autocast on CUDA for auto and bf16; on the CPU only when asked for explicitly
    amp = torch.bfloat16 if (t.precision == "bf16" or (cuda and t.precision == "auto")) else None
    return TrainerSpec(
        device=device,
        amp_dtype=amp,
        channels_last=resolve_auto_bool(t.channels_last, auto=cuda, key="trainer.channels_last"),
        sync_bn=parse_auto_bool(t.get("sync_bn"), "trainer.sync_bn"),
        progress=resolve_auto_bool(t.progress, auto=sys.stderr.isatty(), key="trainer.progress"),
        monitor=str(t.monitor),
    )


def check_config(cfg: DictConfig) -> ConfigChecks:
    """The checks of ``cfg`` that need nothing but the config: its values (:func:`validate_config`, which
    also parses the degradation labels) and the method values an experiment left to the user
    (:func:`check_required`). Raises a one-line :class:`~lrfer.core.errors.UserError`."""
    validated = validate_config(cfg, warn=False)
    check_required(cfg)
    parsed = validated.degradations
    train = tuple(parsed["train"])
    degrade = DegradeSpec(train=train, val=tuple(parsed.get("val") or train), test=tuple(parsed["test"]))
    return ConfigChecks(degrade=degrade, warnings=tuple(validated.warnings))


def resolve(
    cfg: DictConfig,
    run_dir: str | Path | None = None,
    *,
    claim: Callable[[], Path] | None = None,
    checks: ConfigChecks | None = None,
) -> RunSpec:
    """Check and settle ``cfg`` for a run into ``run_dir`` (None: a run that writes nothing).

    ``claim``: called for the run folder once the config is known to be good (the Hydra callback creates
    and locks it there, so that a refused config leaves no folder). ``checks``: :func:`check_config`'s result
    for this very config, made ahead (by a sweep's up-front pass); those checks are not made again, nor the
    run-folder check when it was made for ``run_dir``. Raises a one-line
    :class:`~lrfer.core.errors.UserError` for anything wrong, before anything is built or written. Joins the
    process group under torchrun: every rank calls it, and every rank gets rank 0's run folder.
    """
    if checks is None:
        checks = check_config(cfg)
    device = dist.init_from_env(resolve_device(cfg.trainer.device))
    world = dist.world_size()
    if int(cfg.trainer.batch_size) % world:
        raise UserError(
            f"trainer.batch_size={cfg.trainer.batch_size} (the global batch) must be divisible by "
            f"the {world} processes"
        )
    if claim is not None:
        run_dir = claim()
    folder = dist.broadcast_object(str(run_dir) if run_dir is not None else None)  # rank 0's
    run_dir = Path(folder) if folder is not None else None
    folder_checked = checks.checked_folder is not None and run_dir is not None
    if not (folder_checked and checks.checked_folder.absolute() == run_dir.absolute()):
        check_run_folder(cfg, run_dir)
    return RunSpec(
        cfg=cfg,
        run_dir=run_dir,
        degrade=checks.degrade,
        trainer=settle_trainer(cfg, device),
        objective=str(cfg.get("objective", "acc")),
        rank=dist.rank(),
        world_size=world,
        warnings=checks.warnings,
    )

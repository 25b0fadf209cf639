"""Dataclass schemas for the config groups that every run uses.

They are registered in Hydra's ConfigStore under ``schema/<group>/<name>`` and named at the top of each
YAML file's defaults list, so a misspelt key or a value of the wrong type stops the run at start-up with
Hydra's one-line message instead of being silently ignored.

``auto | true | false`` options
-------------------------------
An option that is either switched on, switched off or left to lrfer (``auto``) is declared with the
:data:`AutoBool` type and the :func:`auto_bool` field, and read with :func:`resolve_auto_bool`::

    @dataclass
    class TrainerConfig:
        sync_bn: AutoBool = auto_bool()          # YAML: ``sync_bn: auto  # auto | true | false``

    enabled = resolve_auto_bool(cfg.trainer.sync_bn, auto=device.type == "cuda", key="trainer.sync_bn")

Hydra parses ``true``/``false`` on the command line (and YAML parses them in files) as booleans, while
``auto`` stays a word, so the field accepts both kinds: ``true``/``false`` (also ``on``/``off``,
``yes``/``no``, in any case, and the strings ``'true'``/``'false'``), ``auto`` or ``null`` (both meaning
auto). Anything else is refused with one line when the config is validated. Never type such an option
``str`` (``true`` would arrive as ``'True'``) or ``bool`` (``auto`` would be refused). :func:`auto_bool_keys`
finds every such option in the schemas, so the validation and the tests cover a new one automatically.
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING

from lrfer.core.errors import UserError

#: The type of an ``auto | true | false`` option: ``True``, ``False``, ``"auto"`` or ``None`` (= auto).
#: (OmegaConf 2.3 has no union types, so the schema accepts any value and :func:`parse_auto_bool`, run by the
#: config validation, refuses the rest.)
AutoBool = Any

_AUTO_BOOL = "lrfer_auto_bool"
_TRUE_WORDS = ("true", "on", "yes", "1")
_FALSE_WORDS = ("false", "off", "no", "0")


def auto_bool(default: bool | str | None = "auto") -> Any:
    """A dataclass field for an ``auto | true | false`` option (see the module docstring)."""
    return field(default=default, metadata={_AUTO_BOOL: True})


def parse_auto_bool(value: Any, key: str = "option") -> bool | None:
    """``True``/``False`` for an explicit choice, ``None`` for auto; :class:`UserError` for anything else."""
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, str):
        word = value.strip().lower()
        if word in ("auto", "null", "none", ""):
            return None
        if word in _TRUE_WORDS:
            return True
        if word in _FALSE_WORDS:
            return False
    raise UserError(f"{key} must be auto, true or false, got {value!r}")


def resolve_auto_bool(value: Any, auto: bool, key: str = "option") -> bool:
    """The effective setting of an ``auto | true | false`` option: ``auto`` (or ``null``) gives ``auto``."""
    parsed = parse_auto_bool(value, key)
    return bool(auto) if parsed is None else parsed


def _auto_bool_fields(node: type, prefix: str) -> list[str]:
    hints = typing.get_type_hints(node)
    keys = []
    for f in dataclasses.fields(node):
        if f.metadata.get(_AUTO_BOOL):
            keys.append(f"{prefix}{f.name}")
        elif dataclasses.is_dataclass(hints.get(f.name)):
            keys += _auto_bool_fields(hints[f.name], f"{prefix}{f.name}.")
    return keys


@dataclass
class OptimizerConfig:
    """``torch.optim`` optimiser: ``name`` is adam, adamw or sgd."""

    name: str = "adam"
    lr: float = 1e-3
    weight_decay: float = 0.0
    momentum: float = 0.9
    nesterov: bool = False
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    eps: float = 1e-8
    decay_norm_and_bias: bool = True


@dataclass
class SchedulerConfig:
    """Learning-rate schedule: none, step, multistep, exponential, plateau or cosine (stepped per epoch).

    ``plateau`` watches ``monitor``: ``val_acc`` (validation accuracy) or ``train_acc`` (training accuracy,
    as the EFC paper did); ``mode`` max. ``multistep`` multiplies the learning rate by ``gamma`` at every
    milestone, or by ``gammas[i]`` at ``milestones[i]`` when ``gammas`` is given (a piecewise-constant
    schedule such as CovPoolFER's 5e-3, 2e-3, 1e-3, 5e-4, 1e-4).
    """

    name: str = "step"
    step_size: int = 6
    gamma: float = 0.1
    milestones: list[int] = field(default_factory=list)
    gammas: list[float] = field(default_factory=list)
    patience: int = 10
    factor: float = 0.1
    min_lr: float = 0.0
    monitor: str = "val_acc"


@dataclass
class TrainerConfig:
    max_epochs: int | None = None
    batch_size: int = 64
    eval_batch_size: int = 256
    device: str = "auto"
    precision: str = "auto"
    channels_last: AutoBool = auto_bool()
    compile: bool = False
    compile_mode: str = "default"
    grad_clip: float | None = None
    resume: bool = False
    overwrite: bool = False
    monitor: str = "acc"
    sync_bn: AutoBool = auto_bool()
    restore_best: bool = True
    val_every: int = 1
    checkpoint_every: Any = "auto"
    checkpoint_budget: float = 0.1
    log_every_n_steps: int = 10
    progress: AutoBool = auto_bool()
    progress_every_s: float | None = 60.0
    num_threads: int | None = None
    deterministic: bool = False
    tf32: bool = True
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    scheduler: SchedulerConfig = field(default_factory=SchedulerConfig)


@dataclass
class DegradeConfig:
    """Which low-resolution views a run trains and is evaluated on, and how they are made.

    Labels are ``x<factor>`` (``x1`` = native, ``x2``, ``x6``, ``x16``) or ``<size>px`` (``14px``).
    """

    train: list[str] = field(default_factory=lambda: ["x1"])
    val: list[str] | None = None
    test: list[str] = field(default_factory=lambda: ["x1", "x2", "x4", "x6", "x8"])
    train_mode: str = "random"
    kernel: str = "bicubic"
    antialias: bool = True
    input_size: int | None = None
    resize_back: bool = True
    resize_kernel: str = "bicubic"
    seed: int = 0


@dataclass
class AugmentConfig:
    """Batched on-device augmentation of training images (all probabilities/magnitudes; 0 disables)."""

    hflip: float = 0.5
    translate: float = 0.05
    rotate: float = 0.0
    scale_min: float = 1.0
    scale_max: float = 1.0
    brightness: float = 0.0
    contrast: float = 0.0
    saturation: float = 0.0
    erase_p: float = 0.0
    erase_area_min: float = 0.02
    erase_area_max: float = 0.2
    blur_p: float = 0.0
    blur_sigma_max: float = 1.0


@dataclass
class DatasetConfig:
    """Fields every dataset has; adapters extend it with their own options (a dataclass subclass)."""

    _target_: str = MISSING
    name: str = MISSING
    root: str | None = None
    num_classes: int = MISSING
    class_names: list[str] = MISSING
    image_size: int = MISSING
    val_fraction: float = 0.1
    val_per_class: int | None = None
    merge_val: bool = False
    split_seed: int = 0
    sampler: str = "random"
    mean: list[float] = MISSING
    std: list[float] = MISSING
    skip_corrupt: bool = False
    on_device: AutoBool = auto_bool()


@dataclass
class LoggerConfig:
    tensorboard: bool = True
    log_images: bool = True
    num_sample_images: int = 8


@dataclass
class PathsConfig:
    cache_dir: str = ".cache/lrfer"


_SCHEMAS: dict[str, dict[str, type]] = {
    "trainer": {"trainer": TrainerConfig},
    "degrade": {"degrade": DegradeConfig},
    "augment": {"augment": AugmentConfig},
    "dataset": {"dataset": DatasetConfig},
    "logger": {"logger": LoggerConfig},
    "paths": {"paths": PathsConfig},
}


def register_schemas() -> None:
    """Store every schema as ``schema/<group>/<name>`` in Hydra's ConfigStore (idempotent).

    Importing :mod:`lrfer.data.datasets` lets every adapter register its own dataset schema first.
    """
    import lrfer.data.datasets  # noqa: F401  (adapters call register_dataset_schema on import)

    cs = ConfigStore.instance()
    for group, nodes in _SCHEMAS.items():
        for name, node in nodes.items():
            cs.store(group=f"schema/{group}", name=name, node=node)


def register_dataset_schema(name: str, node: type = DatasetConfig) -> None:
    """Register an adapter's dataset schema (a :class:`DatasetConfig` subclass) under ``schema/dataset``.

    A dataset with only the common options registers :class:`DatasetConfig` itself (the default).
    """
    _SCHEMAS["dataset"][name] = node
    ConfigStore.instance().store(group="schema/dataset", name=name, node=node)


def schema_node(group: str, name: str) -> type:
    """The dataclass registered as ``schema/<group>/<name>`` (``schema_node("dataset", "rafdb")``)."""
    import lrfer.data.datasets  # noqa: F401  (adapters register their dataset schemas on import)

    return _SCHEMAS[group][name]


def auto_bool_keys() -> list[str]:
    """Every ``auto | true | false`` option in the schemas, as dotted keys (``trainer.channels_last``)."""
    import lrfer.data.datasets  # noqa: F401  (adapters register their dataset schemas on import)

    keys: list[str] = []
    for group, nodes in _SCHEMAS.items():
        for node in nodes.values():
            keys += [k for k in _auto_bool_fields(node, f"{group}.") if k not in keys]
    return keys
